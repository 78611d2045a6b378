"""One split (train, dev or test) ready for training or evaluation: examples and where their features come from.

Features come from memory, or from the on-disk ``FeatureCache`` when ``data.cache_dir`` is set:
then nothing is computed up front (frame counts come from manifest durations) and each file's
features are computed on first use inside ``tf.data`` and reused by later epochs and runs.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from asr.audio.features import file_features
from asr.data.dataset import Example, FeaturesFor, in_memory_features, prepare_examples
from asr.data.feature_cache import FeatureCache
from asr.data.manifest import Utterance, read_manifest
from asr.errors import UserError
from asr.models.architectures import output_lengths
from asr.text import Alphabet


@dataclass
class SplitData:
    """One split ready for training or evaluation."""

    examples: list[Example]
    features_for: FeaturesFor

    @property
    def audio_seconds(self) -> float:
        return float(sum(example.utterance.duration for example in self.examples))


def load_alphabet(config: DictConfig) -> Alphabet:
    return Alphabet.from_file(config.data.alphabet) if config.data.alphabet else Alphabet.default()


class CachedFeatures:
    """``features_for`` backed by the on-disk ``FeatureCache``: computed on first use, then read."""

    def __init__(self, cache_dir: str, features_config: DictConfig) -> None:
        self.cache = FeatureCache(cache_dir)
        self.features_config = OmegaConf.to_container(features_config, resolve=True)
        self.compute = functools.partial(file_features, features_config=self.features_config)

    def __call__(self, utterance: Utterance) -> np.ndarray:
        return self.cache.get_or_compute(utterance.audio_filepath, self.features_config, self.compute)

    def missing(self, paths: Sequence[Path]) -> list[Path]:
        """The paths whose features are not known to be cached (no audio is read to tell)."""
        return [path for path in dict.fromkeys(paths) if self.cache.audio_hash(path, read=False) is None
                or not self.cache.entry_path(path, self.features_config).is_file()]


def features_source(utterances: Sequence[Utterance], config: DictConfig, label: str) -> FeaturesFor:
    """Where features come from: ``data.cache_dir``'s on-disk cache (computed on first use) or memory."""
    cache_dir = config.data.cache_dir
    if not cache_dir:
        return in_memory_features(utterances, config.features, jobs=os.cpu_count(), label=label)
    return CachedFeatures(cache_dir, config.features)


def frames_from_duration(duration: float, features_config: Any) -> int:
    """Feature frames of ``duration`` seconds of audio (``center=True`` framing), without reading it."""
    rate = int(features_config.sample_rate)
    hop = int(round(float(features_config.hop_ms) * rate / 1000))
    return 1 + int(round(float(duration) * rate)) // hop


def load_split(manifest: str, config: DictConfig, alphabet: Alphabet, split: str) -> SplitData:
    """Read a manifest, encode its transcripts; features in memory now, or from the cache when used."""
    utterances = read_manifest(manifest, max_duration=config.data.max_duration)
    if not utterances:
        raise UserError(f"{split} manifest {manifest} has no utterances")
    features_for = features_source(utterances, config, f"{split} features")
    if config.data.cache_dir:  # nothing is computed up front: frame counts come from durations
        def frames_for(utterance: Utterance) -> int:
            return frames_from_duration(utterance.duration, config.features)
    else:
        def frames_for(utterance: Utterance) -> int:
            return len(features_for(utterance))
    examples = prepare_examples(utterances, alphabet, frames_for,
                                lambda frames: int(output_lengths(frames, config.model)), split)
    return SplitData(examples, features_for)
