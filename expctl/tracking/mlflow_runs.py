"""MLflow tracking of queued jobs: one MLflow run per job, visible from the moment it is enqueued.

Life of a run: ``enqueue`` creates it in status SCHEDULED with the job's tags, its frozen config
as params and ``config.yaml`` as an artifact; a claim makes it RUNNING and hands
``MLFLOW_TRACKING_URI`` + ``MLFLOW_RUN_ID`` to the child, which logs its own metrics and
artifacts into the same run; the end of the job fills in whatever the child could not log (from
``experiments/<job>/``), uploads ``job.log`` and sets FINISHED, FAILED or KILLED. A job that goes
back to the queue (retry, dead daemon, stopped daemon) is SCHEDULED again, so no run stays
RUNNING after its job stopped, and the next attempt continues the same run.

When MLflow cannot be reached the queue goes on: the first failure is logged, then the tracker
stays quiet for ``RETRY_AFTER_S`` (calls fail at once with :class:`TrackingPaused`, which
``SafeTracker`` does not log again). :meth:`MlflowTracker.sync` (``expctl tracking sync``, and
the daemon itself once MLflow answers again) creates the missing runs from the job's row and
folder and puts every run in its job's status. It is idempotent.

This module imports MLflow only when it first talks to it: ``expctl list`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from expctl.errors import first_line
from expctl.store.db import ALEMBIC_LOCK
from expctl.tracking.hooks import TrackingPaused
from expctl.tracking.mlflow_data import (
    METRICS_FILE,
    RESULT_FILE,
    flatten,
    git_commit,
    numeric_leaves,
    read_metrics_lines,
    tracking_uri,
)

RETRY_AFTER_S = 60.0
TAG_VALUE_LIMIT = 5000
BATCH_LIMIT = 100  # params or tags per log_batch
ENQUEUE_THREADS = 8  # runs created side by side when many jobs are queued at once
METRIC_BATCH_LIMIT = 1000

# MLflow retries an HTTP call 7 times with exponential backoff by default (minutes on a dead
# server): the queue must not wait that long. These apply to this process and to its children,
# unless the user set them. Telemetry is off because its thread would make the daemon fork
# from a multi-threaded process; the "View run at" lines MLflow prints on stdout are off too.
FAIL_FAST_ENVIRONMENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

RUN_STATUS = {"queued": "SCHEDULED", "running": "RUNNING", "succeeded": "FINISHED", "failed": "FAILED",
              "cancelled": "KILLED"}
ENDED_JOB_STATUSES = ("succeeded", "failed", "cancelled")
JOB_LOG = "job.log"
CONFIG_ARTIFACT = "config.yaml"


@dataclass
class SyncReport:
    """What :meth:`MlflowTracker.sync` did to one job's run."""

    job_id: int
    run_id: str
    uri: str
    created: bool = False
    actions: list[str] = field(default_factory=list)


class MlflowTracker:
    """The ``Tracker`` of :mod:`expctl.tracking.hooks` backed by an MLflow tracking server or store.

    A job's run lives at the URI stored on the job (where it was created); new runs go to
    ``uri`` (default :func:`tracking_uri`).
    """

    name = "mlflow"

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or tracking_uri()
        self._clients: dict[str, Any] = {}
        self._quiet_until = 0.0
        self._experiments: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------- plumbing

    def client(self, uri: str | None = None) -> Any:
        """An ``MlflowClient`` for ``uri`` (MLflow is imported on first use)."""
        uri = uri or self.uri
        if uri not in self._clients:
            for key, value in FAIL_FAST_ENVIRONMENT.items():
                os.environ.setdefault(key, value)

            from mlflow.tracking import MlflowClient

            for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
                logging.getLogger(noisy).setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
            with ALEMBIC_LOCK:  # the client opens its store, which may create or upgrade MLflow's tables
                self._clients[uri] = MlflowClient(tracking_uri=uri)
        return self._clients[uri]

    @property
    def paused(self) -> bool:
        """Whether MLflow failed less than ``RETRY_AFTER_S`` ago."""
        return time.monotonic() < self._quiet_until

    def _call(self, action: Callable[[], Any]) -> Any:
        """Run MLflow calls unless MLflow failed recently; a failure starts a quiet period."""
        if self.paused:
            raise TrackingPaused(f"MLflow at {self.uri} failed less than {RETRY_AFTER_S:g} s ago")
        try:
            return action()
        except Exception as error:
            if _is_request_error(error):
                raise
            self._quiet_until = time.monotonic() + RETRY_AFTER_S
            raise ConnectionError(f"MLflow at {self.uri} failed ({first_line(error)}); jobs keep running, "
                                  f"tracking pauses {RETRY_AFTER_S:g} s and `expctl tracking sync` "
                                  "catches up later") from error

    def run_ref(self, job: Any) -> tuple[str | None, str]:
        """The job's run id (None when it has none yet) and the URI it lives at."""
        return job.tracking_run_id, (job.tracking_uri or self.uri)

    def _experiment_id(self, uri: str, config: dict[str, Any]) -> str:
        name = str((config.get("experiment") or {}).get("name") or "expctl")
        if (uri, name) not in self._experiments:
            client = self.client(uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                from mlflow.exceptions import MlflowException

                try:
                    experiment_id = client.create_experiment(name)
                except MlflowException:  # created by another process meanwhile
                    experiment_id = client.get_experiment_by_name(name).experiment_id
            else:
                experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    client.restore_experiment(experiment_id)
            self._experiments[(uri, name)] = experiment_id
        return self._experiments[(uri, name)]

    @staticmethod
    def _tags(job: Any) -> dict[str, str]:
        overrides = job.override_list
        tags = {
            "expctl.job_id": str(job.id),
            "expctl.job_uuid": getattr(job, "uuid", None) or "",
            "expctl.app": job.app,
            "expctl.base": job.base,
            "expctl.overrides": " ".join(overrides),
            "expctl.spec": "|".join([job.base, *overrides]),  # a queue-file line that queues it again
            "expctl.sweep_id": "" if job.sweep_id is None else str(job.sweep_id),
            "expctl.priority": str(job.priority),
            "expctl.max_attempts": str(job.max_attempts),
            "expctl.config_hash": job.config_hash,
            "expctl.status": job.status,
            "mlflow.source.name": f"python -m {job.app}",
            "mlflow.source.type": "JOB",
            "mlflow.user": os.environ.get("USER") or "expctl",
        }
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        return {key: value[:TAG_VALUE_LIMIT] for key, value in tags.items()}

    def _planned_run(self, job: Any, config: dict[str, Any]) -> tuple[Any, str, dict[str, str], dict[str, str]]:
        """What :func:`expctl.tracking.batch.create_runs` writes for a job: experiment, tags, params."""
        params = {key: value for key, value in flatten(config).items() if key}
        return job, self._experiment_id(self.uri, config), self._run_tags(job), params

    def _run_tags(self, job: Any) -> dict[str, str]:
        """The tags a new run gets: the job's, its name and the user (as ``create_run`` writes them)."""
        return {**self._tags(job), **({"mlflow.runName": job.name} if job.name else {})}

    def _set_tags(self, client: Any, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(key, str(value)[:TAG_VALUE_LIMIT]) for key, value in tags.items()])

    def _set_status(self, client: Any, run_id: str, job: Any) -> None:
        """Put the run in the job's status (ended: with the job's end time)."""
        status = RUN_STATUS.get(job.status, "FAILED")
        if job.status in ENDED_JOB_STATUSES:
            end_ms = int((job.finished_at or time.time()) * 1000)
            client.set_terminated(run_id, status, end_time=end_ms)
        else:
            client.update_run(run_id, status=status)

    def create_run(self, job: Any, uri: str | None = None) -> str:
        """Create the job's run (SCHEDULED): tags and the flattened config as params. ``config.yaml``
        is logged when the job starts (:meth:`on_claim`): one file write less per queued job."""
        from mlflow.entities import Param

        uri = uri or self.uri
        config = yaml.load(job.config_yaml, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        client = self.client(uri)
        run = client.create_run(self._experiment_id(uri, config if isinstance(config, dict) else {}),
                                start_time=int(job.created_at * 1000), tags=self._tags(job), run_name=job.name)
        run_id = run.info.run_id
        try:
            params = [Param(key, value) for key, value in flatten(config).items() if key]
            for start in range(0, len(params), BATCH_LIMIT):
                client.log_batch(run_id, params=params[start:start + BATCH_LIMIT])
            client.update_run(run_id, status="SCHEDULED")
        except Exception:
            try:  # no half-made run: the next attempt (or sync) starts afresh
                client.delete_run(run_id)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        return run_id

    # --------------------------------------------------------------- hooks

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        return {"run_id": self._call(lambda: self.create_run(job)), "uri": self.uri}

    def warm_up(self) -> None:
        """Import MLflow and open the store (seconds: run while the specs compose)."""
        self._call(lambda: self.client(self.uri))
        from expctl.tracking import batch  # noqa: F401 - MLflow's store modules

    def on_enqueue_many(self, jobs: list[Any], done: Callable[[Any, dict[str, str]], None],
                        configs: dict[int, dict] | None = None) -> None:
        """Create the runs of many jobs at once; ``done(job, {"run_id", "uri"})`` as each is created.

        On a database store (the default SQLite file) a chunk of runs is written in one transaction
        (:mod:`expctl.mlflow_batch`); on a tracking server ``ENQUEUE_THREADS`` requests are in flight
        (a server answers them side by side; MLflow has no call that creates many runs). The first
        failure stops the rest (they are synced later) and is raised."""
        if not jobs:
            return
        configs = configs or {}

        def config_of(job: Any) -> dict[str, Any]:
            return configs[job.id] if job.id in configs else _config_of(job)

        self._call(lambda: self._experiment_id(self.uri, config_of(jobs[0])))  # once, before the threads
        client = self.client(self.uri)
        from expctl.tracking import batch as mlflow_batch  # imports MLflow's store modules: only when runs are made

        store = mlflow_batch.database_store(client)
        if store is not None:
            planned = (self._planned_run(job, config_of(job)) for job in jobs)  # chunk by chunk
            self._call(lambda: mlflow_batch.create_runs(
                store, client, planned, lambda job, run_id: done(job, {"run_id": run_id, "uri": self.uri})))
            return

        def create(job: Any) -> None:
            if self.paused:
                raise TrackingPaused(f"MLflow at {self.uri} failed moments ago")
            done(job, {"run_id": self._call(lambda: self.create_run(job)), "uri": self.uri})

        with ThreadPoolExecutor(max_workers=ENQUEUE_THREADS, thread_name_prefix="expctl-mlflow") as pool:
            futures = [pool.submit(create, job) for job in jobs]
            finished, _pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [future for future in finished if future.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                raise failed[0].exception()  # type: ignore[misc]

    def on_claim(self, job: Any) -> dict[str, str] | None:
        run_id, uri = self.run_ref(job)
        created = None

        def claim() -> None:
            nonlocal run_id, created
            client = self.client(uri)
            if run_id is None:  # MLflow was unreachable at enqueue: create the run now
                run_id = self.create_run(job, uri)
                created = {"run_id": run_id, "uri": uri}
            self._set_tags(client, run_id, {
                "expctl.status": "running",
                "expctl.attempt": str(job.attempt),
                "expctl.worker": job.worker_id or "",
                "expctl.gpus": job.gpus or "none",
                "host": socket.gethostname(),
            })
            client.update_run(run_id, status="RUNNING")
            client.log_text(run_id, job.config_yaml, CONFIG_ARTIFACT)

        self._call(claim)
        return created

    def child_env(self, job: Any) -> dict[str, str]:
        run_id, uri = self.run_ref(job)
        if run_id is None:
            return {}
        return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, **{
            key: os.environ.get(key, value) for key, value in FAIL_FAST_ENVIRONMENT.items()}}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        run_id, uri = self.run_ref(job)
        if run_id is None:
            return  # no run yet: SafeTracker noted the earlier failure, sync creates it
        folder = Path(log_path).parent if log_path else None
        ended = _with(job, status=status, end_reason=reason, finished_at=job.finished_at or time.time())

        def finish() -> None:
            client = self.client(uri)
            self._set_tags(client, run_id, {"expctl.status": status, "expctl.end_reason": reason})
            if folder is not None:
                self._fill_in(client, run_id, folder, always_upload=(JOB_LOG,))
            self._set_status(client, run_id, ended)

        self._call(finish)

    def on_requeue(self, job: Any, reason: str) -> None:
        run_id, uri = self.run_ref(job)
        if run_id is None:
            return

        def requeue() -> None:
            client = self.client(uri)
            self._set_tags(client, run_id, {"expctl.status": "queued", "expctl.requeue_reason": reason})
            client.update_run(run_id, status="SCHEDULED")

        self._call(requeue)

    # ------------------------------------------------------------- catch-up

    def sync(self, job: Any, folder: Path | None) -> SyncReport:
        """Make the job's run match the job: create it when missing, fill in an ended job's metrics
        and files from ``folder`` (``experiments/<job>``), and set the run's status. Idempotent."""
        return self._call(lambda: self._sync(job, folder))

    def _sync(self, job: Any, folder: Path | None) -> SyncReport:
        from mlflow.exceptions import MlflowException

        run_id, uri = self.run_ref(job)
        client = self.client(uri)
        run = None
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except MlflowException as error:
                if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
        report = SyncReport(job.id, run_id or "", uri)
        if run is not None and run.info.lifecycle_stage == "deleted":
            report.actions.append("run deleted in MLflow: left alone")
            return report
        if run is None:
            if run_id is not None:
                report.actions.append(f"run {run_id} not found at {uri}")
            report.run_id = self.create_run(job, uri)
            report.created = True
            report.actions.append("created the run")
            run = client.get_run(report.run_id)
        wanted = RUN_STATUS.get(job.status, "FAILED")
        if run.info.status != wanted or report.created:
            if job.status in ENDED_JOB_STATUSES and folder is not None:
                report.actions.extend(self._fill_in(client, report.run_id, folder, always_upload=(JOB_LOG,)))
            tags = {"expctl.status": job.status}
            if job.end_reason:
                tags["expctl.end_reason"] = job.end_reason
            if job.attempt:
                tags["expctl.attempt"] = str(job.attempt)
            self._set_tags(client, report.run_id, tags)
            self._set_status(client, report.run_id, job)
            report.actions.append(f"status {run.info.status} -> {wanted}")
        return report

    def _fill_in(self, client: Any, run_id: str, folder: Path, always_upload: tuple[str, ...] = ()) -> list[str]:
        """Log what the child left in ``folder`` and the run lacks: per-epoch metrics from
        ``metrics.jsonl``, final numbers from ``result.json``, the folder's files as artifacts."""
        from mlflow.entities import Metric

        actions: list[str] = []
        if not folder.is_dir():
            return actions
        run = client.get_run(run_id)
        timestamp = int(time.time() * 1000)
        missing: list[Metric] = []
        rows = read_metrics_lines(folder / METRICS_FILE)
        for key in sorted({key for _step, values in rows for key in values}):
            logged = {metric.step for metric in client.get_metric_history(run_id, key)} \
                if key in run.data.metrics else set()
            missing.extend(Metric(key, values[key], timestamp, step)
                           for step, values in rows if key in values and step not in logged)
        result_path = folder / RESULT_FILE
        if result_path.is_file():
            try:
                result = json.loads(result_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                result = {}
            step = max((step for step, _values in rows), default=0)
            missing.extend(Metric(key, value, timestamp, step)
                           for key, value in numeric_leaves(result if isinstance(result, dict) else {}).items()
                           if key not in run.data.metrics)
        for start in range(0, len(missing), METRIC_BATCH_LIMIT):
            client.log_batch(run_id, metrics=missing[start:start + METRIC_BATCH_LIMIT])
        if missing:
            actions.append(f"logged {len(missing)} metric value(s)")
        present = {Path(info.path).name for info in client.list_artifacts(run_id)}
        uploaded = []
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.name in always_upload or (path.name not in present and not _is_own_log(path.name)):
                client.log_artifact(run_id, str(path))
                uploaded.append(path.name)
        if uploaded:
            actions.append(f"uploaded {', '.join(uploaded)}")
        return actions


def _config_of(job: Any) -> dict[str, Any]:
    config = yaml.load(job.config_yaml, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return config if isinstance(config, dict) else {}


def _with(job: Any, **changes: Any) -> Any:

    return dataclasses.replace(job, **changes) if dataclasses.is_dataclass(job) else job


def _is_own_log(name: str) -> bool:
    """An app's own ``*.log`` (Hydra writes ``<task>.log``): ``job.log`` already holds its output."""
    return name.endswith(".log") and name != JOB_LOG


# MLflow error codes that mean "this request was wrong", not "MLflow is down".
REQUEST_ERROR_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                                 "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"})


def _is_request_error(error: BaseException) -> bool:
    """Whether MLflow refused this one request (the next one may well work)."""
    return getattr(error, "error_code", None) in REQUEST_ERROR_CODES
