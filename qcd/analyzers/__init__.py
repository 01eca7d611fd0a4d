"""Analyzers: one vertical slice each (accepts, preprocesses, infers, reports).

The explicit list of analyzers this installation implements is
:data:`qcd.analyzers.registry.REGISTRY`; the engine knows no analyzer any other way.
Routing may name an analyzer that is not there (``motion``, ``chest`` and ``atrium``
arrive in later releases): such jobs are kept with state UNAVAILABLE, never dropped.
"""
