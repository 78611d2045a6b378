"""A checkpoint belongs to one training and one job: real tiny trainings on a synthetic corpus.

Resuming with other model, data or optimizer settings, or in another queue job (``EXPCTL_JOB_UUID``),
is refused with what differs (exit 2 from ``python -m asr.train``); bookkeeping keys (epochs, time
limit, logging, init_from) may change; a checkpoint from before fingerprints is resumed with a warning.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr.configuration import Configuration
from asr.data.synth import synthesize_corpus
from asr.errors import UserError
from asr.training.checkpoint import CHECKPOINT_DIR, FINGERPRINT_FILE, training_fingerprint
from asr.training.loop import train
from asr.text import Alphabet
from tests.tiny_model import TINY_PARAMETERS, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_overrides(16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=12, seed=5, quiet=True)


def config(corpus: dict, exp_dir: Path, rnn_sizes=(16,), train_manifest=None, **trainer):  # noqa: ANN001, ANN201
    return Configuration({
        "model": {"name": "deepspeech2", "parameters": {**TINY_PARAMETERS, "rnn_sizes": list(rnn_sizes)}},
        "exp_dir": str(exp_dir),
        "data": {"train_manifest": str(train_manifest or corpus["train"]), "dev_manifest": str(corpus["dev"]),
                 "test_manifest": None},
        "optimizer": {"learning_rate": 0.003, "schedule": "constant"},
        "trainer": {"epochs": 1, "batch_size": 8, "val_decode_limit": 2, "early_stopping_patience": 0, **trainer},
    }).config


def stored(exp_dir: Path) -> dict:
    return json.loads((exp_dir / CHECKPOINT_DIR / FINGERPRINT_FILE).read_text())


def test_bookkeeping_keys_are_not_fingerprinted_what_is_trained_is(corpus, tmp_path):
    alphabet = Alphabet.default()
    base = training_fingerprint(config(corpus, tmp_path / "a"), alphabet)["fingerprint"]
    same = config(corpus, tmp_path / "b", epochs=7, time_limit_minutes=3.0, log_every_steps=1, resume=False,
                  init_from="en", strategy="default", val_decode_limit=9)
    same.experiment.name = "another"
    same.seed = 4
    assert training_fingerprint(same, alphabet)["fingerprint"] == base
    changed = [config(corpus, tmp_path / "a", rnn_sizes=(32,)), config(corpus, tmp_path / "a", batch_size=4),
               config(corpus, tmp_path / "a", train_manifest=corpus["dev"])]
    features = config(corpus, tmp_path / "a")
    features.features.n_mels = 64
    optimizer = config(corpus, tmp_path / "a")
    optimizer.optimizer.learning_rate = 0.1
    for other in [*changed, features, optimizer]:
        assert training_fingerprint(other, alphabet)["fingerprint"] != base
    assert training_fingerprint(config(corpus, tmp_path / "a"), Alphabet(list("abc ")))["fingerprint"] != base


@pytest.mark.slow
def test_resume_only_what_the_checkpoint_trains_in_its_own_job(corpus, tmp_path, monkeypatch, caplog):
    exp = tmp_path / "exp"
    monkeypatch.setenv("EXPCTL_JOB_UUID", "a" * 32)
    train(config(corpus, exp))
    record = stored(exp)
    assert record["job"] == "a" * 32 and record["training"]["model"]["parameters"]["rnn_sizes"] == [16]
    checkpoints = sorted(path.name for path in (exp / CHECKPOINT_DIR).iterdir())

    # another model, other data: refused before anything is trained, saying what differs
    with pytest.raises(UserError, match=r"cannot resume from .*ckpt-1: it trains something else \("
                                        r"model.parameters.rnn_sizes: \[16\] there, \[32\] here\); use another "
                                        r"exp_dir, trainer.resume=false"):
        train(config(corpus, exp, rnn_sizes=(32,), epochs=2))
    with pytest.raises(UserError, match=r"data.train_manifest: other contents"):
        train(config(corpus, exp, train_manifest=corpus["dev"], epochs=2))
    # the same training in another queue job: refused too
    monkeypatch.setenv("EXPCTL_JOB_UUID", "b" * 32)
    with pytest.raises(UserError, match=f"it belongs to queue job {'a' * 32}, not to this job"):
        train(config(corpus, exp, epochs=2))
    assert sorted(path.name for path in (exp / CHECKPOINT_DIR).iterdir()) == checkpoints  # nothing written

    # its own job, bookkeeping changed (epochs, time limit, init_from is not loaded again): resumed
    monkeypatch.setenv("EXPCTL_JOB_UUID", "a" * 32)
    result = train(config(corpus, exp, epochs=2, time_limit_minutes=30.0, init_from="nosuch-model"))
    assert (result.epochs_run, len(result.history)) == (2, 1)
    # by hand (no queue job), the same training may continue a job's checkpoint; it stays the job's
    monkeypatch.delenv("EXPCTL_JOB_UUID")
    assert train(config(corpus, exp, epochs=3)).epochs_run == 3 and stored(exp)["job"] == "a" * 32

    # a checkpoint from before fingerprints: resumed with a warning, and fingerprinted from then on
    (exp / CHECKPOINT_DIR / FINGERPRINT_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="asr.training.checkpoint"):
        assert train(config(corpus, exp, epochs=4)).epochs_run == 4
    assert "written before checkpoints had fingerprints" in caplog.text
    assert stored(exp)["fingerprint"] == record["fingerprint"] and stored(exp)["job"] is None

    # trainer.resume=false starts afresh, with the new training's fingerprint
    fresh = train(config(corpus, exp, rnn_sizes=(32,), resume=False))
    assert fresh.epochs_run == 1 and stored(exp)["training"]["model"]["parameters"]["rnn_sizes"] == [32]


@pytest.mark.slow
def test_the_training_app_refuses_another_jobs_checkpoint_with_exit_code_2(corpus, tmp_path):
    exp = tmp_path / "exp"
    data = [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}", "data.test_manifest=null"]

    def app(*arguments: str, job: str) -> subprocess.CompletedProcess:
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "EXPCTL_JOB_UUID": job}
        return subprocess.run([sys.executable, "-m", "asr.train", *TINY, *data, *arguments, f"hydra.run.dir={exp}"],
                              cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)

    first = app("trainer.epochs=1", job="1" * 32)
    assert first.returncode == 0, first.stderr[-3000:]
    model = (exp / "model.bin").read_bytes()
    other = app("trainer.epochs=2", "model.parameters.rnn_sizes=[24]", job="2" * 32)
    assert other.returncode == 2, other.stderr[-3000:]
    errors = [line for line in other.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in other.stderr, other.stderr[-3000:]
    assert "it trains something else (model.parameters.rnn_sizes: [16] there, [24] here)" in errors[0]
    assert (exp / "model.bin").read_bytes() == model  # the first job's results are left alone


def test_the_fingerprint_of_the_default_configuration_is_unchanged(tmp_path):
    # Pinned (computed with the trainer of commit df9b426): a change here means checkpoints of runs in
    # progress can no longer be resumed. If that is intended (a new model/features/optimizer/augment key
    # changes what is trained), update the value and say so in the commit.
    (tmp_path / "train.jsonl").write_text('{"audio_filepath": "a.wav", "duration": 1.0, "text": "a b"}\n')
    (tmp_path / "dev.jsonl").write_text('{"audio_filepath": "b.wav", "duration": 2.0, "text": "b a"}\n')
    defaults = Configuration({"exp_dir": str(tmp_path), "data": {
        "train_manifest": str(tmp_path / "train.jsonl"), "dev_manifest": str(tmp_path / "dev.jsonl"),
        "test_manifest": None}}).config
    assert (training_fingerprint(defaults, Alphabet.default())["fingerprint"]
            == "803b645cac3037b3fa2442536f392537c96c834ec31dcb6d9c0c4307e30b93e0")


def test_a_key_added_later_counts_only_away_from_its_neutral_value(tmp_path):
    # augment.vtlp_warp came after the pinned fingerprint above: at 0 it is left out (old checkpoints stay
    # resumable), anywhere else it trains something else
    data = {"dev_manifest": None, "test_manifest": None}
    plain = Configuration({"exp_dir": str(tmp_path), "data": data}).config
    warped = Configuration({"exp_dir": str(tmp_path), "data": data, "features": {"type": "logmel"},
                            "augment": {"vtlp_warp": 0.1}}).config
    logmel = Configuration({"exp_dir": str(tmp_path), "data": data, "features": {"type": "logmel"}}).config
    record = training_fingerprint(plain, Alphabet.default())
    assert "vtlp_warp" not in record["training"]["augment"]
    assert training_fingerprint(warped, Alphabet.default())["training"]["augment"]["vtlp_warp"] == 0.1
    assert training_fingerprint(warped, Alphabet.default())["fingerprint"] != \
        training_fingerprint(logmel, Alphabet.default())["fingerprint"]
