"""``asr.training.schedule``: the learning rate of every step, and the plateau schedule's memory."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from asr.configuration import OptimizerConfig
from asr.training.schedule import Plateau, after_epoch, learning_rate


def optimizer(**settings):
    return OmegaConf.merge(OmegaConf.structured(OptimizerConfig()), settings)


def test_the_default_is_plateau_with_warmup():
    config = optimizer()
    assert config.schedule == "plateau" and config.warmup_steps > 0 and config.plateau_patience > 0


def test_warmup_rises_linearly_to_the_rate_then_holds():
    config = optimizer(schedule="constant", learning_rate=1e-3, warmup_steps=4)
    rates = [learning_rate(step, 0.0, config, total_steps=100) for step in range(6)]
    assert rates == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3])


def test_warmup_multiplies_any_schedule():
    config = optimizer(schedule="plateau", learning_rate=1e-3, decay_rate=0.5, warmup_steps=10)
    assert learning_rate(4, 0.0, config, total_steps=100, plateau_decays=2) == pytest.approx(0.25e-3 * 0.5)


def test_plateau_divides_the_rate_after_patience_epochs_without_improvement():
    config = optimizer(schedule="plateau", learning_rate=1e-3, decay_rate=0.5, plateau_patience=2, warmup_steps=0)
    state, rates = Plateau(), []
    for improved in [True, False, False, False, True, False, False]:
        state = after_epoch(state, improved, config)
        rates.append(learning_rate(0, 0.0, config, total_steps=1, plateau_decays=state.decays))
    assert rates == pytest.approx([1e-3, 1e-3, 0.5e-3, 0.5e-3, 0.5e-3, 0.5e-3, 0.25e-3])
    assert state == Plateau(wait=0, decays=2)


def test_other_schedules_keep_no_plateau_memory():
    config = optimizer(schedule="cosine")
    assert after_epoch(Plateau(), False, config) == Plateau()


def test_exponential_decays_per_epoch_done():
    config = optimizer(schedule="exponential", learning_rate=1e-2, decay_rate=0.9, warmup_steps=0)
    rates = [learning_rate(0, 0.0, config, total_steps=1, epochs_done=epochs) for epochs in range(3)]
    assert rates == pytest.approx([1e-2, 0.9e-2, 0.81e-2])


def test_cosine_follows_steps_or_time_whichever_is_further():
    config = optimizer(schedule="cosine", learning_rate=1.0, min_learning_rate=0.0, warmup_steps=0)
    assert learning_rate(50, 0.0, config, total_steps=100) == pytest.approx(0.5)
    assert learning_rate(50, 0.0, config, total_steps=100, time_limit_seconds=60) == pytest.approx(0.5)
    assert learning_rate(0, 30.0, config, total_steps=100, time_limit_seconds=60) == pytest.approx(0.5)
    assert learning_rate(10, 90.0, config, total_steps=100, time_limit_seconds=60) == pytest.approx(0.0)
