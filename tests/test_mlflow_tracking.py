"""MLflow tracking of queued jobs, end to end: a real ``mlflow server`` on localhost, real daemons
(``expctl consume`` subprocesses), real jobs; everything checked through MLflow's REST API.

* a tiny ``asr.train`` job that succeeds, one that fails (missing manifest, exit 2), one cancelled
  while it runs: runs SCHEDULED right after enqueue, RUNNING while claimed, then FINISHED /
  FAILED / KILLED, with params, per-epoch metrics and artifacts;
* MLflow unreachable: the job still runs, the error is logged once, ``expctl tracking sync``
  creates its run later from the job's row and folder;
* a daemon killed with ``kill -9``: the daemon that finds its expired lease ends the run; a user's
  retry schedules the same run again, cancelling the queued job ends it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
APPS = REPO / "tests" / "apps"
MLFLOW = Path(sys.executable).with_name("mlflow")
TINY = ["model.parameters.rnn_type=gru", "model.parameters.rnn_sizes=[16]", "model.parameters.conv_filters=[4]",
        "model.parameters.conv_kernels=[[11,21]]", "model.parameters.conv_strides=[[2,2]]",
        "trainer.batch_size=8", "trainer.val_decode_limit=4", "trainer.epochs=2", "optimizer.schedule=constant"]
EPOCH_METRICS = ("loss", "val_loss", "val_wer", "val_cer", "learning_rate", "throughput")
TESTAPP = ("--app", "expctl_testapp")


def free_port() -> int:
    """A localhost port nobody listens on (right now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Server:
    """A running ``mlflow server`` and a small client of its REST API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/{path}?{query}", timeout=30) as answer:
            return json.load(answer)

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def run(self, run_id: str) -> dict:
        """``{"info", "params", "tags", "metrics"}`` of a run, the lists turned into dicts."""
        run = self.get("runs/get", run_id=run_id)["run"]
        data = run.get("data", {})
        return {"info": run["info"],
                "params": {item["key"]: item["value"] for item in data.get("params", [])},
                "tags": {item["key"]: item["value"] for item in data.get("tags", [])},
                "metrics": {item["key"]: item["value"] for item in data.get("metrics", [])}}

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        answer = self.get("metrics/get-history", run_id=run_id, metric_key=key)
        return sorted((int(metric.get("step", 0)), metric["value"]) for metric in answer.get("metrics", []))

    def artifacts(self, run_id: str) -> set[str]:
        return {item["path"] for item in self.get("artifacts/list", run_id=run_id).get("files", [])}

    def artifact_text(self, run_id: str, path: str) -> str:
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        with urllib.request.urlopen(f"{self.url}/get-artifact?{query}", timeout=30) as answer:
            return answer.read().decode("utf-8", errors="replace")

    def runs_of(self, experiment_name: str, status: str | None = None) -> list[dict]:
        experiment = self.get("experiments/get-by-name", experiment_name=experiment_name)["experiment"]
        body: dict[str, Any] = {"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
        if status:
            body["filter"] = f"attributes.status = '{status}'"
        return self.post("runs/search", body).get("runs", [])


def stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM a process group we started, SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``mlflow server`` with its own SQLite store and artifact folder, on a free localhost port."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=folder, env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
                                            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                                   start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 240, "mlflow server /health", interval=0.5)
        yield server
    finally:
        stop_group(process)


class World:
    """An isolated expctl world (queue database, locks, experiments/) tracking to ``tracking_uri``."""

    def __init__(self, root: Path, tracking_uri: str) -> None:
        self.root = root
        self.db_url = f"sqlite:///{root / 'queue' / 'expctl.db'}"
        self.env = dict(os.environ)
        for name in ("CUDA_VISIBLE_DEVICES", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            self.env.pop(name, None)
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(REPO), str(APPS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            EXPCTL_DB_URL=self.db_url, EXPCTL_LOCK_DIR=str(root / "locks"), EXPCTL_WORKDIR=str(root),
            EXPCTL_TRACKING="mlflow", MLFLOW_TRACKING_URI=tracking_uri, TF_CPP_MIN_LOG_LEVEL="3",
            HYDRA_FULL_ERROR="0", MLFLOW_DISABLE_TELEMETRY="true",
        )
        self._engine = None

    def expctl(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "expctl", *args], cwd=self.root, env={**self.env, **env},
                                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return result

    def check(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        result = self.expctl(*args, timeout=timeout, **env)
        assert result.returncode == 0, f"expctl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result

    def enqueue(self, *args: str) -> int:
        """Queue one job; its id."""
        output = self.check("enqueue", *args).stdout
        return int(output.split("queued job ")[1].split(":")[0])

    def daemon(self, *args: str, **env: str) -> subprocess.Popen:
        """Start ``expctl consume --gpus none ARGS`` (its output goes to a file: ``process.log``)."""
        log = open(self.root / f"daemon-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115 - closed by finish()
        process = subprocess.Popen([sys.executable, "-m", "expctl", "consume", "--gpus", "none",
                                    "--apps", "asr.train,expctl_testapp", *args],
                                   cwd=self.root, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        process.log = log  # type: ignore[attr-defined]
        return process

    @staticmethod
    def finish(daemon: subprocess.Popen, timeout: float) -> str:
        """Wait for a daemon to exit by itself; its output."""
        try:
            daemon.wait(timeout=timeout)
        finally:
            stop_group(daemon)
        log = daemon.log  # type: ignore[attr-defined]
        log.seek(0)
        text = log.read()
        log.close()
        assert daemon.returncode == 0, text[-4000:]
        return text

    def job(self, job_id: int) -> Any:
        from expctl.store import db, jobs

        if self._engine is None:
            self._engine = db.create_engine(self.db_url)
        return jobs.get_job(self._engine, job_id)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@pytest.fixture
def world_factory(tmp_path: Path) -> Iterator[Callable[[str], World]]:
    made: list[World] = []

    def make(tracking_uri: str) -> World:
        made.append(World(tmp_path, tracking_uri))
        return made[-1]

    yield make
    for world in made:
        world.close()


@pytest.mark.slow
def test_jobs_are_runs_from_enqueue_to_their_end(mlflow_server: Server, world_factory, tmp_path: Path) -> None:
    from asr.data.synth import synthesize_corpus

    corpus = synthesize_corpus(tmp_path / "corpus", count=24, seed=3, quiet=True)
    data = [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}",
            f"data.test_manifest={corpus['test']}"]
    world = world_factory(mlflow_server.url)
    experiment = "tracking-e2e"
    sleeper = world.enqueue(*TESTAPP, "config", "tag=sleeper", "sleep=300", f"+experiment.name={experiment}",
                            "--name", "sleeper", "--priority", "10")
    good = world.enqueue("config", *TINY, *data, f"experiment.name={experiment}", "--name", "good")
    bad = world.enqueue("config", *TINY, *data[1:], f"data.train_manifest={tmp_path / 'missing.jsonl'}",
                        f"experiment.name={experiment}", "--name", "bad")
    run_ids = {job_id: world.job(job_id).tracking_run_id for job_id in (sleeper, good, bad)}
    assert all(run_ids.values()), run_ids

    # Visible before they run: SCHEDULED, with the job's name, tags and config params (config.yaml comes
    # when a job starts: see the end of the run below).
    for job_id, run_id in run_ids.items():
        run = mlflow_server.run(run_id)
        assert run["info"]["status"] == "SCHEDULED"
        assert run["tags"]["expctl.job_id"] == str(job_id) and run["tags"]["mlflow.runName"] == world.job(job_id).name
        assert "config.yaml" not in mlflow_server.artifacts(run_id)
    good_run = mlflow_server.run(run_ids[good])
    assert good_run["params"]["model.parameters.rnn_sizes"] == "[16]"
    assert good_run["params"]["trainer.epochs"] == "2" and good_run["params"]["experiment.name"] == experiment
    assert good_run["tags"]["expctl.spec"].startswith("config|model.parameters.rnn_type=gru|")
    assert good_run["tags"]["expctl.app"] == "asr.train"

    daemon = world.daemon("--until-empty", "--grace", "5")
    wait_for(lambda: world.job(sleeper).status == "running", 120, "the sleeper to start")
    wait_for(lambda: mlflow_server.run(run_ids[sleeper])["info"]["status"] == "RUNNING", 60, "its run to be RUNNING")
    assert "cancel requested" in world.check("cancel", str(sleeper)).stdout
    output = world.finish(daemon, timeout=900)

    assert [world.job(job_id).status for job_id in (sleeper, good, bad)] == ["cancelled", "succeeded", "failed"], output
    statuses = {job_id: mlflow_server.run(run_id)["info"]["status"] for job_id, run_id in run_ids.items()}
    assert statuses == {sleeper: "KILLED", good: "FINISHED", bad: "FAILED"}
    assert not mlflow_server.runs_of(experiment, status="RUNNING")

    # The successful training run: per-epoch metrics, final metrics, its outputs.
    run = mlflow_server.run(run_ids[good])
    assert run["tags"]["expctl.attempt"] == "1" and run["tags"]["expctl.gpus"] == "none" and run["tags"]["host"]
    for key in EPOCH_METRICS:
        assert [step for step, _value in mlflow_server.history(run_ids[good], key)] == [1, 2], key
    assert 0 <= run["metrics"]["test_wer"] and 0 <= run["metrics"]["test_cer"] and run["metrics"]["epochs_run"] == 2
    assert {"config.yaml", "job.log", "model.bin", "result.json", "metrics.jsonl", "learning_curve.png",
            "sample_transcripts.json"} <= mlflow_server.artifacts(run_ids[good])
    assert "succeeded" in mlflow_server.artifact_text(run_ids[good], "job.log")
    assert len(mlflow_server.history(run_ids[good], "loss")) == 2  # the daemon's fill-in added no duplicates

    # The failed one: why it failed is in its tags and its job.log.
    run = mlflow_server.run(run_ids[bad])
    assert "exit code 2" in run["tags"]["expctl.end_reason"] and run["tags"]["expctl.status"] == "failed"
    assert "manifest not found" in mlflow_server.artifact_text(run_ids[bad], "job.log")

    # The cancelled one.
    run = mlflow_server.run(run_ids[sleeper])
    assert "cancelled" in run["tags"]["expctl.end_reason"] and "job.log" in mlflow_server.artifacts(run_ids[sleeper])

    # expctl show links the run's page in the UI.
    experiment_id = mlflow_server.get("experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    shown = world.check("show", str(good), COLUMNS="400").stdout
    assert f"{mlflow_server.url}/#/experiments/{experiment_id}/runs/{run_ids[good]}" in shown


def test_an_unreachable_mlflow_never_stops_a_job_and_its_run_is_created_later(mlflow_server: Server,
                                                                             world_factory) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    world = world_factory(closed)
    enqueued = world.check("enqueue", *TESTAPP, "config", "tag=early,late", "+experiment.name=offline",
                           "--name", "offline", timeout=120)
    early, late = (int(text) for text in enqueued.stdout.split("jobs (")[1].split(")")[0].split(", "))
    assert world.job(early).tracking_run_id is None and world.job(late).tracking_run_id is None
    assert f"expctl tracking sync {early} {late}" in enqueued.stderr  # queued anyway; the way back is named

    # MLflow still down: the job runs and succeeds, the error is logged once.
    output = world.finish(world.daemon("--once"), timeout=300)
    job = world.job(early)
    assert job.status == "succeeded" and job.tracking_run_id is None, output
    failures = [line for line in output.splitlines() if "tracker mlflow failed" in line]
    assert len(failures) == 1 and closed in failures[0], output
    assert f"expctl tracking sync {early}" in output  # how to recover

    # What a training child leaves in its folder.
    folder = world.root / "experiments" / str(early)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": epoch, "loss": 3.0 / epoch, "val_wer": 0.9})
                                                  + "\n" for epoch in (1, 2, 3)))
    (folder / "result.json").write_text(json.dumps({"epochs_run": 3, "test": {"wer": 0.8, "cer": 0.4},
                                                    "history": [1, 2, 3], "exp_dir": str(folder)}))

    # MLflow is back: sync creates the ended job's run from its row and folder.
    up = {"MLFLOW_TRACKING_URI": mlflow_server.url, "COLUMNS": "300"}
    synced = world.check("tracking", "sync", str(early), **up).stdout
    job = world.job(early)
    assert job.tracking_run_id and job.tracking_uri == mlflow_server.url, synced
    run = mlflow_server.run(job.tracking_run_id)
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == job.name
    assert abs(int(run["info"]["end_time"]) - job.finished_at * 1000) < 1000
    assert run["params"]["tag"] == "early" and run["tags"]["expctl.job_id"] == str(early)
    assert mlflow_server.history(job.tracking_run_id, "loss") == [(1, 3.0), (2, 1.5), (3, 1.0)]
    assert run["metrics"]["test_wer"] == 0.8 and run["metrics"]["epochs_run"] == 3
    assert {"config.yaml", "job.log", "metrics.jsonl", "result.json"} <= mlflow_server.artifacts(job.tracking_run_id)
    assert "succeeded" in mlflow_server.artifact_text(job.tracking_run_id, "job.log")

    # The job queued while MLflow was down gets its run when a daemon claims it.
    output = world.finish(world.daemon("--until-empty", MLFLOW_TRACKING_URI=mlflow_server.url), timeout=300)
    job = world.job(late)
    assert job.status == "succeeded" and job.tracking_run_id and job.tracking_uri == mlflow_server.url, output
    run = mlflow_server.run(job.tracking_run_id)
    assert run["info"]["status"] == "FINISHED" and run["tags"]["expctl.attempt"] == "1"
    assert {"config.yaml", "job.log"} <= mlflow_server.artifacts(job.tracking_run_id)
    assert "tracker mlflow failed" not in output

    # Syncing again changes nothing.
    again = world.check("tracking", "sync", **up).stdout
    assert again.count("in sync") == 2, again
    assert len(mlflow_server.history(world.job(early).tracking_run_id, "loss")) == 3
    assert len(mlflow_server.runs_of("offline")) == 2


def test_the_daemon_that_finds_a_dead_daemons_job_ends_its_run(mlflow_server: Server, world_factory) -> None:
    world = world_factory(mlflow_server.url)
    job_id = world.enqueue(*TESTAPP, "config", "tag=orphan", "sleep=300", "+experiment.name=orphans",
                           "--name", "orphan", "--max-attempts", "1")
    run_id = world.job(job_id).tracking_run_id
    first = world.daemon("--lease", "2")
    try:
        wait_for(lambda: world.job(job_id).status == "running", 120, "the job to start")
        wait_for(lambda: mlflow_server.run(run_id)["info"]["status"] == "RUNNING", 60, "its run to be RUNNING")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the daemon dies; its child follows it
        first.wait()
        first.log.close()  # type: ignore[attr-defined]
    assert mlflow_server.run(run_id)["info"]["status"] == "RUNNING"

    output = world.finish(world.daemon("--until-empty", "--lease", "2"), timeout=300)
    job = world.job(job_id)
    assert job.status == "failed" and "lost" in (job.end_reason or ""), output
    run = mlflow_server.run(run_id)
    assert run["info"]["status"] == "FAILED" and "lost" in run["tags"]["expctl.end_reason"]

    # A user's retry schedules the same run again; cancelling the queued job ends it.
    world.check("retry", str(job_id))
    assert mlflow_server.run(run_id)["info"]["status"] == "SCHEDULED"
    world.check("cancel", str(job_id))
    assert mlflow_server.run(run_id)["info"]["status"] == "KILLED"
