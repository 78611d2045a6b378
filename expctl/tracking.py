"""Experiment-tracking hooks (MLflow lands here in issue 6); the queue never depends on them.

The daemon and ``enqueue`` call a :class:`Tracker` at each step of a job's life. Every call goes
through :class:`SafeTracker`, which logs a tracker's first failure per hook and carries on: a
tracker can never stop the queue. Select one with ``--tracking none|mlflow`` or ``EXPCTL_TRACKING``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from expctl.errors import UserError

logger = logging.getLogger("expctl.tracking")

TRACKERS = ("none", "mlflow")


class Tracker:
    """No-op tracker: the interface a tracking backend implements.

    ``job`` is an :class:`expctl.jobs.Job` (frozen dataclass of the job's row).
    """

    name = "none"

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        """A job was enqueued; may return ``{"run_id": ..., "uri": ...}`` to store on the job."""
        return None

    def on_claim(self, job: Any) -> None:
        """A daemon claimed the job (``job.attempt`` is the new attempt); the child starts next."""

    def child_env(self, job: Any) -> dict[str, str]:
        """Extra environment variables for the job's child (e.g. ``MLFLOW_RUN_ID``)."""
        return {}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        """The attempt ended: ``status`` is the job's new status (queued again when it is retried)."""

    def on_requeue(self, job: Any, reason: str) -> None:
        """The job went back to the queue without finishing (lease expired, daemon stopped)."""


class SafeTracker(Tracker):
    """Wraps a tracker: exceptions are logged once per hook and swallowed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self._reported: set[str] = set()

    def _call(self, hook: str, default: Any, *args: Any) -> Any:
        try:
            return getattr(self.inner, hook)(*args)
        except Exception as error:  # noqa: BLE001 - a tracker must never stop the queue
            if hook not in self._reported:
                self._reported.add(hook)
                logger.warning("tracker %s failed in %s (further failures of this hook are not logged): %s",
                               self.name, hook, error)
            return default

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        return self._call("on_enqueue", None, job)

    def on_claim(self, job: Any) -> None:
        self._call("on_claim", None, job)

    def child_env(self, job: Any) -> dict[str, str]:
        env = self._call("child_env", {}, job)
        return {str(key): str(value) for key, value in (env or {}).items()}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        self._call("on_finish", None, job, status, reason, log_path)

    def on_requeue(self, job: Any, reason: str) -> None:
        self._call("on_requeue", None, job, reason)


def get_tracker(name: str | None = None) -> SafeTracker:
    """The tracker called ``name`` (default ``EXPCTL_TRACKING`` or ``none``), wrapped in SafeTracker."""
    choice = (name or os.environ.get("EXPCTL_TRACKING") or "none").strip().lower()
    if choice == "none":
        return SafeTracker(Tracker())
    if choice == "mlflow":
        try:
            from expctl.mlflow_tracker import MlflowTracker  # issue 6
        except ImportError as error:
            raise UserError(f"--tracking mlflow is not available ({error}); use --tracking none") from None
        return SafeTracker(MlflowTracker())
    raise UserError(f"unknown tracker {choice!r}: choose one of {', '.join(TRACKERS)}")
