"""The one inference path: features -> length-bucketed batches -> acoustic model -> decoder.

``Pipeline.__call__``, ``asr transcribe``, ``asr evaluate``, ``asr lm tune``, the MLflow model and
the test evaluation at the end of training all come through here. Utterances of similar length
are batched together (little padding), each utterance's padding is cut off its logits, and the
model runs through one cached ``tf.function`` per model (no retracing per batch shape).

    logits = logits_of_features(model, config.model, features)   # [T'_i, V] per utterance
    texts = decode_logits(decoder, logits)
    texts = transcribe_features(model, config.model, features, decoder)   # both at once
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from asr.audio.features import extract_features, pad_features
from asr.decoding.decoders import Decoder
from asr.errors import UserError
from asr.models.architectures import BLANK_LOGIT_GAP, output_lengths

BATCH_FRAMES = 16000  # feature frames per acoustic-model batch (160 s of audio at a 10 ms hop)
MAX_BATCH_SIZE = 32
DECODE_CHUNK = 256  # utterances handed to the decoder at once
# Features take ~5 ms per utterance in-process, but each worker process pays ~3 s to import
# librosa: a pool pays only for thousands of files.
FEATURE_POOL_MIN_FILES = 2000


@dataclass(frozen=True)
class Transcript:
    path: Path
    text: str
    duration: float  # seconds of audio (from the feature frame count)

    def to_dict(self) -> dict:
        return {"audio_filepath": str(self.path), "duration": round(self.duration, 3), "text": self.text}


@dataclass
class Timings:
    """Wall-clock seconds spent in each stage."""

    features: float = 0.0
    acoustic_model: float = 0.0
    decoding: float = 0.0

    @property
    def total(self) -> float:
        return self.features + self.acoustic_model + self.decoding


def length_buckets(lengths: Sequence[int], max_frames: int = BATCH_FRAMES,
                   max_size: int = MAX_BATCH_SIZE) -> list[list[int]]:
    """Indices grouped into batches of similar length (shortest first), each at most ``max_size``
    utterances and about ``max_frames`` padded frames (an utterance longer than that goes alone)."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # ascending order: the newcomer is the longest
        if current and (len(current) >= max_size or longest * (len(current) + 1) > max_frames):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


_FORWARD_FUNCTIONS: dict[int, tuple[keras.Model, Any]] = {}


def forward(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """``model(batch, training=False)`` through one cached ``tf.function`` per model."""
    key = id(model)
    if key not in _FORWARD_FUNCTIONS or _FORWARD_FUNCTIONS[key][0] is not model:  # an id can be reused
        function = tf.function(lambda features: model(features, training=False), reduce_retracing=True)
        _FORWARD_FUNCTIONS[key] = (model, function)
    return np.asarray(_FORWARD_FUNCTIONS[key][1](tf.convert_to_tensor(batch, tf.float32)))


def logits_of_features(model: keras.Model, model_config: Any, features: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Logits ``[T'_i, V]`` of each ``[T_i, F]`` feature array (padding removed), in input order."""
    logits: list[np.ndarray] = [np.empty(0)] * len(features)
    for batch_indices in length_buckets([len(item) for item in features]):
        batch, lengths = pad_features([features[index] for index in batch_indices])
        output = forward(model, batch)
        frames = np.minimum(np.asarray(output_lengths(lengths, model_config)), output.shape[1])
        for row, index in enumerate(batch_indices):
            logits[index] = output[row, : int(frames[row])]
    return logits


def pad_logits(logits: Sequence[np.ndarray]) -> np.ndarray:
    """``[B, T'max, V]`` of per-utterance logits; padded frames are a confident blank, as the model writes them."""
    width = max((len(item) for item in logits), default=0)
    labels = logits[0].shape[-1]
    blank = np.full(labels, -BLANK_LOGIT_GAP, dtype=np.float32)
    blank[0] = 0.0
    batch = np.tile(blank, (len(logits), max(width, 1), 1))
    for row, item in enumerate(logits):
        batch[row, : len(item)] = item
    return batch


def decode_logits(decoder: Decoder, logits: Sequence[np.ndarray], timings: Optional[Timings] = None) -> list[str]:
    """Decode per-utterance logits ``[T'_i, V]``; similar lengths are padded together."""
    started = time.perf_counter()
    texts: list[str] = [""] * len(logits)
    lengths = [len(item) for item in logits]
    for chunk in length_buckets(lengths, max_frames=sys.maxsize, max_size=DECODE_CHUNK):
        batch = pad_logits([logits[index] for index in chunk])
        for index, text in zip(chunk, decoder.decode(batch, [lengths[index] for index in chunk])):
            texts[index] = text
    if timings is not None:
        timings.decoding += time.perf_counter() - started
    return texts


def transcribe_features(model: keras.Model, model_config: Any, features: Sequence[np.ndarray],
                        decoder: Decoder) -> list[str]:
    """Transcripts of ``[T_i, F]`` feature arrays, in input order."""
    return decode_logits(decoder, logits_of_features(model, model_config, features))


def features_of_files(files: Sequence[str | Path], features_config: Any, jobs: Optional[int] = None,
                      failures: Optional[list[tuple[int, str]]] = None) -> list[np.ndarray]:
    """Features ``[T_i, F]`` of each file, in input order.

    An unreadable file raises ``UserError``; with a ``failures`` list it is left out instead and
    ``(its index, the reason)`` is appended there (the result then holds the other files, in order).
    """
    if jobs is None:
        jobs = 1 if len(files) < FEATURE_POOL_MIN_FILES else None
    features = extract_features([str(path) for path in files], features_config, jobs=jobs,
                                keep_going=failures is not None)
    if failures is not None:
        failures.extend((index, str(item)) for index, item in enumerate(features) if isinstance(item, UserError))
        features = [item for item in features if not isinstance(item, UserError)]
    return features


def logits_of_files(model: keras.Model, config: Any, files: Sequence[str | Path],
                    timings: Optional[Timings] = None, jobs: Optional[int] = None,
                    failures: Optional[list[tuple[int, str]]] = None) -> tuple[list[np.ndarray], list[float]]:
    """Logits ``[T'_i, V]`` of each file and its duration in seconds, in input order, for a model and its
    training configuration ``config`` (``features`` and ``model``); ``failures`` as in :func:`features_of_files`."""
    timings = timings if timings is not None else Timings()
    started = time.perf_counter()
    features = features_of_files(files, config.features, jobs=jobs, failures=failures)
    timings.features += time.perf_counter() - started
    hop_seconds = float(config.features.hop_ms) / 1000.0
    durations = [max(len(item) - 1, 0) * hop_seconds for item in features]
    started = time.perf_counter()
    logits = logits_of_features(model, config.model, features)
    timings.acoustic_model += time.perf_counter() - started
    return logits, durations


def transcribe_files(model: keras.Model, config: Any, files: Sequence[str | Path], decoder: Decoder,
                     timings: Optional[Timings] = None,
                     failures: Optional[list[tuple[int, str]]] = None) -> list[Transcript]:
    """Transcripts of ``files`` in input order; with a ``failures`` list, unreadable files are left out
    and reported there (see :func:`features_of_files`)."""
    logits, durations = logits_of_files(model, config, files, timings, failures=failures)
    texts = decode_logits(decoder, logits, timings)
    failed = {index for index, _reason in failures or ()}
    readable = [path for index, path in enumerate(files) if index not in failed]
    return [Transcript(Path(path), text, duration) for path, text, duration in zip(readable, texts, durations)]
