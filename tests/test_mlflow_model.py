"""A training run's bundle as an MLflow Model, for real: a tiny model trained on synthetic speech,
a temporary SQLite tracking store, ``runs:/<id>/model`` loaded with ``mlflow.pyfunc``, the
registry (``models:/asr-en/1``, ``@champion``, ``latest``) through ``asr.load_model``, and a real
``mlflow models serve`` process answering HTTP on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from asr.data.synth import synthesize_corpus
from tests.test_pipeline_end_to_end import tiny_configuration

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh SQLite tracking store, set for this module (MLflow's fluent API and the environment)."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "HOME")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["HOME"] = str(folder / "home")  # the download cache ~/.cache/asr/mlflow goes there
    mlflow.set_tracking_uri(uri)
    yield uri
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    """A run as the queue makes one, a tiny model trained into its exp_dir, logged as a training run logs it."""
    from mlflow import MlflowClient

    from asr.pipeline import Pipeline
    from asr.training.tracking import MlflowRunLogger

    folder = tmp_path_factory.mktemp("run")
    corpus = synthesize_corpus(folder / "corpus", count=12, seed=3, quiet=True)
    client = MlflowClient(store)
    artifacts = folder / "artifacts"
    experiment = client.create_experiment("runs", artifact_location=artifacts.as_uri())
    run_id = client.create_run(experiment).info.run_id
    exp_dir = folder / "exp"
    pipeline = Pipeline.from_configuration(tiny_configuration(corpus, exp_dir, epochs=1))
    pipeline.train()
    pipeline.save(exp_dir / "model.bin")
    wavs = sorted((Path(corpus["all"]).parent / "wavs").glob("*.wav"))[:4]
    result = {"epochs_run": 1, "sample_transcripts": [{"audio_filepath": str(wavs[0]), "reference": "x",
                                                       "hypothesis": "y"}]}
    MlflowRunLogger(run_id, store).log_outputs(exp_dir, result)
    return {"run_id": run_id, "pipeline": pipeline, "wavs": wavs, "folder": folder, "client": client,
            "corpus": corpus, "experiment": experiment}


def frame(rows):
    import pandas as pd

    return pd.DataFrame(rows)


def test_a_training_run_logs_an_mlflow_model_that_transcribes(run):
    import mlflow

    model = mlflow.pyfunc.load_model(f"runs:/{run['run_id']}/model")
    expected = run["pipeline"](run["wavs"])
    assert model.predict(frame({"audio": [str(path) for path in run["wavs"]]})) == expected
    encoded = base64.b64encode(run["wavs"][1].read_bytes()).decode("ascii")  # base64 WAV bytes, one path
    assert model.predict(frame({"audio": [encoded, str(run["wavs"][0])],
                                "decoder": ["greedy", None]})) == [expected[1], expected[0]]
    beam = model.predict(frame({"audio": [str(run["wavs"][2])], "decoder": ["beam"]}))
    assert len(beam) == 1 and isinstance(beam[0], str)
    import pandas as pd

    assert model.predict(pd.DataFrame({"audio": pd.Series([], dtype=object)})) == []
    # signature, input example, and the run's logged-model link (the UI's Models column)
    info = mlflow.models.get_model_info(f"runs:/{run['run_id']}/model")
    assert [column.name for column in info.signature.inputs.inputs] == ["audio", "decoder"]
    assert info.signature.inputs.inputs[1].required is False
    assert info.flavors["python_function"]["artifacts"]["bundle"]["path"].endswith("model.bin")
    assert info.saved_input_example_info is not None
    example = mlflow.models.Model.load(f"runs:/{run['run_id']}/model").load_input_example()
    assert isinstance(model.predict(example)[0], str)
    outputs = run["client"].get_run(run["run_id"]).outputs
    assert outputs is not None and len(outputs.model_outputs) == 1
    assert "model.bin" in {item.path for item in run["client"].list_artifacts(run["run_id"])}


@pytest.mark.slow
def test_python_m_asr_train_logs_its_model_into_the_queues_run(run, tmp_path):
    """The path a queued job takes: ``python -m asr.train`` with ``MLFLOW_RUN_ID`` set by the queue."""
    import mlflow

    from tests.test_train_app import TINY, data_overrides

    run_id = run["client"].create_run(run["experiment"]).info.run_id
    done = subprocess.run([sys.executable, "-m", "asr.train", *TINY, *data_overrides(run["corpus"]),
                           "trainer.epochs=1", f"exp_dir={tmp_path / 'job'}"], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, MLFLOW_RUN_ID=run_id, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MLflow model failed" not in done.stderr and "to MLflow failed" not in done.stderr, done.stderr[-3000:]
    assert run["client"].get_run(run_id).info.status == "RUNNING"  # the queue, not training, ends the run
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.predict(frame({"audio": [str(run["wavs"][0])]})) == asr_load(tmp_path / "job" / "model.bin")(
        run["wavs"][:1])


def asr_load(path):
    import asr

    return asr.load_model(str(path))


def test_bad_rows_are_refused_with_one_line_naming_the_row(run, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(f"runs:/{run['run_id']}/model")
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n")
    good = str(run["wavs"][0])
    cases = {"row 1: audio file not found: /no/such.wav": {"audio": [good, "/no/such.wav"]},
             f"row 0: cannot read audio file {text}": {"audio": [str(text)]},
             "row 0: unknown decoder 'loud'": {"audio": [good], "decoder": ["loud"]},
             "row 0: decoder beam_lm needs a language model": {"audio": [good], "decoder": ["beam_lm"]}}
    for expected, rows in cases.items():
        with pytest.raises(MlflowException) as error:
            model.predict(frame(rows))
        assert error.value.get_http_status_code() == 400
        assert error.value.message.startswith(expected) and "\n" not in error.value.message
    with pytest.raises(MlflowException, match="input has no column 'audio'|audio"):
        model.predict(frame({"path": [good]}))


def test_load_model_resolves_registry_and_run_uris(run):
    import mlflow

    import asr
    from asr.errors import UserError

    version = mlflow.register_model(f"runs:/{run['run_id']}/model", "asr-en")
    assert str(version.version) == "1"
    run["client"].set_registered_model_alias("asr-en", "champion", "1")
    expected = run["pipeline"](run["wavs"][:2])
    for uri in ("models:/asr-en/1", "models:/asr-en@champion", "models:/asr-en/latest",
                f"runs:/{run['run_id']}/model", f"runs:/{run['run_id']}/model.bin"):
        assert asr.load_model(uri)(run["wavs"][:2]) == expected, uri
    cache = Path(os.environ["HOME"]) / ".cache" / "asr" / "mlflow"
    # version 1, @champion and latest are one download (aliases are pinned to versions); the runs:/ URIs two more
    assert len(list(cache.iterdir())) == 3
    for uri, message in (("models:/asr-en/7", "models:/asr-en/7: "), ("models:/nobody@champion", "models:/nobody"),
                         ("models:/asr-en", "expected models:/NAME/VERSION")):
        with pytest.raises(UserError, match=message) as error:
            asr.load_model(uri)
        assert "\n" not in str(error.value)


def test_an_unreachable_tracking_server_is_one_line_in_seconds(run):
    import mlflow

    import asr
    from asr.errors import UserError

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    try:
        with pytest.raises(UserError, match="^models:/asr-en/1: API request to .* failed") as error:
            asr.load_model("models:/asr-en/1")
    finally:
        mlflow.set_tracking_uri(previous)
    assert "\n" not in str(error.value) and time.monotonic() - started < 60


def test_asr_transcribe_takes_a_registry_uri(run):
    command = [str(Path(sys.executable).with_name("asr")), "transcribe", str(run["wavs"][0]), "--model",
               "models:/asr-en/1", "--decoder", "greedy"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{run['wavs'][0]}\t{run['pipeline'](run['wavs'][:1])[0]}"
    missing = subprocess.run(command[:4] + ["models:/asr-en/9"], capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("error: models:/asr-en/9: ") and len(missing.stderr.splitlines()) == 1


# ----- a real REST endpoint --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_over_http(run, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    command = [str(MLFLOW), "models", "serve", "-m", f"runs:/{run['run_id']}/model", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
                                                                   # it runs `uvicorn` from PATH: the venv's
                                                                   PATH=f"{MLFLOW.parent}:{os.environ['PATH']}"))
    try:
        wait_for_http(server, f"{url}/ping", log_path)
        expected = run["pipeline"](run["wavs"][:2])
        rows = [{"audio": str(path)} for path in run["wavs"][:2]]
        assert post(f"{url}/invocations", {"dataframe_records": rows}) == (200, {"predictions": expected})
        encoded = base64.b64encode(run["wavs"][0].read_bytes()).decode("ascii")
        assert post(f"{url}/invocations", {"dataframe_records": [{"audio": encoded, "decoder": "greedy"}]}) == (
            200, {"predictions": expected[:1]})
        not_audio = tmp_path / "notes.wav"
        not_audio.write_text("hello\n")
        for bad, expected_line in (("/no/such/file.wav", "row 0: audio file not found: /no/such/file.wav"),
                                   (str(not_audio), f"row 0: cannot read audio file {not_audio}")):
            status, answer = post(f"{url}/invocations", {"dataframe_records": [{"audio": bad}]})
            assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
            # MLflow's server puts "Failed to predict data ..." before the model's own message: its last line
            assert answer["message"].splitlines()[-1].startswith(f"Error: {expected_line}")
            assert "Traceback" not in json.dumps(answer)
        assert post(f"{url}/invocations", {"dataframe_records": rows[:1]}) == (200, {"predictions": expected[:1]})
        assert server.poll() is None
    finally:
        stop(server)


@pytest.mark.slow
def test_a_run_logged_to_an_mlflow_server_loads_from_its_registry(run, tmp_path, monkeypatch):
    """The queue's setting: runs live on a real ``mlflow server`` (artifacts proxied over HTTP)."""
    import mlflow
    from mlflow import MlflowClient

    import asr
    from asr.training.tracking import MlflowRunLogger

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    command = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=tmp_path, start_new_session=True,
                                  env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
                                           MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                                           PATH=f"{MLFLOW.parent}:{os.environ['PATH']}"))
    previous = mlflow.get_tracking_uri()
    try:
        wait_for_http(server, f"{url}/health", log_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        client = MlflowClient(url)
        run_id = client.create_run(client.create_experiment("served")).info.run_id
        exp_dir = run["folder"] / "exp"
        MlflowRunLogger(run_id, url).log_outputs(exp_dir, {"epochs_run": 1})
        assert client.get_run(run_id).outputs.model_outputs, "the model was not logged"
        mlflow.register_model(f"runs:/{run_id}/model", "asr-served")
        client.set_registered_model_alias("asr-served", "champion", "1")
        expected = run["pipeline"](run["wavs"][:2])
        assert asr.load_model("models:/asr-served@champion")(run["wavs"][:2]) == expected
        assert mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(
            frame({"audio": [str(path) for path in run["wavs"][:2]]})) == expected
    finally:
        mlflow.set_tracking_uri(previous)
        stop(server)


def wait_for_http(server: subprocess.Popen, url: str, log_path: Path, timeout: float = 300) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, f"server exited {server.returncode}: {log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no answer from {url} after {timeout:g} s: {log_path.read_text()[-3000:]}"
        time.sleep(1)


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (we started it in its own session), SIGKILL after 20 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
