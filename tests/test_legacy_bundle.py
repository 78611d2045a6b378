"""Bundles saved when the GRU layers were ``asr>ProjectedGRU`` still load and give the same logits."""

from pathlib import Path

import keras
import numpy as np
from omegaconf import OmegaConf

import asr
from asr.configuration import ModelConfig
from asr.models.architectures import ProjectedGRU, build_model
from tests.tiny_model import TINY_PARAMETERS

DATA = Path(__file__).parent / "data"


def test_a_bundle_saved_with_projected_gru_loads_and_gives_the_same_logits():
    pipeline = asr.load_model(str(DATA / "legacy_projected_gru.bin"))
    saved = np.load(DATA / "legacy_projected_gru.npz")
    grus = [layer.forward_layer for layer in pipeline.model.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert grus and all(isinstance(gru, ProjectedGRU) for gru in grus)  # the alias, not a look-alike
    np.testing.assert_allclose(pipeline.predict(saved["features"]), saved["logits"], atol=1e-5)


def test_new_models_use_keras_gru():
    config = OmegaConf.merge(OmegaConf.structured(ModelConfig()), {"parameters": TINY_PARAMETERS})
    model = build_model(config, 26, 29)
    grus = [layer.forward_layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert grus and all(type(gru) is keras.layers.GRU for gru in grus)
