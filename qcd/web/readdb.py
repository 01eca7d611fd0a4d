"""A read-only view of the database for the dashboard that never blocks ingest on SQLite.

qcd's :class:`~qcd.db.engine.Database` opens every SQLite transaction with
``BEGIN IMMEDIATE`` (the write lock up front, so that concurrent C-STOREs queue instead
of failing). Dashboard reads need no write lock: in WAL mode a plain deferred ``BEGIN``
reads a consistent snapshot while writers go on. PostgreSQL needs nothing special, so
there the same Database is used.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from qcd.db.engine import Database


def _deferred_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def reader(db: Database) -> Database:
    """``db`` itself on PostgreSQL; on SQLite a second engine whose transactions are
    deferred (read snapshots). Use it only for reads; dispose it with the daemon."""
    if not db.is_sqlite:
        return db
    ro = Database(db.url.render_as_string(hide_password=False))
    from qcd.db import engine as engine_module

    event.remove(ro.engine, "begin", engine_module._sqlite_begin)
    event.listen(ro.engine, "begin", _deferred_begin)
    return ro
