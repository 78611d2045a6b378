"""Tables of the queue database (SQLAlchemy Core). Alembic migrations in expctl/migrations mirror them.

Times are UTC epoch seconds (floats). Job states: queued, running, succeeded, failed, cancelled.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATUSES = (QUEUED, RUNNING)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)
EXP_DIR_OWNER_STATUSES = (QUEUED, RUNNING, SUCCEEDED)

# The partial unique index that refuses duplicates of a job still queued or running.
ACTIVE_PREDICATE = text("status IN ('queued', 'running')")
# An explicit exp_dir belongs to one job that is queued, running or succeeded (its results live there).
EXP_DIR_OWNER_PREDICATE = text("status IN ('queued', 'running', 'succeeded')")

metadata = MetaData()

sweeps = Table(
    "sweeps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=True),
    Column("app", String(200), nullable=False),
    Column("base", Text, nullable=False),
    Column("overrides", Text, nullable=False),  # JSON list, as the user typed them
    Column("created_at", Float, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("app", String(200), nullable=False),
    Column("base", Text, nullable=False),
    Column("overrides", Text, nullable=False),  # JSON list of override strings of this job
    Column("config_yaml", Text, nullable=False),  # the frozen, composed config
    Column("config_hash", String(64), nullable=False),  # sha256 of app + config_yaml
    Column("dedup_key", String(64), nullable=True),  # = config_hash, NULL for allowed duplicates
    Column("sweep_id", Integer, ForeignKey("sweeps.id"), nullable=True),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False, server_default=QUEUED),
    Column("attempt", Integer, nullable=False, server_default="0"),  # claims so far; the fencing token
    Column("attempts_base", Integer, nullable=False, server_default="0"),  # attempts not charged
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    Column("worker_id", String(200), nullable=True),
    Column("gpus", String(200), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("not_before", Float, nullable=False, server_default="0"),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("exit_code", Integer, nullable=True),
    Column("end_reason", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("tracking_run_id", String(200), nullable=True),
    Column("tracking_uri", Text, nullable=True),
    # uuid4 hex: names the job's folder, experiments/<id>-<uuid>, unique across queue databases
    # (NULL for jobs queued before migration 0002: their folder stays experiments/<id>).
    Column("uuid", String(32), nullable=True),
    Column("exp_dir", Text, nullable=True),  # the frozen config's explicit exp_dir (normalized), else NULL
    Index("ix_jobs_claim", "status", "priority", "id"),
    Index("ix_jobs_sweep", "sweep_id"),
    Index(
        "ux_jobs_active_dedup",
        "dedup_key",
        unique=True,
        sqlite_where=ACTIVE_PREDICATE,
        postgresql_where=ACTIVE_PREDICATE,
    ),
    Index("ux_jobs_uuid", "uuid", unique=True),
    Index(
        "ux_jobs_exp_dir",
        "exp_dir",
        unique=True,
        sqlite_where=EXP_DIR_OWNER_PREDICATE,
        postgresql_where=EXP_DIR_OWNER_PREDICATE,
    ),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("time", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("attempt", Integer, nullable=True),
    Column("worker_id", String(200), nullable=True),
    Column("message", Text, nullable=False, server_default=""),
    Index("ix_job_events_job", "job_id", "id"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("gpus", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # running, stopped, lost
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
    Column("current_job_id", Integer, nullable=True),
)
