"""Audio loading and features: any format soundfile/librosa read -> mono -> resample -> MFCC or log-mel.

``get_features(files)`` returns the zero-padded batch ``[B, Tmax, F]`` that the models take.
Padded frames are all zeros (the models derive their masks from that), real frames are
normalised per utterance. TensorFlow is not imported here, so worker processes stay light.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import librosa
import numpy as np
import soundfile
from omegaconf import DictConfig, OmegaConf

from asr.configuration import FeatureType, FeaturesConfig, Normalization
from asr.errors import UserError, first_line

EPSILON = 1e-6
# Features of a few-second clip take ~4 ms; a worker process costs ~2-3 s to start (imports,
# librosa's first-call set-up), so processes only pay for large sets.
MIN_FILES_PER_PROCESS = 250


def typed_features_config(features_config: Any = None) -> FeaturesConfig:
    """``features_config`` as a ``FeaturesConfig``: given one, a DictConfig or a mapping (missing keys take
    the schema's defaults), or None for the defaults. Converted once per call, so per-file work reads
    plain attributes (an OmegaConf merge would cost as much as the features of a short clip)."""
    if features_config is None:
        return FeaturesConfig()
    if isinstance(features_config, FeaturesConfig):
        return features_config
    if isinstance(features_config, DictConfig):
        values = OmegaConf.to_container(features_config, resolve=True)
    elif isinstance(features_config, Mapping):
        values = dict(features_config)
    else:
        raise ValueError(f"features_config must be a FeaturesConfig or a mapping, got {type(features_config).__name__}")
    try:
        return FeaturesConfig(**values)  # type: ignore[arg-type]
    except TypeError as error:  # an unknown key
        raise ValueError(f"features_config: {error}") from None


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read ``path`` as float32 mono at ``sample_rate``; unreadable audio raises ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    try:
        signal, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        signal = signal.mean(axis=1)
    except Exception as soundfile_error:  # soundfile can't read it: try librosa's audioread fallback
        try:
            with warnings.catch_warnings():  # librosa warns about its audioread fallback itself
                warnings.simplefilter("ignore")
                signal, rate = librosa.load(str(path), sr=None, mono=True, dtype=np.float32)
        except Exception:
            reason = first_line(soundfile_error)
            raise UserError(f"cannot read audio file {path}: {reason}") from None
    if signal.size == 0:
        raise UserError(f"audio file {path} has no samples")
    finite = np.isfinite(signal)
    if not finite.all():  # NaN or inf would turn every feature of the file into NaN
        bad = int(signal.size - np.count_nonzero(finite))
        what = "only NaN or infinite samples" if bad == signal.size else f"{bad} NaN or infinite sample(s)"
        raise UserError(f"audio file {path} has {what}: not a valid recording")
    if rate != sample_rate:
        signal = librosa.resample(signal, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(signal, dtype=np.float32)


def compute_features(signal: np.ndarray, features_config: Any = None) -> np.ndarray:
    """MFCC or log-mel features ``[T, F]`` float32 of a mono signal, normalised per utterance."""
    config = typed_features_config(features_config)
    rate = config.sample_rate
    window = int(round(config.window_ms * rate / 1000))
    hop = int(round(config.hop_ms * rate / 1000))
    if window > config.n_fft:
        raise UserError(f"features: window_ms={config.window_ms} is {window} samples, more than n_fft={config.n_fft}")
    common = dict(sr=rate, n_fft=config.n_fft, hop_length=hop, win_length=window, center=True)
    if config.type == FeatureType.mfcc:
        features = librosa.feature.mfcc(y=signal, n_mfcc=config.num_features, n_mels=config.n_mels, **common)
    elif config.type == FeatureType.logmel:
        mel = librosa.feature.melspectrogram(y=signal, n_mels=config.num_features, **common)
        features = np.log(mel + EPSILON)
    else:
        raise UserError(f"features.type={config.type!r} is not one of {', '.join(FeatureType)}")
    features = features.T.astype(np.float32)  # [T, F]
    if config.normalize == Normalization.utterance:
        features = (features - features.mean(axis=0)) / (features.std(axis=0) + EPSILON)
    return np.ascontiguousarray(features, dtype=np.float32)


def file_features(path: str | Path, features_config: Any = None) -> np.ndarray:
    """Features ``[T, F]`` of one audio file."""
    config = typed_features_config(features_config)
    return compute_features(load_audio(path, config.sample_rate), config)


def _file_features_worker(arguments: tuple[str, FeaturesConfig, bool]) -> Any:
    path, config, keep_going = arguments
    if not keep_going:
        return file_features(path, config)
    try:
        return file_features(path, config)
    except UserError as error:  # this file's fault: reported with the others' results
        return error


def extract_features(files: Sequence[str | Path], features_config: Any = None, jobs: int | None = None,
                     progress: Callable[[int, int], None] | None = None, keep_going: bool = False) -> list[Any]:
    """Features of many files, in order, over ``jobs`` worker processes (librosa holds the GIL).

    Workers are started with ``forkserver`` so a parent that already runs TensorFlow is never
    forked. ``progress(done, total)`` is called as results arrive. An unreadable file raises
    ``UserError``; with ``keep_going`` its place in the list holds that ``UserError`` instead.
    """
    config = typed_features_config(features_config)
    total = len(files)
    jobs = min(jobs or os.cpu_count() or 1, total // MIN_FILES_PER_PROCESS)
    if jobs <= 1:
        results = []
        for index, path in enumerate(files):
            results.append(_file_features_worker((str(path), config, keep_going)))
            if progress:
                progress(index + 1, total)
        return results
    context = multiprocessing.get_context("forkserver")
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        chunk = max(1, total // (jobs * 8))
        arguments = [(str(path), config, keep_going) for path in files]
        for features in pool.map(_file_features_worker, arguments, chunksize=chunk):
            results.append(features)
            if progress:
                progress(len(results), total)
    return results


def pad_features(features: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad ``[T_i, F]`` arrays into ``[B, Tmax, F]`` float32 plus int32 lengths ``[B]``."""
    features = list(features)
    if not features:
        raise ValueError("pad_features needs at least one array")
    lengths = np.asarray([len(item) for item in features], dtype=np.int32)
    width = features[0].shape[1]
    batch = np.zeros((len(features), int(lengths.max()), width), dtype=np.float32)
    for row, item in enumerate(features):
        batch[row, : len(item)] = item
    return batch, lengths


def get_features(files: Sequence[str | Path] | str | Path, features_config: Any = None,
                 return_lengths: bool = False, jobs: int | None = 1) -> Any:
    """The padded batch ``[B, Tmax, F]`` of ``files`` (defaults: the default FeaturesConfig).

    With ``return_lengths`` also the true frame counts ``[B]`` (int32).
    """
    if isinstance(files, (str, Path)):
        files = [files]
    batch, lengths = pad_features(extract_features(list(files), features_config, jobs=jobs))
    return (batch, lengths) if return_lengths else batch
