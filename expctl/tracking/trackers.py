"""Which tracker a command uses: ``--tracking none|mlflow`` or ``EXPCTL_TRACKING`` (default ``mlflow``)."""

from __future__ import annotations

import importlib.util
import logging
import os

from expctl.errors import UserError
from expctl.tracking.hooks import SafeTracker, Tracker
from expctl.tracking.mlflow_runs import MlflowTracker

logger = logging.getLogger("expctl.tracking")

TRACKERS = ("none", "mlflow")
DEFAULT_TRACKER = "mlflow"


def get_tracker(name: str | None = None) -> SafeTracker:
    """The tracker called ``name`` (default ``EXPCTL_TRACKING``, else MLflow), wrapped in SafeTracker.

    Cheap: MLflow is imported when the tracker first talks to it. Without the ``mlflow`` package
    the default falls back to ``none`` (with a warning); asking for ``mlflow`` explicitly fails.
    """
    explicit = name or os.environ.get("EXPCTL_TRACKING")
    choice = (explicit or DEFAULT_TRACKER).strip().lower()
    if choice == "none":
        return SafeTracker(Tracker(), timeout_s=0)  # nothing to wait for: no helper threads
    if choice == "mlflow":
        if importlib.util.find_spec("mlflow") is None:
            if explicit:
                raise UserError("--tracking mlflow needs the mlflow package (pip install mlflow); "
                                "use --tracking none")
            logger.warning("mlflow is not installed: experiments are not tracked (--tracking none)")
            return SafeTracker(Tracker())
        return SafeTracker(MlflowTracker())
    raise UserError(f"unknown tracker {choice!r}: choose one of {', '.join(TRACKERS)}")
