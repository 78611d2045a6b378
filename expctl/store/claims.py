"""The daemon's side of the job state machine: claim, heartbeat, finish, requeue, reap; workers.

Each operation is one tiny transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: row locks, the
claim with ``FOR UPDATE SKIP LOCKED``). Every change after a claim is fenced by
``id, attempt, worker_id, status='running'`` (:func:`fence`) and reports whether it won, so a
daemon that lost its lease can never overwrite what the next attempt does. The user's side
(enqueue, cancel, retry, reads) is :mod:`expctl.store.jobs`.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Engine

from expctl.store.db import read_connection
from expctl.store.jobs import Job, add_event, is_postgres, notify, now
from expctl.store.schema import ACTIVE_STATUSES, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, jobs, workers

EXIT_CODE_NEVER_RETRY = 2
DEFAULT_BACKOFF_S = 10.0
MAX_BACKOFF_S = 600.0
STALE_WORKER_S = 600.0


@dataclass(frozen=True)
class Heartbeat:
    """Result of a heartbeat: did the lease still belong to us, and was a cancel requested."""

    won: bool
    cancel_requested: bool


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: the job's new status and why."""

    status: str
    reason: str
    retry_in: float | None = None


def fence(job: Job, worker_id: str) -> Any:
    return and_(
        jobs.c.id == job.id,
        jobs.c.attempt == job.attempt,
        jobs.c.worker_id == worker_id,
        jobs.c.status == RUNNING,
    )


def _claim_statement(skip_locked: bool, filter_apps: bool) -> Any:
    """UPDATE ... WHERE id = (best claimable job) RETURNING *, built once (bound parameters)."""
    pick = jobs.alias("pick")  # an alias, so the subquery is never correlated with the UPDATE
    candidate = (
        select(pick.c.id)
        .where(pick.c.status == QUEUED, pick.c.not_before <= bindparam("claim_now"),
               pick.c.cancel_requested.is_(False))
        .order_by(pick.c.priority.desc(), pick.c.id)
        .limit(1)
    )
    if filter_apps:  # a daemon runs only the apps it trusts (``expctl consume --apps``)
        candidate = candidate.where(pick.c.app.in_(bindparam("claim_apps", expanding=True)))
    if skip_locked:
        candidate = candidate.with_for_update(skip_locked=True)
    return (
        update(jobs)
        .where(jobs.c.id == candidate.scalar_subquery(), jobs.c.status == QUEUED, jobs.c.cancel_requested.is_(False))
        .values(
            status=RUNNING, worker_id=bindparam("claim_worker"), gpus=bindparam("claim_gpus"),
            attempt=jobs.c.attempt + 1, lease_expires_at=bindparam("claim_lease_until"),
            started_at=bindparam("claim_now"), updated_at=bindparam("claim_now"),
            exit_code=None, end_reason=None,  # never cancel_requested: only `expctl retry` clears a cancel
        )
        .returning(*jobs.c)
    )


_CLAIM = {(locked, filtered): _claim_statement(locked, filtered) for locked in (False, True) for filtered in (False, True)}


def claim(engine: Engine, worker_id: str, gpus: str, lease_s: float,
          apps: Sequence[str] | None = None) -> Job | None:
    """Atomically take the best claimable job (priority, then age) of one of ``apps`` (None: any app), or None."""
    at = now()
    parameters: dict[str, Any] = {"claim_now": at, "claim_worker": worker_id, "claim_gpus": gpus,
                                  "claim_lease_until": at + lease_s}
    if apps is not None:
        parameters["claim_apps"] = list(apps)
    with engine.begin() as connection:
        row = connection.execute(_CLAIM[(is_postgres(connection), apps is not None)], parameters).one_or_none()
        if row is None:
            return None
        job = Job.from_row(row)
        add_event(
            connection, job.id, "claimed",
            f"attempt {job.attempts_used} of {job.max_attempts}, GPUs {gpus or 'none'}",
            attempt=job.attempt, worker_id=worker_id, at=at,
        )
    return job


def heartbeat(engine: Engine, job: Job, worker_id: str, lease_s: float) -> Heartbeat:
    """Extend the job's lease (fenced); report whether we still own it and whether to cancel."""
    at = now()
    with engine.begin() as connection:
        row = connection.execute(
            update(jobs).where(fence(job, worker_id))
            .values(lease_expires_at=at + lease_s, updated_at=at)
            .returning(jobs.c.cancel_requested)
        ).one_or_none()
        connection.execute(
            update(workers).where(workers.c.id == worker_id).values(heartbeat_at=at, current_job_id=job.id)
        )
    if row is None:
        return Heartbeat(won=False, cancel_requested=False)
    return Heartbeat(won=True, cancel_requested=bool(row[0]))


def describe_exit(returncode: int) -> str:
    """``exit code N`` or ``killed by signal N (SIGNAME)`` for a Popen return code."""
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown"
    return f"killed by signal {number} ({name})"


def backoff_s(attempts_used: int, base_s: float) -> float:
    """Exponential backoff before retry number ``attempts_used``."""
    return min(base_s * (2 ** max(0, attempts_used - 1)), MAX_BACKOFF_S)


def _ending(current: Job, returncode: int, cancelled: bool, backoff_base_s: float,
            at: float) -> tuple[Outcome, dict[str, Any]]:
    """How an attempt that exited with ``returncode`` ends, and the row's new values."""
    values: dict[str, Any] = {"exit_code": returncode, "updated_at": at, "lease_expires_at": None}
    if cancelled:
        outcome = Outcome(CANCELLED, f"cancelled while running ({describe_exit(returncode)})")
    elif returncode == 0:
        outcome = Outcome(SUCCEEDED, "succeeded")
    elif returncode == EXIT_CODE_NEVER_RETRY:
        outcome = Outcome(FAILED, "failed: exit code 2 (bad configuration or data; not retried)")
    elif current.cancel_requested:  # never back to the queue once a cancel is asked for
        outcome = Outcome(CANCELLED, f"cancelled: {describe_exit(returncode)} while a cancel was pending")
    elif current.attempts_used < current.max_attempts:
        delay = backoff_s(current.attempts_used, backoff_base_s)
        outcome = Outcome(QUEUED, f"{describe_exit(returncode)}; retry in {delay:g} s", retry_in=delay)
    else:
        outcome = Outcome(FAILED, f"failed: {describe_exit(returncode)} after {current.attempts_used} attempts")
    values["status"] = outcome.status
    if outcome.status == QUEUED:
        values.update(not_before=at + (outcome.retry_in or 0.0), worker_id=None)
    else:
        values.update(end_reason=outcome.reason, finished_at=at)
    return outcome, values


def _own_row(connection: Any, job: Job, worker_id: str) -> Any:
    """The job's row while it is still this worker's attempt (locked on PostgreSQL), else None."""
    query = select(jobs).where(fence(job, worker_id))
    if is_postgres(connection):
        query = query.with_for_update()
    return connection.execute(query).one_or_none()


def finish(
    engine: Engine, job: Job, worker_id: str, returncode: int, *,
    cancelled: bool = False, backoff_base_s: float = DEFAULT_BACKOFF_S,
) -> Outcome | None:
    """Record how the attempt ended (fenced): succeeded, failed, cancelled, or queued for a retry.

    Returns None when the job no longer belongs to this worker and attempt (nothing written).
    """
    at = now()
    with engine.begin() as connection:
        row = _own_row(connection, job, worker_id)
        if row is None:
            add_event(connection, job.id, "fenced", f"stale finish ({describe_exit(returncode)}) ignored",
                      attempt=job.attempt, worker_id=worker_id, at=at)
            return None
        outcome, values = _ending(Job.from_row(row), returncode, cancelled, backoff_base_s, at)
        connection.execute(update(jobs).where(fence(job, worker_id)).values(**values))
        add_event(connection, job.id, "retry" if outcome.status == QUEUED else outcome.status, outcome.reason,
                  attempt=job.attempt, worker_id=worker_id, at=at)
        connection.execute(update(workers).where(workers.c.id == worker_id).values(current_job_id=None))
        if outcome.status == QUEUED:
            notify(connection)
    return outcome


def requeue_own(engine: Engine, job: Job, worker_id: str, reason: str) -> Outcome | None:
    """Put our running job back (daemon stopping); the attempt is not charged. Fenced.

    A job whose cancel was requested ends ``cancelled`` instead: a cancel is never undone by a
    stopping daemon. Returns the outcome, or None when the job was no longer ours.
    """
    at = now()
    with engine.begin() as connection:
        row = _own_row(connection, job, worker_id)
        if row is None:
            add_event(connection, job.id, "fenced", f"stale requeue ignored: {reason}",
                      attempt=job.attempt, worker_id=worker_id, at=at)
            outcome = None
        elif Job.from_row(row).cancel_requested:
            outcome = Outcome(CANCELLED, f"cancelled while running ({reason})")
            connection.execute(update(jobs).where(fence(job, worker_id)).values(
                status=CANCELLED, end_reason=outcome.reason, finished_at=at, lease_expires_at=None, updated_at=at,
            ))
            add_event(connection, job.id, CANCELLED, outcome.reason, attempt=job.attempt, worker_id=worker_id, at=at)
        else:
            outcome = Outcome(QUEUED, reason)
            connection.execute(update(jobs).where(fence(job, worker_id)).values(
                status=QUEUED, worker_id=None, lease_expires_at=None, not_before=at, updated_at=at,
                attempts_base=jobs.c.attempts_base + 1,
            ))
            add_event(connection, job.id, "requeued", f"{reason} (attempt not charged)",
                      attempt=job.attempt, worker_id=worker_id, at=at)
            notify(connection)
        connection.execute(update(workers).where(workers.c.id == worker_id).values(current_job_id=None))
    return outcome


def requeue_expired(
    engine: Engine, worker_id: str | None = None, recorded_exit: Callable[[Job], int | None] | None = None,
    backoff_base_s: float = DEFAULT_BACKOFF_S,
) -> list[tuple[Job, Outcome]]:
    """Put back running jobs whose lease expired (their daemon died); fail those out of attempts.

    ``recorded_exit(job)`` gives the exit code the job's shepherd wrote to the job folder when its
    app ended (None if none): such a job has finished, so its end is committed instead of a rerun
    (its daemon could not record it in time: a stalled database, then death).
    """
    at = now()
    done: list[tuple[Job, Outcome]] = []
    # Also queued jobs with a pending cancel (an older expctl requeued them so, and its claim cleared it):
    # the claim skips them, so they are cancelled here.
    stale = or_(and_(jobs.c.status == RUNNING, jobs.c.lease_expires_at < at),
                and_(jobs.c.status == QUEUED, jobs.c.cancel_requested.is_(True)))
    with read_connection(engine) as connection:  # the usual case, nothing expired, takes no write lock
        expired = connection.execute(select(jobs.c.id).where(stale).limit(1)).first()
    if expired is None:
        return done
    with engine.begin() as connection:
        query = select(jobs).where(stale)
        if is_postgres(connection):
            query = query.with_for_update(skip_locked=True)
        for row in connection.execute(query).all():
            job = Job.from_row(row)
            since = at - (job.lease_expires_at or at)
            if job.status == QUEUED:
                reason = "cancelled before it ran again (a cancel was pending)"
                if connection.execute(update(jobs).where(
                        jobs.c.id == job.id, jobs.c.status == QUEUED, jobs.c.cancel_requested.is_(True)).values(
                        status=CANCELLED, end_reason=reason, finished_at=at, updated_at=at)).rowcount == 1:
                    add_event(connection, job.id, CANCELLED, reason, attempt=job.attempt, worker_id=worker_id, at=at)
                    done.append((job, Outcome(CANCELLED, reason)))
                continue
            code = recorded_exit(job) if recorded_exit is not None else None
            if code is not None:
                outcome, values = _ending(job, code, False, backoff_base_s, at)
                outcome = Outcome(outcome.status, f"{outcome.reason} (recorded by its shepherd; worker "
                                                  f"{job.worker_id} stopped heartbeating)", outcome.retry_in)
                if outcome.status != QUEUED:
                    values["end_reason"] = outcome.reason
            elif job.cancel_requested:  # its daemon died before it could stop the child: cancel sticks
                outcome = Outcome(CANCELLED, f"cancelled: worker {job.worker_id} stopped heartbeating "
                                             f"(lease expired {since:.0f} s ago) while a cancel was pending")
                values: dict[str, Any] = {"status": CANCELLED, "end_reason": outcome.reason, "finished_at": at}
            elif job.attempts_used >= job.max_attempts:
                outcome = Outcome(FAILED, f"lost: worker {job.worker_id} stopped heartbeating "
                                          f"(lease expired {since:.0f} s ago); no attempts left")
                values = {"status": FAILED, "end_reason": outcome.reason, "finished_at": at}
            else:
                outcome = Outcome(QUEUED, f"lost: worker {job.worker_id} stopped heartbeating "
                                          f"(lease expired {since:.0f} s ago); requeued")
                values = {"status": QUEUED, "not_before": at, "worker_id": None}
            values.update(lease_expires_at=None, updated_at=at)
            guard = and_(jobs.c.id == job.id, jobs.c.attempt == job.attempt, jobs.c.status == RUNNING)
            if connection.execute(update(jobs).where(guard).values(**values)).rowcount == 1:
                kind = "recovered" if code is not None else CANCELLED if outcome.status == CANCELLED else "lost"
                add_event(connection, job.id, kind, outcome.reason, attempt=job.attempt, worker_id=worker_id, at=at)
                if job.worker_id:
                    connection.execute(
                        update(workers).where(workers.c.id == job.worker_id, workers.c.status == RUNNING)
                        .values(status="lost", current_job_id=None)
                    )
                done.append((job, outcome))
        connection.execute(
            update(workers).where(workers.c.status == RUNNING, workers.c.heartbeat_at < at - STALE_WORKER_S)
            .values(status="lost")
        )
        if any(outcome.status == QUEUED for _job, outcome in done):
            notify(connection)
    return done


# ---------------------------------------------------------------- workers


def register_worker(engine: Engine, worker_id: str, host: str, pid: int, gpus: str) -> None:
    """Record a starting daemon."""
    at = now()
    with engine.begin() as connection:
        connection.execute(
            insert(workers).values(id=worker_id, host=host, pid=pid, gpus=gpus, status=RUNNING,
                                   started_at=at, heartbeat_at=at)
        )


def touch_worker(engine: Engine, worker_id: str) -> None:
    """An idle daemon's heartbeat."""
    with engine.begin() as connection:
        connection.execute(
            update(workers).where(workers.c.id == worker_id).values(heartbeat_at=now(), status=RUNNING)
        )


def stop_worker(engine: Engine, worker_id: str) -> None:
    """Record a daemon's clean exit."""
    at = now()
    with engine.begin() as connection:
        connection.execute(
            update(workers).where(workers.c.id == worker_id)
            .values(status="stopped", stopped_at=at, heartbeat_at=at, current_job_id=None)
        )




def has_unfinished(engine: Engine, apps: Sequence[str] | None = None) -> bool:
    """Whether any job (of ``apps``; None: any app) is queued or running (``--until-empty`` waits for both)."""
    query = select(jobs.c.id).where(jobs.c.status.in_(ACTIVE_STATUSES))
    if apps is not None:
        query = query.where(jobs.c.app.in_(list(apps)))
    with read_connection(engine) as connection:
        return connection.execute(query.limit(1)).first() is not None


def mark_untrusted(engine: Engine, worker_id: str, apps: Sequence[str], limit: int = 500) -> list[tuple[int, str]]:
    """Give queued jobs of apps outside ``apps`` a reason (once), so that ``list``/``show`` say why they
    wait. They stay queued: a daemon that trusts their app may run them, or a user cancels them."""
    waiting = and_(jobs.c.status == QUEUED, jobs.c.app.not_in(list(apps)), jobs.c.end_reason.is_(None))
    with read_connection(engine) as connection:  # the usual case, nothing to mark, takes no write lock
        found = connection.execute(select(jobs.c.id, jobs.c.app).where(waiting).order_by(jobs.c.id).limit(limit)).all()
    marked: list[tuple[int, str]] = []
    if not found:
        return marked
    at = now()
    trusted = ",".join(apps)
    with engine.begin() as connection:
        for job_id, app in found:
            reason = (f"not started: app {app!r} is not trusted by worker {worker_id} (--apps {trusted}); "
                      f"a daemon started with --apps {app} runs it")
            if connection.execute(update(jobs).where(jobs.c.id == job_id, waiting).values(
                    end_reason=reason, updated_at=at)).rowcount == 1:
                add_event(connection, job_id, "untrusted", reason, worker_id=worker_id, at=at)
                marked.append((job_id, app))
    return marked


def next_wake(engine: Engine) -> float | None:
    """The earliest time a queued job becomes claimable or a running lease expires."""
    with read_connection(engine) as connection:
        queued = connection.execute(select(func.min(jobs.c.not_before)).where(jobs.c.status == QUEUED)).scalar()
        leases = connection.execute(
            select(func.min(jobs.c.lease_expires_at)).where(jobs.c.status == RUNNING)
        ).scalar()
    candidates = [value for value in (queued, leases) if value is not None]
    return min(candidates) if candidates else None
