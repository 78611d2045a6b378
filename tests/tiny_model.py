"""A tiny deepspeech2 for tests that train: a few seconds per epoch on 2 cores."""

from __future__ import annotations

TINY_PARAMETERS = {"rnn_type": "gru", "rnn_sizes": [16], "conv_filters": [4], "conv_kernels": [[11, 21]],
                   "conv_strides": [[2, 2]], "dropout": 0.0}


def tiny_overrides(rnn_size: int | None = 16) -> list[str]:
    """Hydra overrides of ``python -m asr.train`` for the tiny model (``rnn_size`` None: the config's own)."""
    overrides = ["model.parameters.rnn_type=gru", "model.parameters.conv_filters=[4]",
                 "model.parameters.conv_kernels=[[11,21]]", "model.parameters.conv_strides=[[2,2]]",
                 "model.parameters.dropout=0.0"]
    if rnn_size is not None:
        overrides.append(f"model.parameters.rnn_sizes=[{rnn_size}]")
    return overrides + ["trainer.batch_size=8", "trainer.val_decode_limit=2", "optimizer.schedule=constant"]
