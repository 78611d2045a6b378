"""Training examples and the ``tf.data`` input pipeline.

Where features come from is a seam: the pipeline takes ``features_for(utterance) -> [T, F]``
(in-memory arrays, or the on-disk feature cache when ``data.cache_dir`` is set) and calls it
inside ``tf.data`` with parallel calls. Batches are formed by sort-then-batch length
bucketing: utterances sorted by (jittered) length, cut into batches, batches shuffled. The
first epoch can be SortaGrad: sorted, no jitter, shortest batches first. Epoch ``k``'s order
depends only on ``(seed, k)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from asr.audio.augment import spec_augment, spec_augment_enabled, vocal_tract_perturb
from asr.audio.features import extract_features
from asr.data.manifest import Utterance
from asr.errors import UserError
from asr.models.ctc import minimum_frames
from asr.text import Alphabet, encode_transcript

logger = logging.getLogger(__name__)

FeaturesFor = Callable[[Utterance], np.ndarray]
LENGTH_JITTER = 0.05  # relative noise on the sort key, so batches differ between epochs


@dataclass(frozen=True)
class Example:
    """One training utterance: its manifest entry, labels and feature frame count."""

    utterance: Utterance
    labels: np.ndarray  # int32, 1-based symbols
    num_frames: int


def prepare_examples(utterances: Sequence[Utterance], alphabet: Alphabet, frames_for: Callable[[Utterance], int],
                     output_lengths: Callable[[int], int], split: str = "train") -> list[Example]:
    """Encode transcripts; skip (and count) utterances too short for their transcripts under CTC.

    A transcript with symbols outside the alphabet raises ``UserError`` naming the file.
    """
    examples, too_short, empty = [], 0, 0
    for utterance in utterances:
        try:
            labels = encode_transcript(utterance.text, alphabet)
        except UserError as error:
            raise UserError(f"{split} utterance {utterance.audio_filepath}: {error}") from None
        if len(labels) == 0:
            empty += 1
            continue
        frames = int(frames_for(utterance))
        if output_lengths(frames) < minimum_frames(labels.tolist()):
            too_short += 1
            continue
        examples.append(Example(utterance, labels, frames))
    if too_short or empty:
        logger.warning("%s: skipped %d of %d utterances (%d too short for their transcript under CTC, "
                       "%d with an empty transcript)", split, too_short + empty, len(utterances), too_short, empty)
    if not examples:
        raise UserError(f"{split}: no usable utterances (of {len(utterances)})")
    return examples


def batch_order(examples: Sequence[Example], batch_size: int, epoch: int, seed: int,
                sortagrad: bool, shuffle: bool) -> list[int]:
    """Example indices in batch order: consecutive runs of ``batch_size``, the partial batch last."""
    lengths = np.asarray([example.num_frames for example in examples], dtype=np.float64)
    rng = np.random.default_rng([seed, epoch])
    sorted_epoch = not shuffle or (sortagrad and epoch == 0)
    keys = lengths if sorted_epoch else lengths * rng.uniform(1 - LENGTH_JITTER, 1 + LENGTH_JITTER, len(lengths))
    order = np.argsort(keys, kind="stable")
    full = len(order) // batch_size
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(full)]
    if not sorted_epoch:
        rng.shuffle(batches)
    rest = order[full * batch_size:]
    return [int(index) for batch in batches for index in batch] + [int(index) for index in rest]


def make_dataset(examples: Sequence[Example], features_for: FeaturesFor, num_features: int, batch_size: int, *,
                 epoch: int = 0, seed: int = 0, sortagrad: bool = False, shuffle: bool = False,
                 augment_config: Any = None, waveform_augmenter: Any = None, sample_rate: int = 16000) -> tf.data.Dataset:
    """Padded batches ``{"features" [B,T,F], "feature_lengths" [B], "labels" [B,L], "label_lengths" [B], "index" [B]}``.

    ``index`` points into ``examples`` (to name files when something goes wrong). With an
    ``augment_config`` asking for them, each utterance's log-mel bands are warped (``vtlp_warp``, for
    features of ``sample_rate``) and SpecAugment masks it; both depend only on ``(seed, epoch, index)``,
    so a resumed run sees the same ones. A ``waveform_augmenter``
    (``asr.audio.augment.WaveformAugmenter``) replaces ``features_for``: each utterance is read, sped up
    or slowed down and mixed with noise as ``(seed, epoch, index)`` draws, then featurised.
    """
    order = batch_order(examples, batch_size, epoch, seed, sortagrad, shuffle)
    augment = augment_config is not None and spec_augment_enabled(augment_config)
    vtlp_warp = float(augment_config.vtlp_warp) if augment_config is not None else 0.0

    def load(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        example = examples[int(index)]
        if waveform_augmenter is not None:
            features = waveform_augmenter(example.utterance.audio_filepath, example.labels, (seed, epoch, int(index)))
        else:
            features = features_for(example.utterance)
        features = np.asarray(features, dtype=np.float32)
        return features, example.labels

    def to_element(index: tf.Tensor) -> dict[str, tf.Tensor]:
        features, labels = tf.numpy_function(load, [index], (tf.float32, tf.int32), stateful=False)
        features.set_shape([None, num_features])
        labels.set_shape([None])
        mask_seed = tf.stack([tf.constant(seed * 1_000_003 + epoch, tf.int64), tf.cast(index, tf.int64)])
        if vtlp_warp > 0:
            warp_seed = tf.random.experimental.stateless_fold_in(mask_seed, 1)
            features = vocal_tract_perturb(features, vtlp_warp, warp_seed, sample_rate)
        if augment:
            features = spec_augment(features, augment_config, mask_seed)
        return {"features": features, "feature_lengths": tf.shape(features)[0], "labels": labels,
                "label_lengths": tf.shape(labels)[0], "index": tf.cast(index, tf.int32)}

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(order, dtype=np.int64))
    dataset = dataset.map(to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.padded_batch(batch_size, padded_shapes={"features": [None, num_features], "feature_lengths": [],
                                                              "labels": [None], "label_lengths": [], "index": []})
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def in_memory_features(utterances: Sequence[Utterance], features_config: Any, jobs: int | None = None,
                       label: str = "features") -> FeaturesFor:
    """Compute every utterance's features once (worker processes) and serve them from memory."""
    unique = list(dict.fromkeys(utterance.audio_filepath for utterance in utterances))
    step = max(1, len(unique) // 10)

    def progress(done: int, total: int) -> None:
        if total >= 100 and (done % step == 0 or done == total):
            logger.info("%s: %d/%d files", label, done, total)

    arrays = extract_features(unique, features_config, jobs=jobs, progress=progress)
    table = dict(zip(unique, arrays))
    return lambda utterance: table[utterance.audio_filepath]
