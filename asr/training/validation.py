"""Transcribing a split with the model being trained (validation WER during training, the test WER after).

Kept apart from the loop: the one inference path (``asr.inference``) is to take this over.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from asr.audio.features import pad_features
from asr.data.splits import SplitData
from asr.decoding.decoders import greedy_decode
from asr.models.architectures import output_lengths
from asr.text import Alphabet

_PREDICT_FUNCTIONS: dict[int, Any] = {}


def predict_logits(model: keras.Model, features: np.ndarray) -> np.ndarray:
    """``model(features)`` through one cached ``tf.function`` per model (no retracing per shape)."""
    key = id(model)
    if key not in _PREDICT_FUNCTIONS or _PREDICT_FUNCTIONS[key][0] is not model:
        function = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        _PREDICT_FUNCTIONS[key] = (model, function)
    return np.asarray(_PREDICT_FUNCTIONS[key][1](tf.convert_to_tensor(features, tf.float32)))


def transcribe_examples(model: keras.Model, data: SplitData, alphabet: Alphabet, config: DictConfig,
                        limit: int | None = None, batch_size: int | None = None,
                        decode: Any = None) -> tuple[list[str], list[str]]:
    """Transcripts of the first ``limit`` examples: (references, hypotheses).

    ``decode(logits, lengths)`` turns a batch into text (e.g. a ``Decoder``'s ``decode``); greedy by default.
    """
    decode = decode or (lambda logits, lengths: greedy_decode(logits, alphabet, lengths))
    examples = data.examples if limit is None else data.examples[:limit]
    batch_size = batch_size or int(config.trainer.batch_size)
    references, hypotheses = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        features, lengths = pad_features([data.features_for(example.utterance) for example in chunk])
        logits = predict_logits(model, features)
        hypotheses += decode(logits, output_lengths(lengths, config.model))
        references += [alphabet.decode(example.labels.tolist()) for example in chunk]
    return references, hypotheses
