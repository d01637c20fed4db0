"""Alembic environment: labgate passes its own engine connection in `config.attributes`, so
migrations run on the exact database the daemon opens (SQLite or PostgreSQL)."""

from __future__ import annotations

from alembic import context

from middleware.store.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "labgate migrations run through middleware.store.migrate(), not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
