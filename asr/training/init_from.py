"""``trainer.init_from``: a run that starts from another model's weights (fine-tuning)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from omegaconf import DictConfig

from asr.bundle import load_bundle
from asr.errors import UserError
from asr.pretrained.registry import check_init_from
from asr.text import Alphabet

logger = logging.getLogger(__name__)


def _weight_name(variable: Any) -> str:
    return str(getattr(variable, "path", None) or variable.name)


def check_weights_fit(source: keras.Model, source_label: str, target: keras.Model, target_label: str) -> None:
    """``target.set_weights(source.get_weights())`` would fit: as many weight arrays, of the same shapes."""
    if len(source.weights) != len(target.weights):
        detail = f"{len(source.weights)} weight arrays there, {len(target.weights)} here"
    else:
        mismatches = [(index, theirs, ours) for index, (theirs, ours) in enumerate(zip(source.weights, target.weights))
                      if tuple(theirs.shape) != tuple(ours.shape)]
        if not mismatches:
            return
        index, theirs, ours = mismatches[0]
        detail = (f"weight {index} ({_weight_name(ours)}) has shape {tuple(theirs.shape)} there, "
                  f"{tuple(ours.shape)} here")

    def describe(model: keras.Model) -> str:
        return f"{model.name} with {model.count_params():,} parameters"

    raise UserError(f"{source_label} does not fit {target_label}: {detail} (there: {describe(source)}; here: "
                    f"{describe(target)}); build the same architecture (the model settings in the bundle's "
                    f"configuration.yaml) or leave trainer.init_from unset")


@dataclass
class Pretrained:
    """The bundle named by ``trainer.init_from``, checked against the configuration."""

    init_from: str
    path: Path
    model: keras.Model

    @property
    def label(self) -> str:
        return f"trainer.init_from={self.init_from!r} ({self.path})"


def load_pretrained(config: DictConfig, alphabet: Alphabet) -> Pretrained:
    """Resolve and load ``trainer.init_from``; its alphabet and features must be the configuration's."""
    path = check_init_from(config, alphabet)
    try:
        bundle = load_bundle(path)
    except UserError as error:
        raise UserError(f"trainer.init_from={config.trainer.init_from!r}: {error}") from None
    return Pretrained(str(config.trainer.init_from), path, bundle.model)


def initialise_from_pretrained(model: keras.Model, config: DictConfig, alphabet: Alphabet) -> Pretrained:
    """Copy ``trainer.init_from``'s weights (BatchNorm statistics included) into ``model``, built from ``config``."""
    pretrained = load_pretrained(config, alphabet)
    check_weights_fit(pretrained.model, pretrained.label, model, "the configured model")
    model.set_weights(pretrained.model.get_weights())
    logger.info("initial weights from %s", pretrained.label)
    return pretrained
