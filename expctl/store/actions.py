"""What a user does to jobs in the queue: cancel and retry, one job or a whole sweep.

Each is one transaction. A running job's cancel is a request its daemon acts on (it kills the
child); a retry gives a failed or cancelled job a fresh attempt budget, unless its config or its
exp_dir now belongs to another active job.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from expctl.errors import UserError
from expctl.store.jobs import (
    Job,
    active_duplicates,
    add_event,
    check_sweep,
    exp_dir_owners,
    is_postgres,
    job_or_error,
    notify,
    now,
)
from expctl.store.schema import ACTIVE_STATUSES, CANCELLED, FAILED, QUEUED, RUNNING, jobs


def _cancel_in(connection: Connection, job: Job, at: float) -> str:
    if job.status == QUEUED:
        connection.execute(
            update(jobs).where(jobs.c.id == job.id, jobs.c.status == QUEUED)
            .values(status=CANCELLED, end_reason="cancelled before it ran", finished_at=at, updated_at=at)
        )
        add_event(connection, job.id, CANCELLED, "cancelled before it ran", attempt=job.attempt, at=at)
        return "cancelled"
    if job.status == RUNNING:
        if not job.cancel_requested:
            connection.execute(
                update(jobs).where(jobs.c.id == job.id, jobs.c.status == RUNNING)
                .values(cancel_requested=True, updated_at=at)
            )
            add_event(connection, job.id, "cancel-requested", f"worker {job.worker_id} will stop its child",
                      attempt=job.attempt, at=at)
        return "cancel requested"
    return f"already {job.status}"


def cancel(engine: Engine, job_id: int) -> str:
    """Cancel a queued job now, or ask the daemon running it to stop it. Returns what happened."""
    with engine.begin() as connection:
        # locked, so that a daemon cannot requeue it between this read and the cancel's write
        job = job_or_error(connection, job_id, lock=True)
        if job.status not in ACTIVE_STATUSES:
            raise UserError(f"job {job_id} already {job.status}: nothing to cancel")
        return _cancel_in(connection, job, now())


def cancel_sweep(engine: Engine, sweep_id: int) -> dict[str, int]:
    """Cancel every queued or running job of a sweep; counts per outcome."""
    counts: dict[str, int] = {}
    with engine.begin() as connection:
        check_sweep(connection, sweep_id)
        at = now()
        query = select(jobs).where(jobs.c.sweep_id == sweep_id, jobs.c.status.in_(ACTIVE_STATUSES)).order_by(jobs.c.id)
        if is_postgres(connection):
            query = query.with_for_update()
        rows = connection.execute(query).all()
        for row in rows:
            outcome = _cancel_in(connection, Job.from_row(row), at)
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _retry_in(connection: Connection, job: Job, at: float) -> None:
    try:
        with connection.begin_nested():
            connection.execute(
                update(jobs).where(jobs.c.id == job.id, jobs.c.status == job.status).values(
                    status=QUEUED, not_before=0.0, attempts_base=jobs.c.attempt, worker_id=None,
                    cancel_requested=False, end_reason=None, finished_at=None, updated_at=at,
                )
            )
    except IntegrityError:
        duplicates = active_duplicates(connection, [job.dedup_key or ""])
        if job.dedup_key in duplicates:
            other = duplicates[job.dedup_key]
            raise UserError(
                f"job {job.id} has the same config as job {other[0]} ({other[1]}): cancel that one first"
            ) from None
        owner = exp_dir_owners(connection, [job.exp_dir or ""]).get(job.exp_dir or "", (0, "active"))
        raise UserError(
            f"job {job.id}: its exp_dir {job.exp_dir!r} now belongs to job {owner[0]} ({owner[1]}); "
            "queue it again with another exp_dir"
        ) from None
    add_event(connection, job.id, "retried", f"requeued by a user after {job.status}", attempt=job.attempt, at=at)


def retry(engine: Engine, job_id: int) -> None:
    """Queue a failed or cancelled job again, with a fresh attempt budget."""
    with engine.begin() as connection:
        job = job_or_error(connection, job_id)
        if job.status not in (FAILED, CANCELLED):
            raise UserError(f"job {job_id} is {job.status}: only failed or cancelled jobs can be retried")
        _retry_in(connection, job, now())
        notify(connection)


def retry_sweep(engine: Engine, sweep_id: int, failed_only: bool = False) -> int:
    """Queue a sweep's failed (and, unless ``failed_only``, cancelled) jobs again; how many."""
    wanted = (FAILED,) if failed_only else (FAILED, CANCELLED)
    with engine.begin() as connection:
        check_sweep(connection, sweep_id)
        at = now()
        rows = connection.execute(
            select(jobs).where(jobs.c.sweep_id == sweep_id, jobs.c.status.in_(wanted)).order_by(jobs.c.id)
        ).all()
        for row in rows:
            _retry_in(connection, Job.from_row(row), at)
        if rows:
            notify(connection)
    return len(rows)
