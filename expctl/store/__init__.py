"""The queue database: schema, Alembic migrations and the job state machine (enqueue, claim, heartbeat, finish, reap)."""
