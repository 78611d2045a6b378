"""MLflow tracking of queued jobs: one MLflow run per job, visible from the moment it is enqueued.

Life of a run: ``enqueue`` creates it in status SCHEDULED with the job's tags and its frozen
config as params; a claim makes it RUNNING and hands ``MLFLOW_RUN_ID`` to the child, which
logs its own metrics and artifacts into the same run; the end of the job uploads ``job.log``
and sets FINISHED, FAILED or KILLED. A job that goes back to the queue (retry, dead daemon,
stopped daemon) is SCHEDULED again, so no run stays RUNNING after its job stopped, and the
next attempt continues the same run.

When MLflow cannot be reached the queue goes on (``SafeTracker`` logs the error once) and the
tracker stays quiet for ``RETRY_AFTER_S``; ``expctl tracking sync`` later creates the missing
runs from what the jobs left in the database and in their folders.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("expctl.tracking")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RETRY_AFTER_S = 60.0
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param's value
BATCH_LIMIT = 100  # MLflow's limit on params per log_batch

END_STATUSES = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or the local SQLite store made absolute so children agree on it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """``{"model": {"parameters": {"rnn_sizes": [1]}}}`` → ``{"model.parameters.rnn_sizes": "[1]"}``."""
    if isinstance(config, dict):
        flat: dict[str, str] = {}
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    value = json.dumps(config) if isinstance(config, list) else str(config)
    return {prefix.rstrip("."): value[:PARAM_VALUE_LIMIT]}


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


class MlflowTracker:
    """The ``Tracker`` of :mod:`expctl.tracking` backed by an MLflow tracking server or store."""

    name = "mlflow"

    def __init__(self, uri: str | None = None) -> None:
        # Fail fast instead of MLflow's default minutes of HTTP retries: the queue must not wait.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self._quiet_until = 0.0
        self._run_ids: dict[int, str] = {}  # runs created after enqueue (MLflow was down then)

    # ------------------------------------------------------------- helpers

    def _call(self, action: Any) -> Any:
        """Run an MLflow call unless MLflow failed recently; a failure starts the quiet period."""
        if time.monotonic() < self._quiet_until:
            raise ConnectionError(f"MLflow at {self.uri} failed recently; retrying after a pause")
        try:
            return action()
        except Exception:
            self._quiet_until = time.monotonic() + RETRY_AFTER_S
            raise

    def run_id(self, job: Any) -> str | None:
        return job.tracking_run_id or self._run_ids.get(job.id)

    def _experiment_id(self, config: dict[str, Any]) -> str:
        name = str((config.get("experiment") or {}).get("name") or "expctl")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name)

    def create_run(self, job: Any) -> str:
        """Create the job's run (SCHEDULED) with tags, the flattened config as params, the config file."""
        from mlflow.entities import Param, RunTag

        config = yaml.safe_load(job.config_yaml) or {}
        tags = {
            "expctl.job_id": str(job.id),
            "expctl.app": job.app,
            "expctl.base": job.base,
            "expctl.overrides": " ".join(job.override_list)[:PARAM_VALUE_LIMIT],
            "expctl.sweep_id": "" if job.sweep_id is None else str(job.sweep_id),
            "expctl.priority": str(job.priority),
            "mlflow.source.name": f"python -m {job.app}",
            "mlflow.user": os.environ.get("USER", "expctl"),
        }
        commit = _git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit

        def create() -> str:
            run = self.client.create_run(self._experiment_id(config), tags=tags, run_name=job.name)
            run_id = run.info.run_id
            params = [Param(key, value) for key, value in flatten(config).items()]
            for start in range(0, len(params), BATCH_LIMIT):
                self.client.log_batch(run_id, params=params[start:start + BATCH_LIMIT])
            self.client.log_text(run_id, job.config_yaml, "config.yaml")
            self.client.update_run(run_id, status="SCHEDULED")
            return run_id

        return self._call(create)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(lambda: self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))

    # --------------------------------------------------------------- hooks

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        return {"run_id": self.create_run(job), "uri": self.uri}

    def on_claim(self, job: Any) -> dict[str, str] | None:
        run_id = self.run_id(job)
        created = None
        if run_id is None:  # MLflow was unreachable at enqueue: create the run now
            run_id = self.create_run(job)
            self._run_ids[job.id] = run_id
            created = {"run_id": run_id, "uri": self.uri}
        self._set_tags(run_id, {
            "expctl.attempt": str(job.attempt),
            "expctl.worker": job.worker_id or "",
            "expctl.gpus": job.gpus or "none",
            "host": socket.gethostname(),
        })
        self._call(lambda: self.client.update_run(run_id, status="RUNNING"))
        return created

    def child_env(self, job: Any) -> dict[str, str]:
        run_id = self.run_id(job)
        if run_id is None:
            return {}
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_RUN_ID": run_id}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        run_id = self.run_id(job)
        if run_id is None:
            return
        self._set_tags(run_id, {"expctl.status": status, "expctl.end_reason": reason})
        if log_path and Path(log_path).is_file():
            self._call(lambda: self.client.log_artifact(run_id, log_path))
        self._call(lambda: self.client.set_terminated(run_id, END_STATUSES.get(status, "FAILED")))

    def on_requeue(self, job: Any, reason: str) -> None:
        run_id = self.run_id(job)
        if run_id is None:
            return
        self._set_tags(run_id, {"expctl.status": "queued", "expctl.requeue_reason": reason})
        self._call(lambda: self.client.update_run(run_id, status="SCHEDULED"))

    def web_address(self, job: Any) -> str | None:
        """The run's page in the MLflow UI, when the tracking URI is a server's address."""
        run_id = self.run_id(job)
        if run_id is None or not self.uri.startswith("http"):
            return None
        run = self.client.get_run(run_id)
        return f"{self.uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
