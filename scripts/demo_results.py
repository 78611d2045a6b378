"""Print the demo's runs from MLflow: status, test WER and CER, training time."""

from __future__ import annotations

import argparse
import os

from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="demo")
    arguments = parser.parse_args()
    client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    experiment = client.get_experiment_by_name(arguments.experiment)
    if experiment is None:
        raise SystemExit(f"error: no MLflow experiment named {arguments.experiment!r}")
    table = Table(title=f"MLflow experiment {arguments.experiment!r}")
    for column in ("job", "init_from", "learning_rate", "status", "epochs", "test WER", "test CER", "train minutes"):
        table.add_column(column)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    for run in runs:
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        minutes = metrics["total_seconds"] / 60 if "total_seconds" in metrics else None  # training, not queueing
        table.add_row(
            tags.get("expctl.job_id", "?"),
            escape(params.get("trainer.init_from", "-")), params.get("optimizer.learning_rate", "?"), run.info.status,
            str(int(metrics["epochs_run"])) if "epochs_run" in metrics else "-",
            f"{metrics['test_wer']:.3f}" if "test_wer" in metrics else "-",
            f"{metrics['test_cer']:.3f}" if "test_cer" in metrics else "-",
            f"{minutes:.1f}" if minutes is not None else "-",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
