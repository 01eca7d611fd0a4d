"""Engine and session factory for SQLite (WAL) and PostgreSQL, and migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qcd.errors import DatabaseError

LOGGER = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")


class Database:
    """Owns the engine; hands out sessions; applies migrations.

    SQLite runs in WAL mode with ``synchronous=FULL`` so that a committed row
    survives a power loss (Success is only answered after the commit).
    """

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = make_url(url)
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def _alembic_config(self) -> AlembicConfig:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision`` (idempotent)."""
        cfg = self._alembic_config()
        try:
            with self.engine.begin() as connection:
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, revision)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"migration failed on {self.safe_url}: {exc}") from exc

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def check(self) -> None:
        """Raise :class:`DatabaseError` unless reachable and migrated to head."""
        try:
            current = self.current_revision()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database {self.safe_url} is unreachable: {exc}") from exc
        head = self.head_revision()
        if current != head:
            raise DatabaseError(
                f"database {self.safe_url} is at revision {current}, expected {head}: "
                "run `qcd db upgrade`"
            )

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and errors."""
        return self.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so concurrent associations
    # queue on busy_timeout instead of failing with SQLITE_BUSY on lock upgrade.
    connection.exec_driver_sql("BEGIN IMMEDIATE")
