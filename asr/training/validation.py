"""Transcribing a split with the model being trained: validation WER during training, through the one
inference path (``asr.inference``: length-bucketed batches, padding cut off each utterance's logits)."""

from __future__ import annotations

import keras
from omegaconf import DictConfig

from asr.data.splits import SplitData
from asr.decoding.decoders import Decoder
from asr.inference import transcribe_features
from asr.text import Alphabet


def transcribe_split(model: keras.Model, data: SplitData, alphabet: Alphabet, config: DictConfig, decoder: Decoder,
                     limit: int | None = None) -> tuple[list[str], list[str]]:
    """(references, hypotheses) of the first ``limit`` examples of ``data`` (all when ``None``)."""
    examples = data.examples if limit is None else data.examples[:limit]
    features = [data.features_for(example.utterance) for example in examples]
    references = [alphabet.decode(example.labels.tolist()) for example in examples]
    return references, transcribe_features(model, config.model, features, decoder)
