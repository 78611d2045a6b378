"""Alembic migrations of the queue database (run programmatically by expctl.db)."""
