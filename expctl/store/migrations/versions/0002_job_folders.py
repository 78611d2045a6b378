"""Each job owns its folder: jobs.uuid (experiments/<id>-<uuid>) and jobs.exp_dir (an explicit
exp_dir belongs to one queued, running or succeeded job).

Jobs queued before this migration keep NULL in both: their folder stays experiments/<id>, so a
job that is running or queued now resumes from its own checkpoints.

Revision ID: 0002_job_folders
Revises: 0001_initial
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_job_folders"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

EXP_DIR_OWNER_PREDICATE = sa.text("status IN ('queued', 'running', 'succeeded')")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("uuid", sa.String(32), nullable=True))
    op.add_column("jobs", sa.Column("exp_dir", sa.Text(), nullable=True))
    op.create_index("ux_jobs_uuid", "jobs", ["uuid"], unique=True)
    op.create_index(
        "ux_jobs_exp_dir",
        "jobs",
        ["exp_dir"],
        unique=True,
        sqlite_where=EXP_DIR_OWNER_PREDICATE,
        postgresql_where=EXP_DIR_OWNER_PREDICATE,
    )


def downgrade() -> None:
    op.drop_index("ux_jobs_exp_dir", table_name="jobs")
    op.drop_index("ux_jobs_uuid", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("exp_dir")
        batch.drop_column("uuid")
