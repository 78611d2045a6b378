"""Alembic migrations of the queue database (run programmatically by expctl.store.db)."""
