"""Experiment-tracking hooks (MLflow by default); the queue never depends on them.

The daemon and ``enqueue`` call a :class:`Tracker` at each step of a job's life. Every call goes
through :class:`SafeTracker`, which logs a tracker's first failure per hook and carries on: a
tracker can never stop the queue. It also remembers the jobs whose tracking failed, so that the
daemon (or ``expctl tracking sync``) can bring their runs up to date later. Select a tracker
with ``--tracking none|mlflow`` or ``EXPCTL_TRACKING`` (default ``mlflow``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from expctl.errors import UserError

logger = logging.getLogger("expctl.tracking")

TRACKERS = ("none", "mlflow")
DEFAULT_TRACKER = "mlflow"


class TrackingPaused(ConnectionError):
    """The tracker failed moments ago and does not try again yet (already reported: not logged)."""


class Tracker:
    """No-op tracker: the interface a tracking backend implements.

    ``job`` is an :class:`expctl.jobs.Job` (frozen dataclass of the job's row).
    """

    name = "none"

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        """A job was enqueued; may return ``{"run_id": ..., "uri": ...}`` to store on the job."""
        return None

    def on_claim(self, job: Any) -> dict[str, str] | None:
        """A daemon claimed the job (``job.attempt`` is the new attempt); the child starts next.
        May return ``{"run_id": ..., "uri": ...}`` when it created the job's run."""
        return None

    def child_env(self, job: Any) -> dict[str, str]:
        """Extra environment variables for the job's child (e.g. ``MLFLOW_RUN_ID``)."""
        return {}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        """The job ended: ``status`` is succeeded, failed or cancelled."""

    def on_requeue(self, job: Any, reason: str) -> None:
        """The job went back to the queue without finishing (retry, lease expired, daemon stopped)."""

    def sync(self, job: Any, folder: Path | None) -> Any:
        """Bring the job's run up to date with the job (``folder``: its ``experiments/<id>``).
        Returns a report with ``run_id``, ``uri``, ``created`` and ``actions``, or None."""
        return None


class SafeTracker(Tracker):
    """Wraps a tracker: exceptions are logged once per hook and swallowed.

    ``unsynced`` holds the ids of jobs whose tracking failed; a successful :meth:`sync` clears one.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.unsynced: set[int] = set()
        self._reported: set[str] = set()

    @property
    def paused(self) -> bool:
        """Whether the tracker failed moments ago and would refuse a call now."""
        return bool(getattr(self.inner, "paused", False))

    def _call(self, hook: str, default: Any, *args: Any) -> Any:
        try:
            return getattr(self.inner, hook)(*args)
        except Exception as error:  # noqa: BLE001 - a tracker must never stop the queue
            job_id = getattr(args[0], "id", None) if args else None
            if isinstance(job_id, int):
                self.unsynced.add(job_id)
            if not isinstance(error, TrackingPaused) and hook not in self._reported:
                self._reported.add(hook)
                logger.warning("tracker %s failed in %s (further failures of this hook are not logged): %s",
                               self.name, hook, error)
            return default

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        return self._call("on_enqueue", None, job)

    def on_claim(self, job: Any) -> dict[str, str] | None:
        return self._call("on_claim", None, job)

    def child_env(self, job: Any) -> dict[str, str]:
        env = self._call("child_env", {}, job)
        return {str(key): str(value) for key, value in (env or {}).items()}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        self._call("on_finish", None, job, status, reason, log_path)

    def on_requeue(self, job: Any, reason: str) -> None:
        self._call("on_requeue", None, job, reason)

    def sync(self, job: Any, folder: Path | None) -> Any:
        report = self._call("sync", None, job, folder)
        if report is not None:
            self.unsynced.discard(job.id)
        return report


def get_tracker(name: str | None = None) -> SafeTracker:
    """The tracker called ``name`` (default ``EXPCTL_TRACKING``, else MLflow), wrapped in SafeTracker.

    Cheap: MLflow is imported when the tracker first talks to it. Without the ``mlflow`` package
    the default falls back to ``none`` (with a warning); asking for ``mlflow`` explicitly fails.
    """
    explicit = name or os.environ.get("EXPCTL_TRACKING")
    choice = (explicit or DEFAULT_TRACKER).strip().lower()
    if choice == "none":
        return SafeTracker(Tracker())
    if choice == "mlflow":
        if importlib.util.find_spec("mlflow") is None:
            if explicit:
                raise UserError("--tracking mlflow needs the mlflow package (pip install mlflow); "
                                "use --tracking none")
            logger.warning("mlflow is not installed: experiments are not tracked (--tracking none)")
            return SafeTracker(Tracker())
        from expctl.mlflow_tracker import MlflowTracker

        return SafeTracker(MlflowTracker())
    raise UserError(f"unknown tracker {choice!r}: choose one of {', '.join(TRACKERS)}")
