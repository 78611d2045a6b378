"""Alembic environment: expctl.store.db.upgrade passes an open connection (already in a transaction)."""

from alembic import context

from expctl.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run expctl's migrations through `expctl db upgrade` (expctl.store.db.upgrade)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
