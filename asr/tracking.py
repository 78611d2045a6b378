"""MLflow logging from inside a training run, active when ``MLFLOW_RUN_ID`` is set.

The queue (``expctl``) creates the run, owns its status and logs the configuration as
params; training adds what only it knows: per-epoch metrics, the final test metrics, and
its outputs as artifacts (bundle, result, learning curve, sample transcripts). Without
``MLFLOW_RUN_ID`` nothing is logged. MLflow errors are logged once and never stop training.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger("asr.tracking")

CURVE_METRICS = ("loss", "val_loss")
RATE_METRICS = ("val_wer", "val_cer")


def plot_learning_curve(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and validation WER/CER per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=110)
    for key in CURVE_METRICS:
        if any(row.get(key) is not None for row in history):
            loss_axis.plot(epochs, [row.get(key) for row in history], marker="o", label=key)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("CTC loss")
    rate_axis = loss_axis.twinx()
    for key, style in zip(RATE_METRICS, ("--", ":")):
        if any(row.get(key) is not None for row in history):
            rate_axis.plot(epochs, [row.get(key) for row in history], style, marker="s", label=key)
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
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
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

        import time

        now = int(time.time() * 1000)
        rows = [Metric(key, float(value), now, step) for key, value in metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
        self._safely("metrics", lambda: self.client.log_batch(self.run_id, metrics=rows))

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.log_metrics({key: value for key, value in metrics.items() if key != "epoch"}, step=epoch)

    def on_train_end(self, result: dict) -> None:
        """Nothing here: the outputs exist only after testing and saving (see :meth:`log_outputs`)."""

    def log_outputs(self, exp_dir: Path, result: dict[str, Any]) -> None:
        """Final metrics and the run's files: bundle, result, metrics, learning curve, transcripts."""
        final = {f"test_{key}": value for key, value in (result.get("test") or {}).items()}
        for key in ("best_val_loss", "epochs_run", "total_seconds"):
            if result.get(key) is not None:
                final[key] = result[key]
        self.log_metrics(final, step=int(result.get("epochs_run") or 0))
        history = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()
                   if line.strip()] if (exp_dir / "metrics.jsonl").is_file() else []
        if history:
            self._safely("learning curve", lambda: self.client.log_artifact(
                self.run_id, str(plot_learning_curve(history, exp_dir / "learning_curve.png"))))
        samples = result.get("sample_transcripts") or []
        if samples:
            table = {key: [sample.get(key) for sample in samples] for key in ("audio_filepath", "reference",
                                                                              "hypothesis")}
            self._safely("transcripts", lambda: self.client.log_table(self.run_id, table, "sample_transcripts.json"))
        for name in ("model.bin", "result.json", "metrics.jsonl"):
            if (exp_dir / name).is_file():
                self._safely(name, lambda name=name: self.client.log_artifact(self.run_id, str(exp_dir / name)))
