"""``python -m asr.train`` honours the app <-> queue contract (docs/contract.md; expctl's side is
tests/expctl/test_contract.py): run as the daemon runs it, on a tiny model and a tiny synthetic
corpus, it reads the environment the daemon sets, writes the job folder's files, logs the metric
names into the queue's MLflow run (and leaves the run to the queue), and exits 2 on a bad config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from asr.data.synth import synthesize_corpus
from expctl.tracking.mlflow_data import numeric_leaves, read_metrics_lines
from tests.expctl.expctl_helpers import contract_table
from tests.tiny_model import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=24, seed=3, quiet=True)


def run_as_the_daemon(workdir: Path, overrides: list[str], environment: dict[str, str]) -> tuple[Path, subprocess.CompletedProcess]:
    """Compose the spec with the app, write ``config.yaml`` into a job folder and run the app from the work
    folder as the daemon does (docs/contract.md, "How a job runs")."""
    composed = subprocess.run([sys.executable, "-m", "asr.train", "--cfg", "job", *overrides], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert composed.returncode == 0, composed.stderr[-3000:]
    name = f"{environment['EXPCTL_JOB_ID']}-{environment['EXPCTL_JOB_UUID']}"
    folder = workdir / "experiments" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(composed.stdout)
    run = subprocess.run([sys.executable, "-m", "asr.train", "--config-path", str(folder), "--config-name", "config",
                          f"hydra.run.dir=experiments/{name}"], cwd=workdir, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
                                           **environment})
    return folder, run


def test_the_training_app_honours_the_contract(corpus: dict, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("contract", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id  # RUNNING, as after a claim
    values = {"EXPCTL_JOB_ID": "7", "EXPCTL_JOB_UUID": uuid.uuid4().hex, "EXPCTL_ATTEMPT": "1",
              "EXPCTL_WORKER_ID": "contract-test", "CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
              "MLFLOW_TRACKING_URI": store, "MLFLOW_RUN_ID": run_id}
    documented = contract_table("Environment the daemon sets")
    assert sorted(row[0] for row in documented) == sorted(values)
    data = [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}",
            f"data.test_manifest={corpus['test']}"]
    folder, run = run_as_the_daemon(tmp_path, [*tiny_overrides(), *data, "trainer.epochs=2"], values)
    assert run.returncode == 0, run.stderr[-3000:]

    # The files the app writes, in the job folder (its default exp_dir is Hydra's run dir).
    for name, writer, _what in contract_table("Files in the job folder"):
        if writer == "app":
            assert (folder / name).is_file(), name
    fingerprint = json.loads((folder / "checkpoints" / "fingerprint.json").read_text())
    assert values["EXPCTL_JOB_UUID"] in json.dumps(fingerprint)  # read from EXPCTL_JOB_UUID

    # The metric names, read the way the tracker reads the folder, and as the app logged them into the run.
    epochs = read_metrics_lines(folder / "metrics.jsonl")
    final = numeric_leaves(json.loads((folder / "result.json").read_text()))
    logged = client.get_run(run_id)
    assert [step for step, _values in epochs] == [1, 2]
    for name, where, _what in contract_table("Metric names"):
        if where == "metrics.jsonl":
            assert all(name in row for _step, row in epochs), name
            assert [metric.step for metric in client.get_metric_history(run_id, name)] == [1, 2], name
        else:
            assert name in final and name in logged.data.metrics, name
    assert logged.info.status == "RUNNING"  # the queue ends the run, not the app

    # Exit codes: a bad configuration or data is 2 (never retried), with one error line.
    assert [row[0] for row in contract_table("Exit codes")][:2] == ["0", "2"]
    values.update(EXPCTL_JOB_UUID=uuid.uuid4().hex)
    _folder, bad = run_as_the_daemon(tmp_path, [*tiny_overrides(), *data[1:], "trainer.epochs=1",
                                                f"data.train_manifest={tmp_path / 'missing.jsonl'}"], values)
    assert bad.returncode == 2, bad.stderr[-3000:]
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "manifest not found" in errors[0] and "Traceback" not in bad.stderr
