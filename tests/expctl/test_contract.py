"""The daemon honours the app <-> queue contract (docs/contract.md; the training app's side is
tests/test_app_contract.py), with a test app that leaves what a training app does: the environment
it sets, the files it writes, what each exit code does, the metric names the tracker reads from the
folder into the job's MLflow run, and that only trusted apps run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expctl.store import jobs
from expctl.tracking.mlflow_runs import MlflowTracker
from expctl_helpers import Env, contract_table

pytestmark = pytest.mark.timeout(600)

FAST = ("--app", "expctl_fastapp")


def queued_id(result) -> int:  # noqa: ANN001
    return int(result.stdout.split("queued job ")[1].split(":")[0])


def test_the_daemon_honours_the_contract(world: Env, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    world.vars.update(EXPCTL_TRACKING="mlflow", MLFLOW_TRACKING_URI=uri, EXPCTL_TRACKER_TIMEOUT="120",
                      MLFLOW_DISABLE_TELEMETRY="true")
    good = queued_id(world.run("enqueue", *FAST, "config", "outputs=1", "--max-attempts", "3", check=True))
    bad = queued_id(world.run("enqueue", *FAST, "config", "exit_code=2", "--max-attempts", "3", check=True))
    flaky = queued_id(world.run("enqueue", *FAST, "config", "exit_code=3", "--max-attempts", "2", check=True))
    other = queued_id(world.run("enqueue", "--app", "expctl_testapp", "config", "tag=other", check=True))
    daemon = world.daemon("--gpus", "none", "--until-empty", "--backoff", "0", "--apps", "expctl_fastapp")
    assert daemon.wait(300) == 0, world.daemon_logs()[-4000:]
    job = jobs.get_job(world.engine, good)
    assert job.status == "succeeded", world.daemon_logs()[-4000:]
    folder = world.root / "experiments" / jobs.job_folder(job)

    # The environment: the documented variables with the job's values; the rest is the daemon's own.
    given = json.loads((folder / "environment.json").read_text())
    expected = {"EXPCTL_JOB_ID": str(job.id), "EXPCTL_JOB_UUID": job.uuid, "EXPCTL_ATTEMPT": "1",
                "EXPCTL_WORKER_ID": job.worker_id, "CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": job.tracking_run_id}
    documented = [row[0] for row in contract_table("Environment the daemon sets")]
    assert sorted(documented) == sorted(expected)
    assert {name: given.get(name) for name in documented} == expected
    assert all(world.vars.get(name) == value for name, value in given.items() if name not in expected)

    # The files the daemon writes in the job folder.
    for name, writer, _what in contract_table("Files in the job folder"):
        if writer == "daemon":
            assert (folder / name).is_file(), name
    assert (folder / "config.yaml").read_text() == job.config_yaml
    assert json.loads((folder / "exit.json").read_text())["returncode"] == 0
    assert "=== expctl" in (folder / "job.log").read_text()

    # Exit codes: 0 done; 2 failed at once whatever the attempts left; any other retried while attempts remain.
    assert [row[0] for row in contract_table("Exit codes")] == ["0", "2", "any other"]
    refused, retried = jobs.get_job(world.engine, bad), jobs.get_job(world.engine, flaky)
    assert (refused.status, refused.attempt) == ("failed", 1) and "exit code 2" in refused.end_reason
    assert (retried.status, retried.attempt) == ("failed", 2) and "exit code 3" in retried.end_reason

    # Metric names: what the app left in its folder is in the job's run under the documented names.
    client = MlflowTracker(uri).client()
    run = client.get_run(job.tracking_run_id)
    assert run.info.status == "FINISHED"
    for name, where, _what in contract_table("Metric names"):
        if where == "metrics.jsonl":
            assert [metric.step for metric in client.get_metric_history(run.info.run_id, name)] == [1, 2], name
        else:
            assert name in run.data.metrics, name

    # Only trusted apps run: the other app's job waits, saying why.
    waiting = jobs.get_job(world.engine, other)
    assert waiting.status == "queued" and "not trusted" in waiting.end_reason
