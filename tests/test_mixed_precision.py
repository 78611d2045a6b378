"""trainer.mixed_precision: the model computes in bfloat16 on CPU (float16 on a GPU), logits and loss stay float32."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from asr.configuration import validate
from asr.data.synth import synthesize_corpus


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_mixed_precision_training_keeps_logits_float32_and_leaves_the_global_policy_alone(tmp_path, rnn_type):
    from asr.training.loop import Trainer

    corpus = synthesize_corpus(tmp_path / "corpus", count=10, seed=3, quiet=True)
    config = validate({
        "model": {"parameters": {"rnn_type": rnn_type, "rnn_sizes": [8], "conv_filters": [2],
                                 "conv_kernels": [[11, 21]], "conv_strides": [[2, 2]]}},
        "data": {"train_manifest": str(corpus["train"]), "dev_manifest": str(corpus["dev"]), "test_manifest": None},
        "trainer": {"epochs": 2, "batch_size": 4, "strategy": "default", "mixed_precision": True,
                    "early_stopping_patience": 0},
        "exp_dir": str(tmp_path / "exp"),
    })
    before = keras.mixed_precision.global_policy().name
    result = Trainer(config).fit()
    assert keras.mixed_precision.global_policy().name == before == "float32"  # other models are not affected
    model = result.model
    rnn = model.get_layer("birnn_0")
    assert rnn.dtype_policy.name == "mixed_bfloat16" and rnn.compute_dtype == "bfloat16"
    assert rnn.forward_layer.cell.kernel.dtype == "float32"  # variables stay float32
    assert model.get_layer("logits").compute_dtype == "float32"
    assert all(np.isfinite(epoch["loss"]) and np.isfinite(epoch["val_loss"]) for epoch in result.history)
    logits = model.predict_on_batch(np.random.default_rng(0).standard_normal((2, 50, 26)).astype(np.float32))
    assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
