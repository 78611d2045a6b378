"""Batch transcription: features → acoustic model → decoder, with batches sorted by length.

``asr transcribe FILES… --model M [--decoder greedy|beam|beam_lm] [--json]`` prints one
line per file (``path<TAB>text``) or one JSON object per file. ``asr evaluate`` and
``asr lm tune`` reuse :func:`acoustic_logits` and :func:`decode_logits` from here.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from asr.decoding.decoders import Decoder, make_decoder
from asr.errors import UserError

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


def load_pipeline(model: str | Path) -> Any:
    """Load a model bundle; any failure to read it is the user's file, so a UserError."""
    from asr import load_model

    return load_model(str(model))


def bundled_language_model(pipeline: Any) -> Optional[Path]:
    """Path of the LM unpacked from the pipeline's bundle, or None."""
    language_model = getattr(pipeline, "language_model", None)
    return Path(language_model) if language_model else None


def decoder_config(pipeline: Any, name: Optional[str] = None) -> Any:
    """The bundle's decoder configuration, with ``name`` swapped in when given."""
    from omegaconf import OmegaConf

    config = OmegaConf.create(OmegaConf.to_container(pipeline.configuration.config.decoder, resolve=True))
    if name is not None:
        config.name = name
    return config


def decoder_for(pipeline: Any, name: Optional[str] = None, workers: Optional[int] = None) -> Decoder:
    """A decoder for ``pipeline``: its configured one, or ``name``. beam_lm uses the bundled LM
    (the configuration's ``lm_path`` then names its entry in the bundle), else ``lm_path``."""
    config = decoder_config(pipeline, name)
    lm_path = bundled_language_model(pipeline)
    if config.name == "beam_lm" and lm_path is None and not config.get("lm_path"):
        raise UserError("decoder beam_lm needs a language model, and this bundle has none: "
                        "build one (asr lm build) and add it (asr lm tune --lm FILE)")
    return make_decoder(config, pipeline.alphabet, lm_path=lm_path, workers=workers)


def _length_sorted_batches(lengths: Sequence[int], max_frames: int, max_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (shortest first), each at most
    ``max_size`` utterances and about ``max_frames`` padded frames."""
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


def acoustic_logits(
    pipeline: Any,
    files: Sequence[str | Path],
    timings: Optional[Timings] = None,
    jobs: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    failures: Optional[list[tuple[int, str]]] = None,
) -> tuple[list[np.ndarray], list[float]]:
    """Logits ``[T'_i, V]`` of each file (padding removed) and its duration in seconds, in input order.

    An unreadable file raises ``UserError``; with a ``failures`` list it is left out instead and
    ``(its index, the reason)`` is appended there (the results then hold the other files, in order).
    """
    from asr.audio.features import extract_features, pad_features
    from asr.models.architectures import output_lengths

    timings = timings if timings is not None else Timings()
    config = pipeline.configuration.config
    started = time.perf_counter()
    if jobs is None:
        jobs = 1 if len(files) < FEATURE_POOL_MIN_FILES else None
    features = extract_features([str(path) for path in files], config.features, jobs=jobs,
                                keep_going=failures is not None)
    if failures is not None:
        failures.extend((index, str(item)) for index, item in enumerate(features) if isinstance(item, UserError))
        features = [item for item in features if not isinstance(item, UserError)]
        if progress and len(features) < len(files):
            progress(len(files) - len(features), len(files))
    timings.features += time.perf_counter() - started
    hop_seconds = float(config.features.hop_ms) / 1000.0
    durations = [max(len(item) - 1, 0) * hop_seconds for item in features]
    logits: list[Optional[np.ndarray]] = [None] * len(files)
    started = time.perf_counter()
    done = 0
    for batch_indices in _length_sorted_batches([len(item) for item in features], BATCH_FRAMES, MAX_BATCH_SIZE):
        batch, lengths = pad_features([features[index] for index in batch_indices])
        output = np.asarray(pipeline.predict(batch))
        frames = np.minimum(np.asarray(output_lengths(lengths, config.model)), output.shape[1])
        for row, index in enumerate(batch_indices):
            logits[index] = output[row, : int(frames[row])]
        done += len(batch_indices)
        if progress:
            progress(done + len(files) - len(features), len(files))
    timings.acoustic_model += time.perf_counter() - started
    return [item for item in logits if item is not None], durations


def decode_logits(decoder: Decoder, logits: Sequence[np.ndarray], timings: Optional[Timings] = None) -> list[str]:
    """Decode per-utterance logits ``[T'_i, V]``; similar lengths are padded together."""
    timings = timings if timings is not None else Timings()
    started = time.perf_counter()
    texts: list[str] = [""] * len(logits)
    lengths = [len(item) for item in logits]
    for chunk in _length_sorted_batches(lengths, max_frames=sys.maxsize, max_size=DECODE_CHUNK):
        width = max(lengths[index] for index in chunk)
        batch = np.zeros((len(chunk), max(width, 1), logits[chunk[0]].shape[-1]), dtype=np.float32)
        for row, index in enumerate(chunk):
            batch[row, : lengths[index]] = logits[index]
        for index, text in zip(chunk, decoder.decode(batch, [lengths[index] for index in chunk])):
            texts[index] = text
    timings.decoding += time.perf_counter() - started
    return texts


def transcribe_files(
    pipeline: Any, files: Sequence[str | Path], decoder: Decoder, timings: Optional[Timings] = None,
    failures: Optional[list[tuple[int, str]]] = None,
) -> list[Transcript]:
    """Transcripts of ``files`` in input order; with a ``failures`` list, unreadable files are left out
    and reported there (see :func:`acoustic_logits`)."""
    logits, durations = acoustic_logits(pipeline, files, timings, failures=failures)
    texts = decode_logits(decoder, logits, timings)
    failed = {index for index, _reason in failures or ()}
    readable = [path for index, path in enumerate(files) if index not in failed]
    return [Transcript(Path(path), text, duration) for path, text, duration in zip(readable, texts, durations)]


def main(files: Sequence[Path], model: str, decoder: Optional[str] = None, as_json: bool = False) -> None:
    """``asr transcribe``."""
    if not files:
        raise UserError("no audio files given")
    missing = [str(path) for path in files if not Path(path).is_file()]
    if len(missing) == len(files):  # nothing to transcribe: say so before the model loads
        raise UserError(f"audio file not found: {', '.join(missing)}")
    pipeline = load_pipeline(model)
    failures: list[tuple[int, str]] = []
    with decoder_for(pipeline, decoder) as chosen:
        # the readable files are transcribed and printed; the others are reported after them
        for transcript in transcribe_files(pipeline, files, chosen, failures=failures):
            if as_json:
                print(json.dumps(transcript.to_dict(), ensure_ascii=False))
            else:
                print(f"{transcript.path}\t{transcript.text}")
    sys.stdout.flush()
    if len(failures) == 1:
        raise UserError(failures[0][1])
    if failures:
        reasons = "; ".join(reason for _index, reason in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        raise UserError(f"{len(failures)} of {len(files)} files could not be transcribed: {reasons}{more}")
