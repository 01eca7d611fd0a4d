"""Analyzers: one vertical slice each (accepts, preprocesses, infers, reports).

``REGISTRY`` is the explicit list of analyzers this installation implements; the
engine knows no analyzer by any other way. Routing may name an analyzer that is
not here (the four planned ones arrive in later releases): such jobs are kept
with state UNAVAILABLE, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from qcd.analyzers.base import Analyzer

REGISTRY: Mapping[str, Analyzer] = {}
"""Analyzer name -> implementation. Empty until the analysis engine lands."""
