"""The job state machine: enqueue, claim, heartbeat, finish, requeue, cancel, retry.

Each operation is one tiny transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: row locks, the
claim with ``FOR UPDATE SKIP LOCKED``). Every change after a claim is fenced by
``id, attempt, worker_id, status='running'`` and reports whether it won, so a daemon that lost
its lease can never overwrite what the next attempt does.

    queued ──claim──► running ──exit 0──► succeeded
      ▲                 │ ├──exit 2 / attempts used up──► failed
      └──retry/backoff──┘ ├──cancel──► cancelled
      └──lease expired / daemon stopped (requeue)
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid as uuid_module
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from expctl.db import read_connection
from expctl.errors import UserError
from expctl.schema import (
    ACTIVE_STATUSES,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    EXP_DIR_OWNER_STATUSES,
    job_events,
    jobs,
    sweeps,
    workers,
)

NOTIFY_CHANNEL = "expctl_jobs"
EXIT_CODE_NEVER_RETRY = 2
DEFAULT_BACKOFF_S = 10.0
MAX_BACKOFF_S = 600.0
STALE_WORKER_S = 600.0
# Integer columns are 32-bit on PostgreSQL (64-bit on SQLite): priorities and attempt budgets must
# fit both. An id outside 64 bits cannot exist, and SQLite would raise OverflowError on it.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_ATTEMPTS = 1000
MAX_NAME_CHARS = 200  # the name columns' length


def check_id(value: int, what: str = "job") -> None:
    """A job or sweep id nobody could have: the same one line as an unknown id."""
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise UserError(f"no {what} with id {value}")


def check_priority(value: int) -> None:
    """Priorities are stored as 32-bit integers on every database."""
    if not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise UserError(f"--priority must be between {-INT32_MAX - 1} and {INT32_MAX}, not {value}")


@dataclass(frozen=True)
class Job:
    """A snapshot of one ``jobs`` row."""

    id: int
    name: str
    app: str
    base: str
    overrides: str
    config_yaml: str
    config_hash: str
    dedup_key: str | None
    sweep_id: int | None
    priority: int
    status: str
    attempt: int
    attempts_base: int
    max_attempts: int
    worker_id: str | None
    gpus: str | None
    lease_expires_at: float | None
    not_before: float
    cancel_requested: bool
    exit_code: int | None
    end_reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    tracking_run_id: str | None
    tracking_uri: str | None
    uuid: str | None = None  # NULL for jobs queued before the job folders migration
    exp_dir: str | None = None  # the explicit exp_dir of its config (normalized), else None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        """Build from a SQLAlchemy row (mapping of all columns)."""
        mapping = row._mapping
        return cls(**{field.name: mapping[field.name] for field in fields(cls)})

    @property
    def override_list(self) -> list[str]:
        """The job's overrides as a list."""
        return list(json.loads(self.overrides))

    @property
    def attempts_used(self) -> int:
        """Attempts charged against ``max_attempts`` since the job was (re)queued by a user."""
        return self.attempt - self.attempts_base


@dataclass(frozen=True)
class NewJob:
    """What enqueue inserts; ``label`` names it in errors (e.g. ``line 3``)."""

    app: str
    base: str
    overrides: Sequence[str]
    config_yaml: str
    config_hash: str
    name: str
    priority: int = 0
    max_attempts: int = 3
    allow_duplicate: bool = False
    label: str = ""
    exp_dir: str | None = None  # the config's explicit exp_dir: it must belong to this job alone


@dataclass(frozen=True)
class NewSweep:
    """A sweep: the spec as typed, before expansion."""

    app: str
    base: str
    overrides: Sequence[str]
    name: str | None = None


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


def now() -> float:
    """UTC epoch seconds."""
    return time.time()


def _is_postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def _notify(connection: Connection) -> None:
    """Wake PostgreSQL daemons waiting on LISTEN (delivered at commit)."""
    if _is_postgres(connection):
        connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})


_EVENT = insert(job_events).values(
    job_id=bindparam("event_job"), time=bindparam("event_time"), kind=bindparam("event_kind"),
    attempt=bindparam("event_attempt"), worker_id=bindparam("event_worker"), message=bindparam("event_message"),
)


def add_event(
    connection: Connection, job_id: int, kind: str, message: str = "", *,
    attempt: int | None = None, worker_id: str | None = None, at: float | None = None,
) -> None:
    """Append to the job's history."""
    connection.execute(_EVENT, {
        "event_job": job_id, "event_time": at if at is not None else now(), "event_kind": kind,
        "event_attempt": attempt, "event_worker": worker_id, "event_message": message,
    })


def _fence(job: Job, worker_id: str) -> Any:
    return and_(
        jobs.c.id == job.id,
        jobs.c.attempt == job.attempt,
        jobs.c.worker_id == worker_id,
        jobs.c.status == RUNNING,
    )


# ---------------------------------------------------------------- folders


def job_folder(job: Job) -> str:
    """The name of the job's own folder under ``<workdir>/experiments``: ``<id>-<uuid>``, unique across
    queue databases (ids start again at 1 in a new database); ``<id>`` for jobs queued before uuids."""
    return f"{job.id}-{job.uuid}" if job.uuid else str(job.id)


def workdir() -> Path:
    """The daemon's work folder as every command sees it: ``EXPCTL_WORKDIR``, else the current folder."""
    return Path(os.environ.get("EXPCTL_WORKDIR") or Path.cwd()).resolve()


def normalize_exp_dir(value: str, base: Path | None = None) -> str:
    """The form in which explicit exp_dirs are stored and compared: one spelling per folder.

    Absolute, against the daemon's work folder (``base``, default :func:`workdir`), where the app runs
    and resolves a relative exp_dir: ``runs/a``, ``runs/./a/`` and ``<workdir>/runs/a`` are one
    folder. Symbolic links are resolved too.
    """
    return os.path.realpath(os.path.join(base or workdir(), value))


# ---------------------------------------------------------------- enqueue


def _active_duplicates(connection: Connection, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
    keys = [key for key in keys if key]
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(keys), 500):
        rows = connection.execute(
            select(jobs.c.dedup_key, jobs.c.id, jobs.c.status).where(
                jobs.c.dedup_key.in_(keys[start:start + 500]), jobs.c.status.in_(ACTIVE_STATUSES)
            )
        )
        for key, job_id, status in rows:
            found[key] = (job_id, status)
    return found


def _exp_dir_owners(connection: Connection, folders: Iterable[str]) -> dict[str, tuple[int, str]]:
    folders = [folder for folder in folders if folder]
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(folders), 500):
        rows = connection.execute(
            select(jobs.c.exp_dir, jobs.c.id, jobs.c.status).where(
                jobs.c.exp_dir.in_(folders[start:start + 500]), jobs.c.status.in_(EXP_DIR_OWNER_STATUSES))
        )
        for folder, job_id, status in rows:
            found[folder] = (job_id, status)
    return found


def _exp_dir_error(item: NewJob, other_id: int, other_status: str) -> UserError:
    where = f"{item.label}: " if item.label else ""
    return UserError(
        f"{where}exp_dir {item.exp_dir!r} is the folder of job {other_id} ({other_status}): choose another "
        "exp_dir, or leave exp_dir unset so that the job gets its own folder"
    )


def _duplicate_error(item: NewJob, other_id: int, other_status: str) -> UserError:
    where = f"{item.label}: " if item.label else ""
    return UserError(
        f"{where}{item.name!r} duplicates job {other_id} ({other_status}, same app and config); "
        "use --allow-duplicate to queue it anyway"
    )


def _with_exp_dir(item: NewJob) -> NewJob:
    """``item`` with the explicit exp_dir of its config (normalized), when the caller did not give it."""
    if item.exp_dir is not None:
        return replace(item, exp_dir=normalize_exp_dir(item.exp_dir))
    from expctl.specs import explicit_exp_dir

    folder = explicit_exp_dir(item.config_yaml)
    return item if folder is None else replace(item, exp_dir=normalize_exp_dir(folder))


def enqueue(engine: Engine, items: Sequence[NewJob], sweep: NewSweep | None = None) -> list[Job]:
    """Insert ``items`` (and their sweep) in one transaction: all or none."""
    return enqueue_batches(engine, [(items, sweep)])[0][0]


def enqueue_batches(
    engine: Engine, batches: Sequence[tuple[Sequence[NewJob], NewSweep | None]]
) -> list[tuple[list[Job], int | None]]:
    """Insert several groups of jobs (each with an optional sweep) in ONE transaction: all or none."""
    batches = [([_with_exp_dir(item) for item in items], sweep) for items, sweep in batches]
    all_items = [item for items, _sweep in batches for item in items]
    if not all_items:
        raise UserError("nothing to enqueue")
    seen: dict[str, NewJob] = {}
    folders: dict[str, NewJob] = {}
    for item in all_items:
        if item.exp_dir is not None:
            if item.exp_dir in folders:
                first = folders[item.exp_dir]
                where = f"{item.label}: " if item.label else ""
                raise UserError(f"{where}{item.name!r} has the same exp_dir {item.exp_dir!r} as "
                                f"{first.label or repr(first.name)}: each job needs its own folder")
            folders[item.exp_dir] = item
        if not 1 <= item.max_attempts <= MAX_ATTEMPTS:
            raise UserError(f"--max-attempts must be between 1 and {MAX_ATTEMPTS}, not {item.max_attempts}")
        check_priority(item.priority)
        if len(item.name) > MAX_NAME_CHARS:
            raise UserError(f"the name {item.name[:40]!r}... is longer than {MAX_NAME_CHARS} characters")
        if not item.allow_duplicate:
            if item.config_hash in seen:
                first = seen[item.config_hash]
                where = f"{item.label}: " if item.label else ""
                raise UserError(f"{where}{item.name!r} has the same config as "
                                f"{first.label or repr(first.name)}; use --allow-duplicate to queue both")
            seen[item.config_hash] = item
    results: list[tuple[list[Job], int | None]] = []
    try:
        with engine.begin() as connection:
            duplicates = _active_duplicates(connection, seen)
            for item in all_items:
                if not item.allow_duplicate and item.config_hash in duplicates:
                    raise _duplicate_error(item, *duplicates[item.config_hash])
            owners = _exp_dir_owners(connection, folders)
            for item in all_items:
                if item.exp_dir in owners:
                    raise _exp_dir_error(item, *owners[item.exp_dir])
            at = now()
            for items, sweep in batches:
                sweep_id = None
                if sweep is not None:
                    sweep_id = connection.execute(
                        insert(sweeps).values(
                            name=sweep.name, app=sweep.app, base=sweep.base,
                            overrides=json.dumps(list(sweep.overrides)), created_at=at,
                        ).returning(sweeps.c.id)
                    ).scalar_one()
                rows = [{
                    "name": item.name, "app": item.app, "base": item.base,
                    "overrides": json.dumps(list(item.overrides)), "config_yaml": item.config_yaml,
                    "config_hash": item.config_hash, "dedup_key": None if item.allow_duplicate else item.config_hash,
                    "sweep_id": sweep_id, "priority": item.priority, "status": QUEUED, "attempt": 0,
                    "attempts_base": 0, "max_attempts": item.max_attempts, "not_before": 0.0,
                    "cancel_requested": False, "created_at": at, "updated_at": at,
                    "uuid": uuid_module.uuid4().hex, "exp_dir": item.exp_dir,
                } for item in items]
                # one statement for all rows (SQLAlchemy's "insertmanyvalues": batched INSERT ... RETURNING),
                # rows back in the order given
                inserted = connection.execute(insert(jobs).returning(*jobs.c, sort_by_parameter_order=True), rows)
                created = [Job.from_row(row) for row in inserted.all()]
                message = "" if sweep_id is None else f", sweep {sweep_id}"
                connection.execute(_EVENT, [{
                    "event_job": job.id, "event_time": at, "event_kind": "enqueued",
                    "event_attempt": None, "event_worker": None, "event_message": f"priority {job.priority}{message}",
                } for job in created])
                results.append((created, sweep_id))
            _notify(connection)
    except IntegrityError:
        # Lost a race with another enqueue (PostgreSQL): name the other job.
        with read_connection(engine) as connection:
            duplicates = _active_duplicates(connection, seen)
            owners = _exp_dir_owners(connection, folders)
        for item in all_items:
            if item.config_hash in duplicates and not item.allow_duplicate:
                raise _duplicate_error(item, *duplicates[item.config_hash]) from None
            if item.exp_dir in owners:
                raise _exp_dir_error(item, *owners[item.exp_dir]) from None
        raise
    return results


def set_tracking_many(engine: Engine, runs: dict[int, tuple[str | None, str | None]]) -> None:
    """Store many jobs' run ids and addresses in one transaction (``{job id: (run id, uri)}``)."""
    if not runs:
        return
    statement = update(jobs).where(jobs.c.id == bindparam("job_id")).values(
        tracking_run_id=bindparam("run_id"), tracking_uri=bindparam("uri"))
    with engine.begin() as connection:
        connection.execute(statement, [{"job_id": job_id, "run_id": run_id, "uri": uri}
                                       for job_id, (run_id, uri) in runs.items()])


def set_tracking(engine: Engine, job_id: int, run_id: str | None, uri: str | None) -> None:
    """Store the tracker's run id (and address) on the job."""
    with engine.begin() as connection:
        connection.execute(
            update(jobs).where(jobs.c.id == job_id).values(tracking_run_id=run_id, tracking_uri=uri)
        )


# ---------------------------------------------------------------- the daemon's side


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
        row = connection.execute(_CLAIM[(_is_postgres(connection), apps is not None)], parameters).one_or_none()
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
            update(jobs).where(_fence(job, worker_id))
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


def finish(
    engine: Engine, job: Job, worker_id: str, returncode: int, *,
    cancelled: bool = False, backoff_base_s: float = DEFAULT_BACKOFF_S,
) -> Outcome | None:
    """Record how the attempt ended (fenced): succeeded, failed, cancelled, or queued for a retry.

    Returns None when the job no longer belongs to this worker and attempt (nothing written).
    """
    at = now()
    with engine.begin() as connection:
        query = select(jobs).where(_fence(job, worker_id))
        if _is_postgres(connection):
            query = query.with_for_update()
        row = connection.execute(query).one_or_none()
        if row is None:
            add_event(connection, job.id, "fenced", f"stale finish ({describe_exit(returncode)}) ignored",
                      attempt=job.attempt, worker_id=worker_id, at=at)
            return None
        outcome, values = _ending(Job.from_row(row), returncode, cancelled, backoff_base_s, at)
        connection.execute(update(jobs).where(_fence(job, worker_id)).values(**values))
        add_event(connection, job.id, "retry" if outcome.status == QUEUED else outcome.status, outcome.reason,
                  attempt=job.attempt, worker_id=worker_id, at=at)
        connection.execute(update(workers).where(workers.c.id == worker_id).values(current_job_id=None))
        if outcome.status == QUEUED:
            _notify(connection)
    return outcome


def requeue_own(engine: Engine, job: Job, worker_id: str, reason: str) -> Outcome | None:
    """Put our running job back (daemon stopping); the attempt is not charged. Fenced.

    A job whose cancel was requested ends ``cancelled`` instead: a cancel is never undone by a
    stopping daemon. Returns the outcome, or None when the job was no longer ours.
    """
    at = now()
    with engine.begin() as connection:
        query = select(jobs).where(_fence(job, worker_id))
        if _is_postgres(connection):
            query = query.with_for_update()
        row = connection.execute(query).one_or_none()
        if row is None:
            add_event(connection, job.id, "fenced", f"stale requeue ignored: {reason}",
                      attempt=job.attempt, worker_id=worker_id, at=at)
            outcome = None
        elif Job.from_row(row).cancel_requested:
            outcome = Outcome(CANCELLED, f"cancelled while running ({reason})")
            connection.execute(update(jobs).where(_fence(job, worker_id)).values(
                status=CANCELLED, end_reason=outcome.reason, finished_at=at, lease_expires_at=None, updated_at=at,
            ))
            add_event(connection, job.id, CANCELLED, outcome.reason, attempt=job.attempt, worker_id=worker_id, at=at)
        else:
            outcome = Outcome(QUEUED, reason)
            connection.execute(update(jobs).where(_fence(job, worker_id)).values(
                status=QUEUED, worker_id=None, lease_expires_at=None, not_before=at, updated_at=at,
                attempts_base=jobs.c.attempts_base + 1,
            ))
            add_event(connection, job.id, "requeued", f"{reason} (attempt not charged)",
                      attempt=job.attempt, worker_id=worker_id, at=at)
            _notify(connection)
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
        if _is_postgres(connection):
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
            _notify(connection)
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


# ---------------------------------------------------------------- user actions


def _job_or_error(connection: Connection, job_id: int, lock: bool = False) -> Job:
    check_id(job_id)
    query = select(jobs).where(jobs.c.id == job_id)
    if lock and _is_postgres(connection):  # SQLite's BEGIN IMMEDIATE already serializes writers
        query = query.with_for_update()
    row = connection.execute(query).one_or_none()
    if row is None:
        raise UserError(f"no job with id {job_id}")
    return Job.from_row(row)


def _check_sweep(connection: Connection, sweep_id: int) -> None:
    check_id(sweep_id, "sweep")
    if connection.execute(select(sweeps.c.id).where(sweeps.c.id == sweep_id)).one_or_none() is None:
        raise UserError(f"no sweep with id {sweep_id}")


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
        job = _job_or_error(connection, job_id, lock=True)
        if job.status not in ACTIVE_STATUSES:
            raise UserError(f"job {job_id} already {job.status}: nothing to cancel")
        return _cancel_in(connection, job, now())


def cancel_sweep(engine: Engine, sweep_id: int) -> dict[str, int]:
    """Cancel every queued or running job of a sweep; counts per outcome."""
    counts: dict[str, int] = {}
    with engine.begin() as connection:
        _check_sweep(connection, sweep_id)
        at = now()
        query = select(jobs).where(jobs.c.sweep_id == sweep_id, jobs.c.status.in_(ACTIVE_STATUSES)).order_by(jobs.c.id)
        if _is_postgres(connection):
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
        duplicates = _active_duplicates(connection, [job.dedup_key or ""])
        if job.dedup_key in duplicates:
            other = duplicates[job.dedup_key]
            raise UserError(
                f"job {job.id} has the same config as job {other[0]} ({other[1]}): cancel that one first"
            ) from None
        owner = _exp_dir_owners(connection, [job.exp_dir or ""]).get(job.exp_dir or "", (0, "active"))
        raise UserError(
            f"job {job.id}: its exp_dir {job.exp_dir!r} now belongs to job {owner[0]} ({owner[1]}); "
            "queue it again with another exp_dir"
        ) from None
    add_event(connection, job.id, "retried", f"requeued by a user after {job.status}", attempt=job.attempt, at=at)


def retry(engine: Engine, job_id: int) -> None:
    """Queue a failed or cancelled job again, with a fresh attempt budget."""
    with engine.begin() as connection:
        job = _job_or_error(connection, job_id)
        if job.status not in (FAILED, CANCELLED):
            raise UserError(f"job {job_id} is {job.status}: only failed or cancelled jobs can be retried")
        _retry_in(connection, job, now())
        _notify(connection)


def retry_sweep(engine: Engine, sweep_id: int, failed_only: bool = False) -> int:
    """Queue a sweep's failed (and, unless ``failed_only``, cancelled) jobs again; how many."""
    wanted = (FAILED,) if failed_only else (FAILED, CANCELLED)
    with engine.begin() as connection:
        _check_sweep(connection, sweep_id)
        at = now()
        rows = connection.execute(
            select(jobs).where(jobs.c.sweep_id == sweep_id, jobs.c.status.in_(wanted)).order_by(jobs.c.id)
        ).all()
        for row in rows:
            _retry_in(connection, Job.from_row(row), at)
        if rows:
            _notify(connection)
    return len(rows)


# ---------------------------------------------------------------- reads


def get_job(engine: Engine, job_id: int) -> Job:
    """The job, or a UserError naming the unknown id."""
    with read_connection(engine) as connection:
        return _job_or_error(connection, job_id)


def list_jobs(engine: Engine, status: str | None = None, sweep_id: int | None = None,
              limit: int | None = None) -> list[Job]:
    """Jobs, oldest first, optionally filtered."""
    query = select(jobs).order_by(jobs.c.id)
    if status is not None:
        if status not in STATUSES:
            raise UserError(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
        query = query.where(jobs.c.status == status)
    with read_connection(engine) as connection:
        if sweep_id is not None:
            _check_sweep(connection, sweep_id)
            query = query.where(jobs.c.sweep_id == sweep_id)
        if limit is not None:
            if not 0 <= limit <= INT64_MAX:
                raise UserError(f"--limit must be between 0 and {INT64_MAX}, not {limit}")
            query = query.order_by(None).order_by(jobs.c.id.desc()).limit(limit)
        rows = connection.execute(query).all()
    found = [Job.from_row(row) for row in rows]
    return sorted(found, key=lambda job: job.id)


def events(engine: Engine, job_id: int) -> list[dict[str, Any]]:
    """The job's history, oldest first."""
    with read_connection(engine) as connection:
        _job_or_error(connection, job_id)
        rows = connection.execute(
            select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
        ).all()
    return [dict(row._mapping) for row in rows]


def list_workers(engine: Engine, include_stopped: bool = True) -> list[dict[str, Any]]:
    """Registered daemons, newest first."""
    query = select(workers).order_by(workers.c.started_at.desc())
    if not include_stopped:
        query = query.where(workers.c.status == RUNNING)
    with read_connection(engine) as connection:
        return [dict(row._mapping) for row in connection.execute(query).all()]


def counts_by_status(engine: Engine) -> dict[str, int]:
    """How many jobs are in each status."""
    with read_connection(engine) as connection:
        rows = connection.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
    return {status: count for status, count in rows}


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
