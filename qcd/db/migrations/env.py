"""Alembic environment: always run online on the connection qcd hands over."""

from __future__ import annotations

from alembic import context

from qcd.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - qcd always passes a connection
    raise RuntimeError("run migrations through `qcd db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
