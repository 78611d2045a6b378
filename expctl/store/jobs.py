"""The job state machine, the user's side: enqueue, cancel, retry, reads; the job's row and history.

The daemon's side (claim, heartbeat, finish, requeue, reap) is :mod:`expctl.store.claims`. Each
operation is one tiny transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: row locks).

    queued ──claim──► running ──exit 0──► succeeded
      ▲                 │ ├──exit 2 / attempts used up──► failed
      └──retry/backoff──┘ ├──cancel──► cancelled
      └──lease expired / daemon stopped (requeue)
"""

from __future__ import annotations

import json
import os
import time
import uuid as uuid_module
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from expctl.store.db import read_connection
from expctl.errors import UserError
from expctl.store.schema import (  # the statuses too: callers read jobs.QUEUED, jobs.FAILED, ...
    ACTIVE_STATUSES,
    CANCELLED,  # noqa: F401 (re-exported)
    FAILED,  # noqa: F401 (re-exported)
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,  # noqa: F401 (re-exported)
    EXP_DIR_OWNER_STATUSES,
    job_events,
    jobs,
    sweeps,
    workers,
)

NOTIFY_CHANNEL = "expctl_jobs"
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


def now() -> float:
    """UTC epoch seconds."""
    return time.time()


def is_postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def notify(connection: Connection) -> None:
    """Wake PostgreSQL daemons waiting on LISTEN (delivered at commit)."""
    if is_postgres(connection):
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


def active_duplicates(connection: Connection, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
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


def exp_dir_owners(connection: Connection, folders: Iterable[str]) -> dict[str, tuple[int, str]]:
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
    """``item`` with its explicit exp_dir (found in its config by :mod:`expctl.specs.submit`) normalized."""
    return item if item.exp_dir is None else replace(item, exp_dir=normalize_exp_dir(item.exp_dir))


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
            duplicates = active_duplicates(connection, seen)
            for item in all_items:
                if not item.allow_duplicate and item.config_hash in duplicates:
                    raise _duplicate_error(item, *duplicates[item.config_hash])
            owners = exp_dir_owners(connection, folders)
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
            notify(connection)
    except IntegrityError:
        # Lost a race with another enqueue (PostgreSQL): name the other job.
        with read_connection(engine) as connection:
            duplicates = active_duplicates(connection, seen)
            owners = exp_dir_owners(connection, folders)
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


# ---------------------------------------------------------------- lookups (cancel and retry: expctl.store.actions)


def job_or_error(connection: Connection, job_id: int, lock: bool = False) -> Job:
    check_id(job_id)
    query = select(jobs).where(jobs.c.id == job_id)
    if lock and is_postgres(connection):  # SQLite's BEGIN IMMEDIATE already serializes writers
        query = query.with_for_update()
    row = connection.execute(query).one_or_none()
    if row is None:
        raise UserError(f"no job with id {job_id}")
    return Job.from_row(row)


def check_sweep(connection: Connection, sweep_id: int) -> None:
    check_id(sweep_id, "sweep")
    if connection.execute(select(sweeps.c.id).where(sweeps.c.id == sweep_id)).one_or_none() is None:
        raise UserError(f"no sweep with id {sweep_id}")


# ---------------------------------------------------------------- reads


def get_job(engine: Engine, job_id: int) -> Job:
    """The job, or a UserError naming the unknown id."""
    with read_connection(engine) as connection:
        return job_or_error(connection, job_id)


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
            check_sweep(connection, sweep_id)
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
        job_or_error(connection, job_id)
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
