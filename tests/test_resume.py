"""Resume equivalence: a run stopped after k epochs and resumed ends where the uninterrupted run ends.

The schedule's state matters here: the rate is high enough for the plateau schedule to divide it on a
stall, so the resumed run must carry ``plateau_decays`` (and the optimizer's moments, the early-stopping
count and the best loss) over from the checkpoint. On a CPU the same ops in the same order give the same
floats (the data order of epoch k depends only on (seed, k)), so the tolerance is tight: 1e-6, not exact,
only so that a float32 sum that oneDNN's thread pool orders differently does not fail it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr.configuration import Configuration
from asr.data.synth import synthesize_corpus
from asr.training.checkpoint import CHECKPOINT_DIR
from asr.training.loop import Trainer, train
from tests.tiny_model import TINY_PARAMETERS

EPOCHS, STOP_AFTER = 4, 2
TOLERANCE = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=12, seed=5, quiet=True)


def make_config(corpus: dict, exp_dir: Path, epochs: int):  # noqa: ANN201
    return Configuration({
        "model": {"name": "deepspeech2", "parameters": TINY_PARAMETERS}, "exp_dir": str(exp_dir),
        "data": {"train_manifest": str(corpus["train"]), "dev_manifest": str(corpus["dev"]), "test_manifest": None},
        "optimizer": {"learning_rate": 0.1, "warmup_steps": 0, "plateau_patience": 1},  # plateau, the default
        "trainer": {"epochs": epochs, "batch_size": 8, "val_decode_limit": 2},
    }).config


def last_checkpoint_weights(exp_dir: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(exp_dir / CHECKPOINT_DIR))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "optimizer/")) and "OBJECT_CONFIG" not in name}


def same_runs(straight: list[dict], resumed: list[dict]) -> None:
    assert [epoch["epoch"] for epoch in resumed] == list(range(1, EPOCHS + 1))
    for key in ("loss", "val_loss", "learning_rate"):
        np.testing.assert_allclose([epoch[key] for epoch in resumed], [epoch[key] for epoch in straight],
                                   **TOLERANCE, err_msg=key)


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    exp_dir = tmp_path_factory.mktemp("straight")
    result = train(make_config(corpus, exp_dir, EPOCHS))
    rates = [epoch["learning_rate"] for epoch in result.history]
    assert rates[-1] < rates[0]  # the plateau schedule divided the rate: its state matters on resume
    return exp_dir, result


@pytest.mark.slow
def test_stopped_after_k_epochs_and_resumed_equals_uninterrupted(corpus, tmp_path, straight):
    straight_dir, straight_result = straight
    first = train(make_config(corpus, tmp_path, STOP_AFTER))
    second = train(make_config(corpus, tmp_path, EPOCHS))
    assert (first.epochs_this_run, second.epochs_this_run, second.epochs_run) == (STOP_AFTER, EPOCHS - STOP_AFTER,
                                                                                  EPOCHS)
    same_runs(straight_result.history, first.history + second.history)
    expected, got = last_checkpoint_weights(straight_dir), last_checkpoint_weights(tmp_path)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], **TOLERANCE, err_msg=name)
    for ours, theirs in zip(second.model.get_weights(), straight_result.model.get_weights()):  # the best weights
        np.testing.assert_allclose(ours, theirs, **TOLERANCE)


@pytest.mark.slow
def test_a_checkpoint_of_before_plateau_decays_resumes_with_the_decays_its_rate_implies(corpus, tmp_path, straight):
    _, straight_result = straight
    first = train(make_config(corpus, tmp_path, STOP_AFTER))
    # rewrite the last checkpoint as the trainer wrote it before: scheduled_learning_rate, no plateau_decays
    trainer = Trainer(make_config(corpus, tmp_path, EPOCHS))
    trainer._load_data()
    trainer._build()
    trainer.checkpoints.restore()
    state = trainer.state
    decays = int(state.plateau_decays.numpy())
    assert decays >= 1  # else a lost decay count would go unnoticed
    legacy = tf.train.Checkpoint(
        model=trainer.model, optimizer=trainer.optimizer, epoch=state.epoch, best_val_loss=state.best_val_loss,
        epochs_without_improvement=state.epochs_without_improvement, plateau_wait=state.plateau_wait,
        scheduled_learning_rate=tf.Variable(0.1 * 0.5 ** decays, dtype=tf.float64),
        elapsed_seconds=state.elapsed_seconds)
    fingerprint = (tmp_path / CHECKPOINT_DIR / "fingerprint.json").read_bytes()
    shutil.rmtree(tmp_path / CHECKPOINT_DIR)
    tf.train.CheckpointManager(legacy, str(tmp_path / CHECKPOINT_DIR), max_to_keep=2).save(checkpoint_number=STOP_AFTER)
    (tmp_path / CHECKPOINT_DIR / "fingerprint.json").write_bytes(fingerprint)
    assert not any(name.startswith("plateau_decays") for name, _ in
                   tf.train.list_variables(str(tmp_path / CHECKPOINT_DIR)))
    keras.backend.clear_session()
    second = train(make_config(corpus, tmp_path, EPOCHS))
    same_runs(straight_result.history, first.history + second.history)
