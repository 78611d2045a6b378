"""The ``expctl`` command: enqueue experiments, run the consumer daemon, inspect and steer jobs."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from expctl import cli_mlflow  # noqa: F401 - registers the tracking, sweep and db commands
from expctl.cli_common import (
    JSON_OPTION,
    ago,
    app,
    chosen_tracker,
    console,
    error_console,
    print_json,
    say,
    state,
    table_row,
    when,
)
from expctl.daemon.gpus import parse_gpu_spec
from expctl.daemon.loop import Daemon, DaemonOptions
from expctl.errors import Interrupted, UserError, run_cli
from expctl.specs import compose, queue_file
from expctl.specs.submit import Request, submit
from expctl.store import actions, claims, jobs
from expctl.tracking.mlflow_data import run_address

# ---------------------------------------------------------------- enqueue


@app.command()
def enqueue(
    base: Optional[str] = typer.Argument(None, help="Config name (e.g. config) or path to a YAML file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Hydra overrides; a=1,2 sweeps."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Queue file: base|k=v|k2=v2 per line."),
    name: Optional[str] = typer.Option(None, "--name", help="Job (or sweep) name."),
    priority: int = typer.Option(0, "--priority", help="Higher runs first."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Attempts before a job fails for good."),
    app_module: str = typer.Option(compose.DEFAULT_APP, "--app", help="The Hydra app's module (python -m)."),
    allow_duplicate: bool = typer.Option(False, "--allow-duplicate", help="Queue even if identical to an active job."),
) -> None:
    """Compose and queue an experiment (a sweep becomes one job per combination)."""

    if file is not None and (base is not None or overrides):
        raise UserError("give either BASE [OVERRIDES...] or --file, not both")
    engine = state.engine()  # the queue first: a new one is migrated before MLflow's store opens beside it
    tracker = chosen_tracker()
    tracker.warm_up()  # MLflow's import (seconds) starts now, beside reading and composing the specs
    common = dict(app=compose.validate_app(app_module), priority=priority, max_attempts=max_attempts,
                  allow_duplicate=allow_duplicate)
    if file is not None:
        requests = [Request(base=line.base, overrides=line.overrides, name=None, label=f"{file}, line {line.number}",
                            **common) for line in queue_file.read(file)]
    elif base is None:
        raise UserError("nothing to enqueue: give BASE [OVERRIDES...] or --file FILE")
    else:
        requests = [Request(base=base, overrides=tuple(overrides or ()), name=name, **common)]
    results = submit(engine, requests, tracker)
    total = sum(len(result.jobs) for result in results)
    for result in results:
        ids = _id_list([job.id for job in result.jobs])
        where = f"{result.request.label}: " if result.request.label else ""
        if result.sweep_id is not None:
            say(f"{where}sweep {result.sweep_id}: queued {len(result.jobs)} jobs ({ids})")
        else:
            say(f"{where}queued job {ids}: {result.jobs[0].name}")
    if file is not None:
        say(f"{total} job(s) queued from {file}")
    _report_untracked(tracker)


def _id_list(ids: list[int], limit: int = 20) -> str:
    """``1, 2, 3`` for a few ids; runs as ranges (``1-1000``) for many."""
    if len(ids) <= limit:
        return ", ".join(str(job_id) for job_id in ids)
    runs: list[list[int]] = []
    for job_id in ids:
        if runs and job_id == runs[-1][1] + 1:
            runs[-1][1] = job_id
        else:
            runs.append([job_id, job_id])
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def _report_untracked(tracker) -> None:  # noqa: ANN001 - SafeTracker
    """One line when the tracker failed: which jobs have no up-to-date run, and how that is repaired."""
    if tracker.unsynced:
        ids = " ".join(str(job_id) for job_id in sorted(tracker.unsynced))
        error_console.print(f"warning: {tracker.name} could not track job(s) {ids}; the daemon catches up when "
                            f"{tracker.name} answers again, or run `expctl tracking sync {ids}`",
                            markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- consume


@app.command()
def consume(
    gpus: str = typer.Option(..., "--gpus", help="GPUs this daemon owns: 0-7, 0,2,5, all or none."),
    until_empty: bool = typer.Option(False, "--until-empty", help="Exit when nothing is queued or running."),
    once: bool = typer.Option(False, "--once", help="Run one job, then exit."),
    lease: float = typer.Option(60.0, "--lease", help="Seconds a job stays ours without a heartbeat."),
    poll: float = typer.Option(0.05, "--poll", help="Seconds between cheap checks for new jobs."),
    drain: bool = typer.Option(False, "--drain", help="On SIGTERM/SIGINT let the running job finish."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", envvar="EXPCTL_WORKDIR", help="Folder holding experiments/<job> (default: here)."
    ),
    grace: float = typer.Option(10.0, "--grace", help="Seconds between SIGTERM and SIGKILL when stopping a job."),
    backoff: float = typer.Option(claims.DEFAULT_BACKOFF_S, "--backoff", envvar="EXPCTL_BACKOFF",
                                  help="Base seconds of the exponential backoff before a retry."),
    pause: float = typer.Option(30.0, "--pause", help="Seconds without claims after the work folder could "
                                                      "not be written (the job goes back, its attempt not charged)."),
    apps: str = typer.Option(compose.DEFAULT_APP, "--apps", envvar="EXPCTL_APPS",
                             help="Comma-separated apps (python -m modules) this daemon runs; jobs of "
                                  "other apps stay queued, with the reason."),
) -> None:
    """Run queued jobs one at a time on the given GPUs (the daemon)."""

    trusted = tuple(dict.fromkeys(compose.validate_app(app.strip()) for app in apps.split(",") if app.strip()))
    indices = parse_gpu_spec(gpus)
    folder = (workdir or Path.cwd()).resolve()
    if not folder.is_dir():
        raise UserError(f"--workdir {str(folder)!r} is not a folder")
    options = DaemonOptions(gpus=indices, until_empty=until_empty, once=once, lease_s=lease, poll_s=poll,
                            drain=drain, workdir=folder, grace_s=grace, backoff_s=backoff, apps=trusted,
                            pause_s=pause)
    _log_to_stderr()
    daemon = Daemon(state.engine(), options, chosen_tracker())
    raise typer.Exit(daemon.run())


def _log_to_stderr() -> None:
    """The daemon's own messages (logger ``expctl``) go to stderr; other libraries stay quiet."""
    logger = logging.getLogger("expctl")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s expctl: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# ---------------------------------------------------------------- inspect


def _exp_dir(job: jobs.Job, job_dir: Path) -> str:
    """Where the app writes: the frozen config's explicit ``exp_dir`` (relative to the daemon's
    folder), else the job's folder (``${hydra:runtime.output_dir}`` is the run dir the daemon sets)."""
    value = job.exp_dir or compose.explicit_exp_dir(job.config_yaml)  # older rows: from the config
    return str(jobs.workdir() / value) if value else str(job_dir)


def _job_dir(job: jobs.Job) -> Path:
    """The job's own folder under the daemon's work folder: experiments/<id>-<uuid>."""
    return jobs.workdir() / "experiments" / jobs.job_folder(job)


def _job_json(job: jobs.Job) -> dict:
    """A job for scripts: every field a script may need, times as UTC epoch seconds."""
    job_dir = _job_dir(job)
    return {
        "id": job.id, "uuid": job.uuid, "name": job.name, "status": job.status, "reason": job.end_reason,
        "app": job.app, "base": job.base, "overrides": job.override_list, "sweep": job.sweep_id,
        "priority": job.priority, "attempt": job.attempts_used, "max_attempts": job.max_attempts,
        "claims": job.attempt, "worker": job.worker_id, "gpus": job.gpus, "exit_code": job.exit_code,
        "cancel_requested": bool(job.cancel_requested), "not_before": job.not_before,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "updated_at": job.updated_at, "config_hash": job.config_hash,
        "job_dir": str(job_dir), "log": str(job_dir / "job.log"), "exp_dir": _exp_dir(job, job_dir),
        "mlflow_run_id": job.tracking_run_id, "tracking_uri": job.tracking_uri,
    }


_STATUS_STYLE = {"queued": "cyan", "running": "yellow", "succeeded": "green", "failed": "red", "cancelled": "magenta"}


@app.command("list")
def list_command(
    status: Optional[str] = typer.Option(None, "--status", help="queued, running, succeeded, failed, cancelled."),
    sweep: Optional[int] = typer.Option(None, "--sweep", help="Only this sweep's jobs."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the newest N jobs."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List jobs."""
    found = jobs.list_jobs(state.engine(), status=status, sweep_id=sweep, limit=limit)
    if as_json:
        print_json([_job_json(job) for job in found])
        return
    columns = ["id", "status", "name", "attempt", "sweep", "prio", "worker", "updated", "reason"]
    rows = [dict(zip(columns, (
        str(job.id), Text(job.status, style=_STATUS_STYLE.get(job.status, "")), job.name,
        f"{job.attempts_used}/{job.max_attempts}", str(job.sweep_id or "-"), str(job.priority),
        job.worker_id or "-", ago(job.updated_at), job.end_reason or ""))) for job in found]
    # One line a job. The name and the reason share what the other columns leave of the terminal and end in
    # an ellipsis (``expctl show ID`` has them whole); on a narrow terminal prio and worker go first.
    widths = {column: max([len(column), *(len(str(row[column])) for row in rows)]) for column in columns}

    def room() -> int:
        fixed = sum(widths[column] for column in columns if column not in ("name", "reason"))
        return console.width - fixed - 3 * len(columns) - 1

    for optional in ("worker", "prio"):
        if room() < 30:
            columns.remove(optional)
    reason_width = min(widths["reason"], max(6, room() // 3))
    limits = {"name": max(8, min(widths["name"], room() - reason_width)), "reason": reason_width}
    table = Table(title=f"{len(found)} job(s)")
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis", width=limits.get(column))
    for row in rows:
        table_row(table, *(row[column] for column in columns))
    console.print(table)


@app.command()
def show(job_id: int = typer.Argument(..., help="Job id."), as_json: bool = JSON_OPTION) -> None:
    """Show a job: spec, state, tracking run, frozen config and history."""
    engine = state.engine()
    job = jobs.get_job(engine, job_id)
    history = jobs.events(engine, job_id)
    if as_json:
        print_json({**_job_json(job), "config_yaml": job.config_yaml,
                     "events": [{key: event[key] for key in ("time", "kind", "attempt", "worker_id", "message")}
                                for event in history]})
        return
    details = Table(show_header=False, title=f"job {job.id}")
    details.add_column("field", style="bold")
    details.add_column("value", overflow="fold")
    rows = [
        ("name", job.name), ("status", job.status), ("reason", job.end_reason or "-"),
        ("app", job.app), ("base", job.base), ("overrides", " ".join(job.override_list) or "-"),
        ("sweep", str(job.sweep_id or "-")), ("priority", str(job.priority)),
        ("attempt", f"{job.attempts_used} of {job.max_attempts} (claims: {job.attempt})"),
        ("worker", job.worker_id or "-"), ("GPUs", job.gpus or "-"),
        ("exit code", "-" if job.exit_code is None else claims.describe_exit(job.exit_code)),
        ("created", when(job.created_at)), ("started", when(job.started_at)), ("finished", when(job.finished_at)),
        ("config hash", job.config_hash[:16]),
        ("uuid", job.uuid or "- (queued before job uuids)"),
        ("job folder", str(_job_dir(job))), ("exp_dir", _exp_dir(job, _job_dir(job))),
        ("tracking run", job.tracking_run_id or "- (none yet: `expctl tracking sync` creates it)"),
    ]
    if job.tracking_run_id:

        uri = job.tracking_uri or ""
        rows.append(("tracking URI", uri or "-"))
        if uri:
            rows.append(("MLflow UI", run_address(job.tracking_run_id, uri)))
    if job.status == jobs.QUEUED and job.not_before > time.time():
        rows.append(("not before", when(job.not_before)))
    for field_name, value in rows:
        table_row(details, field_name, value)
    console.print(details)
    console.rule("frozen config")
    console.print(job.config_yaml.rstrip(), markup=False, highlight=False)
    events_table = Table(title="events")
    for column in ("time", "event", "attempt", "worker", "message"):
        events_table.add_column(column, overflow="fold")
    for event in history:
        table_row(events_table, when(event["time"]), event["kind"], event["attempt"] or "-",
             event["worker_id"] or "-", event["message"])
    console.print(events_table)


def _log_path(job: jobs.Job) -> Path:
    return _job_dir(job) / "job.log"


def _write_bytes(chunk: bytes) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
    sys.stdout.flush()


@app.command()
def logs(
    job_id: int = typer.Argument(..., help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
) -> None:
    """Print a job's log (experiments/<id>-<uuid>/job.log under the daemon's workdir)."""
    engine = state.engine()
    job = jobs.get_job(engine, job_id)
    path = _log_path(job)
    if not path.exists() and not follow:
        raise UserError(f"job {job_id} has no log at {path} ({job.status}; is EXPCTL_WORKDIR the daemon's?)")
    position = 0
    next_check = 0.0
    try:
        while True:
            if path.exists():
                with open(path, "rb") as log:
                    log.seek(position)
                    chunk = log.read()
                    position += len(chunk)
                if chunk:
                    _write_bytes(chunk)
            if not follow:
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                if jobs.get_job(engine, job_id).status in (jobs.SUCCEEDED, jobs.FAILED, jobs.CANCELLED):
                    follow = False  # one more read picks up the tail
                    continue
            time.sleep(0.25)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def cancel(
    job_id: Optional[int] = typer.Argument(None, help="Job id."),
    sweep: Optional[int] = typer.Option(None, "--sweep", help="Cancel every active job of this sweep."),
) -> None:
    """Cancel a queued job, or stop a running one (its daemon kills the child)."""
    engine = state.engine()
    if (job_id is None) == (sweep is None):
        raise UserError("give either a job ID or --sweep ID")
    before = _jobs_of(engine, job_id, sweep)
    if sweep is not None:
        counts = actions.cancel_sweep(engine, sweep)
        summary = ", ".join(f"{count} {what}" for what, count in counts.items()) or "nothing active"
        say(f"sweep {sweep}: {summary}")
    else:
        say(f"job {job_id}: {actions.cancel(engine, job_id)}")
    # A running job's run is ended by its daemon; a queued job never reaches one.
    _track_changes(engine, before, lambda tracker, job: tracker.on_finish(
        job, job.status, job.end_reason or "cancelled", None), only_status=jobs.CANCELLED)


def _jobs_of(engine: Engine, job_id: int | None, sweep: int | None) -> list[jobs.Job]:
    if sweep is not None:
        return jobs.list_jobs(engine, sweep_id=sweep)
    return [jobs.get_job(engine, job_id)] if job_id is not None else []


def _track_changes(engine: Engine, before: list[jobs.Job], hook, only_status: str) -> None:  # noqa: ANN001
    """Tell the tracker about jobs that moved to ``only_status`` (and have a run to update)."""
    changed = []
    for old in before:
        new = jobs.get_job(engine, old.id)
        if new.status == only_status and old.status != only_status and new.tracking_run_id:
            changed.append(new)
    if not changed:
        return
    tracker = chosen_tracker()
    for job in changed:
        hook(tracker, job)
    _report_untracked(tracker)


@app.command()
def retry(
    job_id: Optional[int] = typer.Argument(None, help="Job id."),
    sweep: Optional[int] = typer.Option(None, "--sweep", help="Retry this sweep's failed/cancelled jobs."),
    failed_only: bool = typer.Option(False, "--failed-only", help="With --sweep: only failed jobs."),
) -> None:
    """Queue a failed or cancelled job again (fresh attempt budget)."""
    engine = state.engine()
    if (job_id is None) == (sweep is None):
        raise UserError("give either a job ID or --sweep ID")
    before = _jobs_of(engine, job_id, sweep)
    if sweep is not None:
        count = actions.retry_sweep(engine, sweep, failed_only=failed_only)
        say(f"sweep {sweep}: {count} job(s) queued again")
    else:
        actions.retry(engine, job_id)
        say(f"job {job_id}: queued again")
    _track_changes(engine, before, lambda tracker, job: tracker.on_requeue(job, "retried by a user"),
                   only_status=jobs.QUEUED)


@app.command()
def workers(all_workers: bool = typer.Option(False, "--all", help="Include stopped daemons."),
            as_json: bool = JSON_OPTION) -> None:
    """List consumer daemons."""
    found = jobs.list_workers(state.engine(), include_stopped=True)
    if not all_workers:
        found = [worker for worker in found if worker["status"] != "stopped"]
    if as_json:
        print_json([{"id": worker["id"], "status": worker["status"], "host": worker["host"], "pid": worker["pid"],
                      "gpus": worker["gpus"], "job": worker["current_job_id"], "started_at": worker["started_at"],
                      "heartbeat_at": worker["heartbeat_at"], "stopped_at": worker["stopped_at"]}
                     for worker in found])
        return
    table = Table(title=f"{len(found)} worker(s)")
    for column in ("worker", "status", "host", "pid", "GPUs", "job", "started", "last heartbeat"):
        table.add_column(column, overflow="fold")
    for worker in found:
        table_row(table, worker["id"], worker["status"], worker["host"], worker["pid"], worker["gpus"],
             worker["current_job_id"] or "-", when(worker["started_at"]), ago(worker["heartbeat_at"]))
    console.print(table)


def main() -> None:
    """Console-script entry point: user mistakes become one ``error:`` line and exit status 2."""
    try:
        run_cli(app, "expctl")
    except UserError as error:
        error_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as error:
        error_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(130)
    except SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).strip().splitlines()
        error_console.print(f"error: database: {message[0] if message else type(error).__name__}",
                            markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


def script() -> None:
    """The ``expctl`` console script: :func:`main`, then, once MLflow was imported, an exit that skips
    the interpreter's teardown of MLflow's module graph (about 1 s here, a fifth of a 1,000-job
    enqueue). Everything is written, committed and flushed by then; atexit handlers still run."""
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exit_request:
        code = exit_request.code
    if "mlflow" not in sys.modules:
        sys.exit(code)
    if isinstance(code, str):  # what sys.exit would do with it: print it, exit 1
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    script()
