"""``expctl sweep list`` and ``expctl sweep promote``: a sweep's best run becomes a registered model version.

Real queues (SQLite, and PostgreSQL for the refusals), real daemons running the jobs, a real MLflow
SQLite store in a temporary folder (and a real ``mlflow server`` on 127.0.0.1). In the end-to-end
test each job's child logs ``val_wer`` and a tiny pyfunc MLflow Model ``model`` ("models from code")
into its own run, as ``asr.train`` does; elsewhere fast jobs run and the test fills their runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from expctl.tracking import promote
from expctl_helpers import Env

MLFLOW = Path(sys.executable).with_name("mlflow")

MODEL_CODE = '''
import mlflow
from mlflow.models import set_model


class Tiny(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [f"tiny:{value}" for value in model_input["audio"]]


set_model(Tiny())
'''

# A job that logs like asr.train: metrics into the queue's run (MLFLOW_RUN_ID) and its MLflow Model
# ``model`` with Model.log(run_id=...). ``wer`` is the final val_wer; a misleading 0.01 is logged at
# step 0 first (the latest value ranks). Fails (exit 3) when wer < fail_below; ``model: no`` logs none.
APP = '''
import os
import sys


def _config(arguments):
    folder = arguments[arguments.index("--config-path") + 1]
    name = arguments[arguments.index("--config-name") + 1]
    values = {}
    with open(os.path.join(folder, name + ".yaml"), encoding="utf-8") as config:
        for line in config:
            if ":" in line:
                key, value = line.split(":", 1)
                values[key.strip()] = value.strip()
    return values


def main():
    arguments = sys.argv[1:]
    if "--cfg" in arguments:
        overrides = [a for a in arguments if "=" in a and not a.startswith("-")]
        sys.stdout.write("".join(f"{o.split('=', 1)[0]}: {o.split('=', 1)[1]}\\n" for o in overrides))
        return
    config = _config(arguments)
    wer = float(config["wer"])
    if wer < float(config.get("fail_below", "-1")):
        sys.exit(3)
    import mlflow
    from mlflow.models import Model

    run_id = os.environ["MLFLOW_RUN_ID"]
    client = mlflow.MlflowClient()
    client.log_metric(run_id, "val_wer", 0.01, step=0)
    client.log_metric(run_id, "val_wer", wer, step=1)
    if config.get("model", "yes") == "yes":
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment_id)
        Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
                  python_model=config["model_code"], pip_requirements=["mlflow"])
    print(f"promote app: wer={wer}", flush=True)


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the test app (``expctl_promote_app``) and the model's code."""
    folder = tmp_path_factory.mktemp("promote-apps")
    (folder / "expctl_promote_app.py").write_text(textwrap.dedent(APP))
    (folder / "tiny_model.py").write_text(textwrap.dedent(MODEL_CODE))
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite store for the module (its tables are made once: that takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tracked(world: Env, uri: str, apps: Path) -> Env:
    world.vars.update(EXPCTL_TRACKING="mlflow", MLFLOW_TRACKING_URI=uri, EXPCTL_TRACKER_TIMEOUT="120",
                      MLFLOW_DISABLE_TELEMETRY="true",
                      PYTHONPATH=os.pathsep.join([str(apps), world.vars["PYTHONPATH"]]))
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "CUDA_VISIBLE_DEVICES"):
        world.vars.pop(name, None)
    return world


def run_queue(world: Env, apps_allowed: str, timeout: float = 300) -> None:
    daemon = world.daemon("--gpus", "none", "--until-empty", "--apps", apps_allowed, "--backoff", "0")
    try:
        daemon.wait(timeout=timeout)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, world.daemon_logs()[-4000:]


def one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.stderr
    return lines[0]


using = promote.process_tracking_uri  # MLflow's process-wide tracking URI, put back afterwards


def client(uri: str):  # noqa: ANN201
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def log_model(uri: str, run_id: str, model_code: Path) -> str:
    """Log the tiny MLflow Model ``model`` into an existing run, as asr.serving.pyfunc.log_model does."""
    import mlflow
    from mlflow.models import Model

    with using(uri):
        experiment_id = client(uri).get_run(run_id).info.experiment_id
        logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment_id)
        Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
                  python_model=str(model_code), pip_requirements=["mlflow"])
        return logged.model_id


def test_the_best_succeeded_run_of_a_queued_sweep_becomes_a_version(world: Env, store: str, apps: Path) -> None:
    world = tracked(world, store, apps)
    code = str(apps / "tiny_model.py")
    queued = world.run("enqueue", "--app", "expctl_promote_app", "--max-attempts", "1", "--name", "grid [b]x[/b]",
                       "config", "wer=0.5,0.2,0.3,0.1", "fail_below=0.15", f"model_code={code}", check=True)
    assert "sweep 1: queued 4 jobs (1, 2, 3, 4)" in queued.stdout, queued.stdout
    run_queue(world, "expctl_promote_app")
    from expctl.store import jobs

    by_id = {job.id: job for job in jobs.list_jobs(world.engine, sweep_id=1)}
    assert [by_id[i].status for i in (1, 2, 3, 4)] == ["succeeded", "succeeded", "succeeded", "failed"]

    listed = world.run("sweep", "list", "--json", check=True)
    import json

    [sweep] = json.loads(listed.stdout)
    assert sweep["id"] == 1 and sweep["name"] == "grid [b]x[/b]" and sweep["app"] == "expctl_promote_app"
    assert sweep["counts"] == {"succeeded": 3, "failed": 1} and sweep["jobs"] == 4
    world.vars["COLUMNS"] = "300"  # one table row per line
    table = world.cli("sweep", "list", check=True).stdout
    assert "grid [b]x[/b]" in table and "3 succeeded, 1 failed" in table and "wer=0.5,0.2,0.3,0.1" in table

    # Lowest val_wer among succeeded jobs: job 2 (0.2); job 4 (0.1) failed, every run logged 0.01 at step 0.
    promoted = world.run("sweep", "promote", "1", "--metric", "val_wer", "--name", "asr-en", "--alias", "champion",
                         check=True)
    lines = promoted.stdout.strip().splitlines()
    assert len(lines) == 1, promoted.stdout
    assert lines[0] == (f"sweep 1: job 2 (run {by_id[2].tracking_run_id}) has the lowest val_wer=0.2 of 3 run(s) "
                        f'-> asr-en version 1, alias champion; load_model("models:/asr-en/1") or '
                        f'"models:/asr-en@champion"'), lines[0]
    registry = client(store)
    version = registry.get_model_version("asr-en", "1")
    assert version.run_id == by_id[2].tracking_run_id
    assert version.source.startswith("models:/m-") and version.tags["expctl.job_id"] == "2"
    assert str(registry.get_model_version_by_alias("asr-en", "champion").version) == "1"

    # --max: the highest (job 1, 0.5) becomes version 2; the alias stays where it was.
    # (as the console script, in its own process: nothing but the JSON on stdout, nothing on stderr)
    second = world.cli("sweep", "promote", "1", "--metric", "val_wer", "--name", "asr-en", "--max", "--json",
                       check=True)
    assert second.stderr == "", second.stderr
    answer = json.loads(second.stdout)
    assert answer["job"] == 1 and answer["version"] == "2" and answer["value"] == 0.5 and answer["direction"] == "max"
    assert registry.get_model_version("asr-en", "2").run_id == by_id[1].tracking_run_id
    assert str(registry.get_model_version_by_alias("asr-en", "champion").version) == "1"

    # What was registered loads by name, alias and version.
    import mlflow
    import pandas as pd

    with using(store):
        model = mlflow.pyfunc.load_model("models:/asr-en@champion")
        assert list(model.predict(pd.DataFrame({"audio": ["a.wav"]}))) == ["tiny:a.wav"]


@pytest.mark.parametrize("flavour", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_refusals_are_one_line_and_register_nothing(flavour: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                   store: str, apps: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'queue' / 'expctl.db'}" if flavour == "sqlite" else request.getfixturevalue(
        "pg_url")
    world = tracked(Env(tmp_path, db_url), store, apps)
    name = f"refused-{flavour}"
    try:
        world.run("enqueue", "--app", "expctl_fastapp", "config", "n=1,2,3", check=True)  # sweep 1
        world.run("enqueue", "--app", "expctl_fastapp", "config", "n=7", check=True)  # a job, no sweep
        run_queue(world, "expctl_fastapp")
        from expctl.store import jobs

        sweep_jobs = jobs.list_jobs(world.engine, sweep_id=1)
        assert [job.status for job in sweep_jobs] == ["succeeded"] * 3

        one_error_line(world.run("sweep", "promote", "99", "--metric", "val_wer", "--name", name),
                       "no sweep with id 99")
        one_error_line(world.run("--tracking", "none", "sweep", "promote", "1", "--metric", "val_wer", "--name", name),
                       "tracking is disabled")
        # Succeeded, but no run holds val_wer yet: the line says what the runs do have.
        registry = client(store)
        registry.log_metric(sweep_jobs[0].tracking_run_id, "val_loss", 1.5)
        one_error_line(world.run("sweep", "promote", "1", "--metric", "val_wer", "--name", name),
                       "sweep 1: no succeeded job has an MLflow run with metric 'val_wer'", "3 succeeded",
                       "their runs have: val_loss")
        # The best run has no MLflow Model "model".
        for job, value in zip(sweep_jobs, (0.4, 0.3, 0.35)):
            registry.log_metric(job.tracking_run_id, "val_wer", value)
        one_error_line(world.run("sweep", "promote", "1", "--metric", "val_wer", "--name", name),
                       "job 2", "val_wer=0.3", "no logged MLflow Model 'model'", "nothing registered")
        # A name or alias the registry refuses is refused before anything is registered.
        log_model(store, sweep_jobs[1].tracking_run_id, apps / "tiny_model.py")
        one_error_line(world.run("sweep", "promote", "1", "--metric", "val_wer", "--name", name, "--alias", "latest"),
                       "--alias 'latest'", "reserved")
        one_error_line(world.run("sweep", "promote", "1", "--metric", "val_wer", "--name", "a/b"), "--name 'a/b'")
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException):
            registry.get_registered_model(name)
        # Rich markup in a name is printed as typed (and the registry keeps it as typed).
        marked = f"{name}-[bold]x"
        done = world.run("sweep", "promote", "1", "--metric", "val_wer", "--name", marked, check=True)
        assert f"-> {marked} version 1;" in done.stdout and f'load_model("models:/{marked}/1")' in done.stdout
        assert registry.get_model_version(marked, "1").run_id == sweep_jobs[1].tracking_run_id
    finally:
        world.close()


# ------------------------------------------------------------ a real mlflow server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` with its own SQLite store and artifact folder on a free localhost port."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder, start_new_session=True,
            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise AssertionError(f"mlflow server exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("mlflow server did not answer /health")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.slow
def test_promote_through_a_real_mlflow_server(world: Env, mlflow_server: str, apps: Path) -> None:
    world = tracked(world, mlflow_server, apps)
    world.run("enqueue", "--app", "expctl_fastapp", "config", "n=1,2", check=True)
    run_queue(world, "expctl_fastapp")
    from expctl.store import jobs

    first, second = jobs.list_jobs(world.engine, sweep_id=1)
    assert first.tracking_uri == mlflow_server and second.status == "succeeded"
    registry = client(mlflow_server)
    registry.log_metric(first.tracking_run_id, "val_acc", 0.7)
    registry.log_metric(second.tracking_run_id, "val_acc", 0.9)
    log_model(mlflow_server, first.tracking_run_id, apps / "tiny_model.py")
    log_model(mlflow_server, second.tracking_run_id, apps / "tiny_model.py")
    done = world.run("sweep", "promote", "1", "--metric", "val_acc", "--higher-is-better", "--name", "asr-en",
                     "--alias", "champion", check=True)
    assert f"job 2 (run {second.tracking_run_id}) has the highest val_acc=0.9 of 2 run(s) -> asr-en version 1" \
        in done.stdout, done.stdout
    assert registry.get_model_version_by_alias("asr-en", "champion").run_id == second.tracking_run_id

    import mlflow
    import pandas as pd

    with using(mlflow_server):
        model = mlflow.pyfunc.load_model("models:/asr-en/1")
        assert list(model.predict(pd.DataFrame({"audio": ["b.wav"]}))) == ["tiny:b.wav"]
    # The runs live on the server, whatever MLFLOW_TRACKING_URI says now: the version goes there, and the
    # line says where to load it from.
    world.vars["MLFLOW_TRACKING_URI"] = f"sqlite:///{world.root / 'elsewhere.db'}"
    again = world.run("sweep", "promote", "1", "--metric", "val_acc", "--max", "--name", "asr-en", check=True)
    assert again.stdout.rstrip().endswith(f'load_model("models:/asr-en/2") with MLFLOW_TRACKING_URI={mlflow_server}')
    assert registry.get_model_version("asr-en", "2").run_id == second.tracking_run_id
    # A server that stops answering: one line, exit 1, nothing hangs.
    world.vars.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    jobs.set_tracking(world.engine, first.id, first.tracking_run_id, world.vars["MLFLOW_TRACKING_URI"])
    gone = world.run("sweep", "promote", "1", "--metric", "val_acc", "--name", "asr-en")
    assert gone.returncode == 1 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert gone.stderr.startswith("error: MLflow at http://127.0.0.1:") and "failed" in gone.stderr
