"""Shared fixtures: clean environment, settings on tmp paths, both databases."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from qcd.config import Settings, load_settings
from qcd.db.engine import Database

PG_ADMIN_URL = os.environ.get("QCD_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No QCD_* variable from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("QCD_"):
            monkeypatch.delenv(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database of our own for the session, dropped afterwards."""
    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    name = f"qcd_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
        ), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def reset_schema(url: str) -> None:
    """An empty ``public`` schema in the PostgreSQL database at ``url``."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each DB test runs on SQLite and on PostgreSQL (a clean schema every time)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/qcd.db"
        return
    url = request.getfixturevalue("pg_database")
    reset_schema(url)
    yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database, on SQLite and on PostgreSQL."""
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database in the test's temporary directory (tests that need
    no second backend; ``db`` runs on both)."""
    database = Database(f"sqlite:///{tmp_path}/qcd.db")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def cpu_runtime() -> Iterator[Any]:
    """The engine's runtime on the CPU, as analyzers get it in the daemon; closed after."""
    from qcd.workers.inference import InferenceSettings
    from qcd.workers.runtime import LocalRuntime

    runtime = LocalRuntime(InferenceSettings(device="cpu"))
    yield runtime
    runtime.close()


def make_settings(tmp_path: Path, db_url: str | None = None, **env: str) -> Settings:
    """Settings for a test: tmp spool and DB, free ports, short quiet period."""
    base = {
        "QCD_SPOOL__PATH": str(tmp_path / "spool"),
        "QCD_SPOOL__MIN_FREE_BYTES": "0",
        "QCD_DATABASE__URL": db_url or f"sqlite:///{tmp_path}/qcd.db",
        "QCD_INGEST__HOST": "127.0.0.1",
        "QCD_INGEST__PORT": str(free_port()),
        "QCD_INGEST__DRAIN_TIMEOUT": "5",
        "QCD_HTTP__PORT": "0",
        "QCD_ASSEMBLY__QUIET_SECONDS": "1",
        "QCD_ASSEMBLY__SWEEP_INTERVAL_SECONDS": "0.2",
    }
    base.update(env)
    return load_settings(environ=base)
