"""The learning rate of every training step, as one pure function (after nanoGPT's ``get_lr``).

``optimizer.schedule``:

* ``constant``: ``learning_rate``;
* ``exponential``: ``learning_rate * decay_rate ** epochs_done``;
* ``plateau`` (the default): ``learning_rate * decay_rate ** plateau_decays``, where a decay happens
  after ``plateau_patience`` epochs in a row without a lower validation loss (:func:`after_epoch`);
* ``cosine``: from ``learning_rate`` down half a cosine to ``min_learning_rate`` over the run, measured
  in steps over ``trainer.epochs`` or in time over ``trainer.time_limit_minutes``, whichever is further
  along, so a fixed time budget ends at the lowest rate whatever the machine's speed.

Any schedule is multiplied by a linear warmup over the first ``warmup_steps`` steps.
The state a schedule needs across epochs (``plateau_wait``, ``plateau_decays``) is passed in; the
trainer keeps it in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def cosine_learning_rate(peak: float, floor: float, progress: float) -> float:
    """``peak`` at progress 0, falling along half a cosine to ``floor`` at progress 1 (and after)."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(step: int, elapsed_seconds: float, config: Any, *, total_steps: int,
                  time_limit_seconds: float | None = None, epochs_done: int = 0, plateau_decays: int = 0) -> float:
    """The rate of training step ``step`` (0-based; ``config`` is ``optimizer``'s configuration).

    ``elapsed_seconds`` is the training time spent, counted against ``time_limit_seconds`` (cosine only).
    """
    peak = float(config.learning_rate)
    schedule = config.schedule
    if schedule == "cosine":
        progress = step / max(1, total_steps)
        if time_limit_seconds:
            progress = max(progress, elapsed_seconds / time_limit_seconds)
        rate = cosine_learning_rate(peak, float(config.min_learning_rate), progress)
    elif schedule == "exponential":
        rate = peak * float(config.decay_rate) ** epochs_done
    elif schedule == "plateau":
        rate = peak * float(config.decay_rate) ** plateau_decays
    else:  # constant
        rate = peak
    warmup = int(config.warmup_steps)
    if warmup > 0:
        rate *= min(1.0, (step + 1) / warmup)
    return rate


@dataclass(frozen=True)
class Plateau:
    """The plateau schedule's memory: epochs in a row without improvement, and decays so far."""

    wait: int = 0
    decays: int = 0


def after_epoch(plateau: Plateau, improved: bool, config: Any) -> Plateau:
    """The plateau state after an epoch: a decay once ``plateau_patience`` epochs in a row did not improve."""
    if config.schedule != "plateau" or improved:
        return Plateau(0, plateau.decays)
    if plateau.wait + 1 >= int(config.plateau_patience):
        return Plateau(0, plateau.decays + 1)
    return Plateau(plateau.wait + 1, plateau.decays)
