"""MLflow logging from inside a training run, active when ``MLFLOW_RUN_ID`` is set.

The queue (``expctl``) creates the run, owns its status and logs the configuration as
params; training adds what only it knows: per-epoch metrics, the final test metrics, and
its outputs as artifacts (bundle, result, learning curve, sample transcripts), and the bundle
as an MLflow Model named ``model`` (``runs:/<run_id>/model``, servable; :mod:`asr.serving.pyfunc`). Without
``MLFLOW_RUN_ID`` nothing is logged. MLflow errors are logged once and never stop training.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only, never a window: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# MLflow (and asr.serving.pyfunc, which imports it) is imported inside MlflowRunLogger only: it takes
# seconds to import, is needed only when MLFLOW_RUN_ID is set, and must see FAIL_FAST_ENVIRONMENT first.

logger = logging.getLogger("asr.training.tracking")

CURVE_METRICS = ("loss", "val_loss")
RATE_METRICS = ("val_wer", "val_cer")
# Extra MLflow names for per-epoch metrics: ``throughput`` is audio seconds trained per second.
METRIC_ALIASES = {"audio_seconds_per_second": "throughput"}
# Fail fast when MLflow is down (MLflow retries for minutes by default); no telemetry thread.
FAIL_FAST_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_DISABLE_TELEMETRY": "true",
                         "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def numeric_leaves(value: Any, prefix: str = "") -> dict[str, float]:
    """Numbers in nested dicts, keys joined by ``_`` (``{"test": {"wer": 0.3}}`` → ``{"test_wer": 0.3}``).

    Lists, strings and booleans are left out. The queue (``expctl``) names the numbers of a
    ``result.json`` the same way when it fills in a run, so both agree.
    """
    if isinstance(value, dict):
        found: dict[str, float] = {}
        for key, item in value.items():
            found.update(numeric_leaves(item, f"{prefix}{key}_"))
        return found
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix.rstrip("_"): float(value)}
    return {}


def plot_learning_curve(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and validation WER/CER per epoch, as a PNG."""
    epochs = [row["epoch"] for row in history]
    colors = iter(f"C{index}" for index in range(10))  # one color per metric across both axes
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=110)
    for key in CURVE_METRICS:
        if any(row.get(key) is not None for row in history):
            loss_axis.plot(epochs, [row.get(key) for row in history], marker="o", label=key, color=next(colors))
    loss_axis.set_xlabel("epoch")
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.set_ylabel("CTC loss")
    rate_axis = loss_axis.twinx()
    for key, style in zip(RATE_METRICS, ("--", ":")):
        if any(row.get(key) is not None for row in history):
            rate_axis.plot(epochs, [row.get(key) for row in history], style, marker="s", label=key,
                           color=next(colors))
    rate_axis.set_ylabel("error rate")
    rate_axis.set_ylim(bottom=0)
    lines = loss_axis.get_legend_handles_labels()[0] + rate_axis.get_legend_handles_labels()[0]
    labels = loss_axis.get_legend_handles_labels()[1] + rate_axis.get_legend_handles_labels()[1]
    loss_axis.legend(lines, labels, loc="upper right")
    loss_axis.set_title("learning curve")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


class MlflowRunLogger:
    """Training callback (``on_epoch_end``, ``on_train_end``) that logs into an existing MLflow run."""

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        for key, value in FAIL_FAST_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.failed = False

    @classmethod
    def from_environment(cls) -> "MlflowRunLogger | None":
        run_id = os.environ.get("MLFLOW_RUN_ID")
        if not run_id:
            return None
        try:
            return cls(run_id, os.environ.get("MLFLOW_TRACKING_URI"))
        except Exception as error:  # noqa: BLE001 - tracking must never stop training
            logger.warning("MLflow logging disabled: %s", error)
            return None

    def _safely(self, what: str, action: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001
            self.failed = True  # one message, then quiet: the files in exp_dir keep everything
            logger.warning("MLflow %s failed, no more MLflow logging in this run: %s", what, error)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(key, float(value), now, step) for key, value in metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if rows:
            self._safely("metrics", lambda: self.client.log_batch(self.run_id, metrics=rows))

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """Log one epoch's metrics (as in ``metrics.jsonl``, plus ``throughput``) at step ``epoch``."""
        values = {key: value for key, value in metrics.items() if key != "epoch"}
        values.update({alias: metrics[key] for key, alias in METRIC_ALIASES.items() if key in metrics})
        self.log_metrics(values, step=epoch)

    def on_train_end(self, result: dict) -> None:
        """Nothing here: the outputs exist only after testing and saving (see :meth:`log_outputs`)."""

    def log_outputs(self, exp_dir: Path, result: dict[str, Any]) -> None:
        """Final metrics and the run's files: bundle, result, metrics, learning curve, transcripts.

        The learning curve is written to ``exp_dir`` first, so it is there even when MLflow is
        not (the queue uploads what a run lacks when the job ends). Never raises.
        """
        try:
            self._log_outputs(exp_dir, result)
        except Exception as error:  # noqa: BLE001 - the model is trained and saved: never fail here
            logger.warning("logging the outputs to MLflow failed: %s", error)

    def _log_outputs(self, exp_dir: Path, result: dict[str, Any]) -> None:
        self.log_metrics(numeric_leaves(result), step=int(result.get("epochs_run") or 0))
        curve = save_learning_curve(exp_dir)
        files = [curve] if curve is not None else []
        files.extend(exp_dir / name for name in ("model.bin", "result.json", "metrics.jsonl"))
        samples = result.get("sample_transcripts") or []
        if samples:
            table = {key: [sample.get(key) for sample in samples] for key in ("audio_filepath", "reference",
                                                                              "hypothesis")}
            self._safely("transcripts", lambda: self.client.log_table(self.run_id, table, "sample_transcripts.json"))
        for path in files:
            if path.is_file():
                self._safely(path.name, lambda path=path: self.client.log_artifact(self.run_id, str(path)))
        if (exp_dir / "model.bin").is_file():
            example = samples[0].get("audio_filepath") if samples else None
            self._safely("model", lambda: self.log_model(exp_dir / "model.bin", example))

    def log_model(self, bundle: Path, example_audio: str | Path | None = None) -> Any:
        """The bundle as the MLflow Model ``model`` of this run (``runs:/<run_id>/model``): see :mod:`asr.serving.pyfunc`."""
        from asr.serving.pyfunc import log_model

        return log_model(bundle, self.run_id, example_audio=example_audio, tracking_uri=self.client.tracking_uri)


def save_learning_curve(exp_dir: Path) -> Path | None:
    """``exp_dir/learning_curve.png`` from ``exp_dir/metrics.jsonl`` (None without epochs). Needs no MLflow."""
    history = read_history(Path(exp_dir) / "metrics.jsonl")
    return plot_learning_curve(history, Path(exp_dir) / "learning_curve.png") if history else None


def read_history(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of ``metrics.jsonl`` (unreadable lines skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "epoch" in row:
                rows.append(row)
    return rows
