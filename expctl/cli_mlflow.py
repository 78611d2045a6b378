"""``expctl tracking sync``, ``expctl sweep list|promote``, ``expctl db upgrade``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from expctl.cli_common import (
    JSON_OPTION,
    console,
    db_app,
    error_console,
    print_json,
    say,
    state,
    sweep_app,
    table_row,
    tracking_app,
    when,
)
from expctl.store import db, jobs
from expctl.tracking.mlflow_data import tracking_uri
from expctl.tracking.mlflow_runs import MlflowTracker
from expctl.tracking.promote import TrackerUnavailable, describe_counts, list_sweeps, promote


@tracking_app.command("sync")
def tracking_sync(
    job_ids: Optional[list[int]] = typer.Argument(None, help="Job ids (default: every job)."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", envvar="EXPCTL_WORKDIR", help="The daemon's folder holding experiments/<job>."
    ),
) -> None:
    """Create the MLflow runs of jobs that have none, and put every run in its job's status.

    Jobs queued or run while MLflow was unreachable get their run: params, tags, the job's
    status and times, and from experiments/<job>/ the per-epoch metrics (metrics.jsonl), the
    final ones (result.json) and the files as artifacts. Safe to run again.
    """

    engine = state.engine()
    folder = (workdir or Path.cwd()).resolve()
    selected = [jobs.get_job(engine, job_id) for job_id in job_ids] if job_ids else jobs.list_jobs(engine)
    tracker = MlflowTracker()
    table = Table(title=Text(f"MLflow sync ({tracker.uri})"))
    for column in ("job", "status", "run", "done"):
        table.add_column(column, overflow="fold")
    failures = 0
    for job in selected:
        try:
            report = tracker.sync(job, folder / "experiments" / jobs.job_folder(job))
        except Exception as error:  # noqa: BLE001 - report each job, go on with the others
            failures += 1
            message = str(error).strip().splitlines()
            table_row(table, job.id, job.status, job.tracking_run_id or "-",
                 Text(f"failed: {message[0] if message else type(error).__name__}", style="red"))
            if tracker.paused:
                break
            continue
        if report.run_id != job.tracking_run_id or (report.uri != job.tracking_uri):
            jobs.set_tracking(engine, job.id, report.run_id, report.uri)
        table_row(table, job.id, job.status, report.run_id, "; ".join(report.actions) or "in sync")
    console.print(table)
    if failures:
        error_console.print(f"error: {failures} job(s) could not be synced with MLflow at {tracker.uri}",
                            markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


# ---------------------------------------------------------------- sweeps


@sweep_app.command("list")
def sweep_list(
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the newest N sweeps."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List sweeps: the spec as typed and their jobs by status."""

    found = list_sweeps(state.engine(), limit=limit)
    if as_json:
        print_json([sweep.as_json() for sweep in found])
        return
    table = Table(title=f"{len(found)} sweep(s)")
    for column in ("sweep", "name", "app", "spec", "jobs", "created"):
        table.add_column(column, overflow="fold")
    for sweep in found:
        table_row(table, sweep.id, sweep.name or "-", sweep.app, " ".join([sweep.base, *sweep.overrides]),
             f"{sweep.jobs}: {describe_counts(sweep.counts)}" if sweep.jobs else "0", when(sweep.created_at))
    console.print(table)


_PROMOTE_HELP = (
    "Register the sweep's best succeeded run (its MLflow Model `model`) as a new version of NAME.\n\n"
    "Among the sweep's jobs that succeeded and whose MLflow run holds METRIC (the run's latest value), the "
    "lowest wins (--max: the highest; ties: the oldest job). Its runs:/<run_id>/model becomes a new version "
    "of the registered model NAME (created if new) in the run's tracking store, optionally with an alias."
)


@sweep_app.command("promote", help=_PROMOTE_HELP)
def sweep_promote(
    sweep_id: int = typer.Argument(..., metavar="SWEEP", help="Sweep id (expctl sweep list)."),
    metric: str = typer.Option(..., "--metric", help="The MLflow metric that ranks the runs (e.g. val_wer): "
                                                     "each run's latest value."),
    name: str = typer.Option(..., "--name", help="Registered model to add a version to (created if new)."),
    higher_is_better: bool = typer.Option(False, "--max", "--higher-is-better",
                                          help="The highest value wins (default: the lowest)."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Point this alias (e.g. champion) at the new version."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts instead of a line."),
) -> None:

    try:
        done = promote(state.engine(), sweep_id, metric, name, higher_is_better=higher_is_better, alias=alias,
                       tracking=state.tracking)
    except TrackerUnavailable as error:
        error_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        print_json(done.as_json())
        return
    direction = "highest" if higher_is_better else "lowest"
    alias_text = f", alias {done.alias}" if done.alias else ""
    alias_uri = f' or "models:/{done.name}@{done.alias}"' if done.alias else ""

    # The version lives in the run's store: say which when MLFLOW_TRACKING_URI points elsewhere.
    where = "" if done.uri == tracking_uri() else f" with MLFLOW_TRACKING_URI={done.uri}"
    say(f"sweep {done.sweep_id}: job {done.job_id} (run {done.run_id}) has the {direction} {done.metric}="
         f"{done.value:.6g} of {done.ranked} run(s) -> {done.name} version {done.version}{alias_text}; "
         f'load_model("{done.model_uri}"){alias_uri}{where}')


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the queue database's pending migrations."""
    engine = db.create_engine(state.db_url, migrate=False)
    head = db.upgrade(engine)
    say(f"queue database at revision {head}")
