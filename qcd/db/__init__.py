"""Persistence: SQLAlchemy models, the engine/session factory and migrations."""

from qcd.db.engine import Database

__all__ = ["Database"]
