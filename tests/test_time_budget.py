"""Training to a time budget: ``trainer.time_limit_minutes`` and ``optimizer.schedule=cosine``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asr.configuration import validate
from asr.data.synth import synthesize_corpus
from asr.training.checkpoint import CHECKPOINT_DIR, METRICS_FILE
from asr.training.loop import Trainer
from asr.training.schedule import cosine_learning_rate

TINY_MODEL = {"rnn_type": "gru", "rnn_sizes": [8], "conv_filters": [2], "conv_kernels": [[11, 11]],
              "conv_strides": [[2, 2]]}


@given(peak=st.floats(1e-5, 1.0), floor_share=st.floats(0.0, 1.0),
       earlier=st.floats(-0.5, 1.5), later=st.floats(-0.5, 1.5))
def test_cosine_rate_falls_from_peak_to_floor(peak, floor_share, earlier, later):
    floor = peak * floor_share
    earlier, later = sorted((earlier, later))
    assert cosine_learning_rate(peak, floor, 0.0) == pytest.approx(peak)
    assert cosine_learning_rate(peak, floor, 1.0) == pytest.approx(floor)
    high, low = cosine_learning_rate(peak, floor, earlier), cosine_learning_rate(peak, floor, later)
    assert floor - 1e-12 <= low <= high + 1e-12 <= peak + 2e-12


def test_cosine_rate_is_halfway_at_half_progress():
    assert cosine_learning_rate(1.0, 0.0, 0.5) == pytest.approx(0.5)
    assert math.isclose(cosine_learning_rate(3e-3, 1e-4, 2.0), 1e-4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=24, seed=3, quiet=True)


def make_config(corpus: dict, exp_dir: Path, trainer: dict, schedule: str = "cosine"):
    return validate({
        "model": {"parameters": TINY_MODEL},
        "data": {"train_manifest": str(corpus["train"]), "dev_manifest": str(corpus["dev"]), "test_manifest": None},
        "trainer": {"batch_size": 2, "strategy": "default", "early_stopping_patience": 0, "val_decode_limit": 2,
                    "sortagrad": False, **trainer},
        "optimizer": {"schedule": schedule, "learning_rate": 3e-3, "min_learning_rate": 1e-4, "warmup_steps": 0},
        "exp_dir": str(exp_dir),
    })


def test_cosine_over_epochs_reaches_the_floor_in_the_last_epoch(corpus, tmp_path):
    history = Trainer(make_config(corpus, tmp_path, {"epochs": 3})).fit().history
    rates = [epoch["learning_rate"] for epoch in history]  # the rate of each epoch's last step
    assert rates[0] > rates[1] > rates[2]
    assert 1e-4 <= rates[2] < 2e-4  # one step before the end: just above the floor


def test_a_spent_time_limit_cuts_the_epoch_short_validates_and_saves(corpus, tmp_path):
    # a budget already spent when training starts: one step, then the epoch ends, is validated and saved
    config = make_config(corpus, tmp_path, {"epochs": 5, "time_limit_minutes": 1e-4})
    result = Trainer(config).fit()
    assert len(result.history) == 1
    epoch = result.history[0]
    assert 0 < epoch["epoch_fraction"] < 0.5  # one batch of 2 of the ~20 training utterances
    assert math.isfinite(epoch["val_loss"])
    assert epoch["learning_rate"] == pytest.approx(1e-4)  # time progress is past 1: the cosine floor
    assert [json.loads(line)["epoch"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1]

    import tensorflow as tf
    checkpoint = tf.train.load_checkpoint(str(tmp_path / CHECKPOINT_DIR))
    assert checkpoint.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert checkpoint.get_tensor("elapsed_seconds/.ATTRIBUTES/VARIABLE_VALUE") > 0  # resumed runs add to it


def test_a_time_limit_that_is_not_reached_changes_nothing(corpus, tmp_path):
    history = Trainer(make_config(corpus, tmp_path, {"epochs": 2, "time_limit_minutes": 60},
                                  schedule="constant")).fit().history
    assert [epoch["epoch"] for epoch in history] == [1, 2]
    assert all("epoch_fraction" not in epoch for epoch in history)
    assert all(epoch["learning_rate"] == pytest.approx(3e-3) for epoch in history)


def test_a_time_limit_is_refused_under_several_workers(corpus, tmp_path):
    # a child process: a MultiWorkerMirroredStrategy fixes the collective setup of the process that makes it
    script = f"""
import tensorflow as tf
from asr.configuration import validate
from asr.errors import UserError
from asr.training.loop import Trainer
config = validate({{"data": {{"train_manifest": {str(corpus["train"])!r}, "dev_manifest": None, "test_manifest": None}},
                   "trainer": {{"time_limit_minutes": 5}}, "exp_dir": {str(tmp_path)!r}}})
try:
    Trainer(config, strategy=tf.distribute.MultiWorkerMirroredStrategy()).fit()
except UserError as error:
    print("refused:", error)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "refused: trainer.time_limit_minutes does not work with several workers" in run.stdout, run.stderr[-2000:]
    assert not (tmp_path / CHECKPOINT_DIR).exists()  # refused before anything was built or written
