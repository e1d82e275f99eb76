"""Alembic environment: runs on the connection the caller hands over, in batch mode for SQLite."""

from __future__ import annotations

from alembic import context

from supervisor.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `runsup db upgrade`, which supplies the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
