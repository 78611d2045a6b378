"""Defaults that every real run uses: warmup, the plateau schedule, early stopping, the optimizers and clipnorm.

Real tiny trainings (tests/tiny_model.py) on a synthetic corpus; the closed-form optimizer checks run
one update on one variable.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from asr.configuration import Configuration, OptimizerConfig
from asr.data.dataset import make_dataset
from asr.data.synth import synthesize_corpus
from asr.training.loop import Trainer, make_optimizer
from tests.tiny_model import TINY_PARAMETERS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=12, seed=5, quiet=True)


def make_config(corpus: dict, exp_dir: Path, optimizer: dict, **trainer):  # noqa: ANN201
    return Configuration({
        "model": {"name": "deepspeech2", "parameters": TINY_PARAMETERS}, "exp_dir": str(exp_dir),
        "data": {"train_manifest": str(corpus["train"]), "dev_manifest": str(corpus["dev"]), "test_manifest": None},
        "optimizer": optimizer,
        "trainer": {"batch_size": 8, "val_decode_limit": 2, **trainer},
    }).config


def fit(config) -> tuple[Trainer, object]:  # noqa: ANN001
    keras.utils.set_random_seed(int(config.seed))
    trainer = Trainer(config)
    return trainer, trainer.fit()


def test_warmup_raises_the_rate_linearly_over_the_first_steps(corpus, tmp_path):
    trainer, result = fit(make_config(corpus, tmp_path, {"schedule": "constant", "learning_rate": 0.003,
                                                         "warmup_steps": 5}, epochs=3, early_stopping_patience=0))
    steps_per_epoch = int(trainer.optimizer.iterations.numpy()) // 3
    assert steps_per_epoch == 2  # 8 + 2 training utterances: the rate of each epoch's last step is below
    rates = [epoch["learning_rate"] for epoch in result.history]
    assert rates == pytest.approx([0.003 * 2 / 5, 0.003 * 4 / 5, 0.003])


def test_plateau_divides_the_rate_on_a_stall_and_early_stopping_ends_the_run(corpus, tmp_path):
    # a rate high enough for the dev loss to stall; patience 1 (plateau) and 2 (early stopping)
    config = make_config(corpus, tmp_path, {"learning_rate": 0.1, "warmup_steps": 0, "plateau_patience": 1},
                         epochs=6, early_stopping_patience=2)
    assert config.optimizer.schedule == "plateau" and config.optimizer.decay_rate == 0.5  # the defaults
    _, result = fit(config)
    losses = [epoch["val_loss"] for epoch in result.history]
    rates = [epoch["learning_rate"] for epoch in result.history]
    best, decays, stalled, expected = np.inf, 0, 0, []
    for loss in losses:  # the rule, replayed on the losses the run saw
        expected.append(0.1 * 0.5 ** decays)
        improved = loss < best
        best, stalled = (loss, 0) if improved else (best, stalled + 1)
        decays += 0 if improved else 1
    assert rates == pytest.approx(expected)
    assert decays >= 1, losses  # the schedule was exercised
    assert result.stopped_early and len(result.history) < 6
    assert stalled == 2 and result.best_val_loss == pytest.approx(best)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_each_optimizer_trains_every_weight_of_the_model(corpus, tmp_path, name):
    config = make_config(corpus, tmp_path, {"name": name, "weight_decay": 0.01, "clipnorm": 1.0}, epochs=1)
    trainer = Trainer(config)
    trainer._load_data()
    trainer._build()
    probe = make_dataset(trainer.train_data.examples[:1], trainer.train_data.features_for,
                         int(config.features.num_features), 1)
    trainer._step_functions(trainer.strategy.experimental_distribute_dataset(probe).element_spec)
    before = [variable.numpy().copy() for variable in trainer.model.trainable_variables]
    run = trainer._train_epoch(0)
    assert np.isfinite(run.loss) and int(trainer.optimizer.iterations.numpy()) == 2
    after = [variable.numpy() for variable in trainer.model.trainable_variables]
    unchanged = [variable.path for variable, old, new in zip(trainer.model.trainable_variables, before, after)
                 if np.array_equal(old, new)]
    assert not unchanged


def one_update(settings: dict, weight: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    config = OmegaConf.merge(OmegaConf.structured(OptimizerConfig()), settings)
    variable = tf.Variable(weight)
    optimizer = make_optimizer(config)
    optimizer.apply_gradients([(tf.constant(gradient), variable)])
    return variable.numpy() - weight


WEIGHT = np.array([1.0, -2.0, 0.5])
GRADIENT = np.array([3.0, -4.0, 0.0])  # norm 5


def test_sgd_is_nesterov_momentum_and_clipnorm_clips_the_gradient_norm():
    rate = 0.1
    assert one_update({"name": "sgd", "learning_rate": rate, "clipnorm": None}, WEIGHT, GRADIENT) == pytest.approx(
        -rate * 1.9 * GRADIENT)  # first Nesterov step: -rate * (1 + momentum) * gradient
    assert one_update({"name": "sgd", "learning_rate": rate, "clipnorm": 1.0}, WEIGHT, GRADIENT) == pytest.approx(
        -rate * 1.9 * GRADIENT / 5)


def test_adam_and_adamw_first_steps():
    rate = 0.01
    step = -rate * np.sign(GRADIENT)  # Adam's first step is the rate against the gradient's sign
    assert one_update({"name": "adam", "learning_rate": rate}, WEIGHT, GRADIENT) == pytest.approx(step, abs=1e-6)
    decayed = one_update({"name": "adamw", "learning_rate": rate, "weight_decay": 0.5}, WEIGHT, GRADIENT)
    assert decayed == pytest.approx(step - rate * 0.5 * WEIGHT, abs=1e-6)  # decoupled weight decay
