"""``python -m asr.train`` as the queue runs it: results, fast config errors, exit codes, resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from asr.data.synth import synthesize_corpus

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.parameters.rnn_type=gru", "model.parameters.rnn_sizes=[24]", "model.parameters.conv_filters=[4]",
        "model.parameters.conv_kernels=[[11,21]]", "model.parameters.conv_strides=[[2,2]]",
        "trainer.batch_size=8", "trainer.val_decode_limit=4", "optimizer.schedule=constant"]


def train_app(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "asr.train", *arguments], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=24, seed=3, quiet=True)


def data_overrides(corpus: dict) -> list[str]:
    return [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}",
            f"data.test_manifest={corpus['test']}"]


def test_a_composed_spec_runs_like_the_queue_runs_it(corpus, tmp_path):
    job = tmp_path / "experiments" / "job 1"
    composed = train_app("--cfg", "job", *TINY, *data_overrides(corpus), "trainer.epochs=1", "decoder.name=beam",
                         "decoder.beam_width=4")
    assert composed.returncode == 0, composed.stderr
    assert "exp_dir: ${hydra:runtime.output_dir}" in composed.stdout  # resolved in the child
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(composed.stdout)
    # --config-path (as expctl does): with --config-dir the app's own conf/config.yaml would shadow the file
    run = train_app("--config-path", str(job), "--config-name", "config", f"hydra.run.dir={job}")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((job / "result.json").read_text())
    assert result["epochs_run"] == 1 and result["exp_dir"] == str(job)
    assert 0 <= result["test"]["cer"] and result["sample_transcripts"]
    # the test set is scored with the configured decoder, greedy beside it; the bundle keeps both
    assert result["test"]["decoder"] == "beam" and {"wer", "cer"} <= set(result["test_greedy"])
    with zipfile.ZipFile(job / "model.bin") as bundle:
        metadata = json.loads(bundle.read("metadata.json"))
    metrics = metadata["metrics"]
    assert metrics["test_wer"] == result["test"]["wer"] and metrics["test_greedy_cer"] == result["test_greedy"]["cer"]
    assert metadata["test"]["decoder"] == "beam"  # asr models list says how test_wer was measured
    assert (job / "model.bin").is_file() and (job / "checkpoints" / "checkpoint").is_file()
    assert json.loads((job / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


@pytest.mark.parametrize("override,message", [
    ('model.parameters.rnn_sizes=[1024,"x"]', "could not be converted to Integer"),
    ("trainer.epoch=3", "Could not override 'trainer.epoch'"),
    ("trainer.epochs=[", "no viable alternative"),
    ("features.type=wavelet", "Invalid value 'wavelet', expected one of [mfcc, logmel]"),  # choices are typed
])
def test_bad_overrides_fail_fast_with_hydras_message(override, message):
    run = train_app(override, "--cfg", "job", timeout=60)
    assert run.returncode != 0 and message in run.stderr
    run = train_app(override, "hydra.run.dir=/tmp/never-created", timeout=60)
    assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr


def test_bad_data_is_exit_code_2_with_one_line(corpus, tmp_path):
    run = train_app(*TINY, f"data.train_manifest={tmp_path / 'missing.jsonl'}", f"hydra.run.dir={tmp_path / 'a'}")
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith("error: ") and "manifest not found" in run.stderr and "Traceback" not in run.stderr
    bad = tmp_path / "bad.jsonl"
    first = json.loads(Path(corpus["train"]).read_text().splitlines()[0])
    first["audio_filepath"] = str(Path(corpus["train"]).parent / first["audio_filepath"])
    bad.write_text(json.dumps({**first, "text": "Crème brûlée, 42 times!"}) + "\n")
    run = train_app(*TINY, f"data.train_manifest={bad}", "data.dev_manifest=null", "data.test_manifest=null",
                    f"hydra.run.dir={tmp_path / 'b'}")
    assert run.returncode == 2 and "error: train utterance" in run.stderr
    assert "','" in run.stderr and "'4'" in run.stderr and "creme brulee, 42 times!" in run.stderr


@pytest.mark.slow
def test_kill_minus_9_then_rerun_continues_from_the_next_epoch(corpus, tmp_path):
    exp = tmp_path / "exp"
    arguments = [sys.executable, "-m", "asr.train", *TINY, *data_overrides(corpus), "trainer.epochs=4",
                 "trainer.early_stopping_patience=0", f"hydra.run.dir={exp}"]
    log = open(tmp_path / "first.log", "w")
    process = subprocess.Popen(arguments, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (exp / "checkpoints" / "ckpt-1.index").exists():
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        time.sleep(0.5)  # let the manager finish writing its state file
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    assert not (exp / "result.json").exists()
    done_before = [json.loads(line)["epoch"] for line in (exp / "metrics.jsonl").read_text().splitlines()]
    rerun = train_app(*TINY, *data_overrides(corpus), "trainer.epochs=4", "trainer.early_stopping_patience=0",
                      f"hydra.run.dir={exp}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [line for line in (exp / "train.log").read_text().splitlines() if "resumed from" in line]
    assert resumed, "the rerun did not resume"
    epochs = [json.loads(line)["epoch"] for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]  # every epoch exactly once
    assert len(done_before) < 4
    assert json.loads((exp / "result.json").read_text())["epochs_this_run"] == 4 - int(
        resumed[-1].split(": ")[1].split(" epoch")[0].split()[-1])
