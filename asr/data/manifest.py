"""Dataset manifests: JSON lines (NeMo style) and Mozilla DeepSpeech CSV.

A manifest lists utterances: an audio file, its duration in seconds and its transcript.

* JSON lines: one object per line, ``{"audio_filepath": ..., "duration": ..., "text": ...}``;
  other keys are ignored, blank lines are allowed.
* Mozilla DeepSpeech CSV: a header ``wav_filename,wav_filesize,transcript``; the duration is
  read from the audio file's header (``soundfile.info``) unless a ``duration`` column exists.

Relative audio paths are resolved against the manifest's folder. ``write_manifest`` always
writes JSON lines atomically (through ``asr.files.atomic_path``), so a reader never sees half
a manifest. Clips longer than ``max_duration`` are skipped and counted: ``read_manifest``
logs one warning line, ``read_manifest_with_stats`` also returns the counts.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import soundfile

from asr.errors import UserError, first_line
from asr.files import atomic_path

logger = logging.getLogger(__name__)

CSV_HEADER = ("wav_filename", "wav_filesize", "transcript")


@dataclass(frozen=True)
class Utterance:
    """One utterance: absolute audio path, duration in seconds, transcript."""

    audio_filepath: Path
    duration: float
    text: str


@dataclass(frozen=True)
class ManifestStats:
    """What reading a manifest kept and skipped."""

    path: Path
    total: int  # utterances in the file
    kept: int
    skipped_too_long: int
    max_duration: float | None

    def summary(self) -> str:
        """One line for logs: ``skipped N of M utterances longer than X s (file)``."""
        return (f"{self.path}: skipped {self.skipped_too_long} of {self.total} utterances "
                f"longer than {self.max_duration:g} s")


def _absolute(folder: Path, audio: str) -> Path:
    """``audio`` as an absolute, normalised path (relative ones start at ``folder``)."""
    candidate = Path(audio).expanduser()
    if not candidate.is_absolute():
        candidate = folder / candidate
    return Path(os.path.normpath(candidate.absolute()))


def _parse_duration(value: object, where: str) -> float:
    try:
        duration = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{where}: duration {value!r} is not a number") from None
    if not math.isfinite(duration) or duration < 0:
        raise UserError(f"{where}: duration {value!r} must be a finite number >= 0")
    return duration


def _read_json_lines(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Utterance]:
    folder = path.parent
    for line_number, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with audio_filepath, duration, text")
        missing = [key for key in ("audio_filepath", "duration", "text") if key not in record]
        if missing:
            raise UserError(f"{where}: missing key(s) {', '.join(missing)}")
        audio, text = record["audio_filepath"], record["text"]
        if not isinstance(audio, str) or not audio:
            raise UserError(f"{where}: audio_filepath must be a non-empty string")
        if not isinstance(text, str):
            raise UserError(f"{where}: text must be a string")
        duration = _parse_duration(record["duration"], where)
        yield Utterance(_absolute(folder, audio), duration, text)


def _read_csv(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Utterance]:
    folder = path.parent
    numbered = list(lines)
    reader = csv.reader(line for _, line in numbered)
    header: list[str] | None = None
    for (line_number, _), row in zip(numbered, reader):
        where = f"{path}:{line_number}"
        if not row or not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            missing = [name for name in ("wav_filename", "transcript") if name not in header]
            if missing:
                raise UserError(f"{where}: CSV header must name {', '.join(CSV_HEADER)}; "
                                f"missing {', '.join(missing)}")
            continue
        if len(row) != len(header):
            raise UserError(f"{where}: expected {len(header)} columns, found {len(row)}")
        record = dict(zip(header, row))
        if not record["wav_filename"]:
            raise UserError(f"{where}: empty wav_filename")
        size = record.get("wav_filesize", "").strip()
        if size and not (size.isascii() and size.isdigit()):
            raise UserError(f"{where}: wav_filesize {size[:40]!r} is not a size in bytes (a whole number >= 0)")
        audio = _absolute(folder, record["wav_filename"])
        if record.get("duration"):
            duration = _parse_duration(record["duration"], where)
        else:
            try:
                duration = float(soundfile.info(str(audio)).duration)
            except Exception as error:  # soundfile raises RuntimeError/LibsndfileError/OSError
                raise UserError(f"{where}: cannot read the duration of {audio}: "
                                f"{first_line(error)}") from None
        yield Utterance(audio, duration, record["transcript"])


def _is_csv(path: Path, first_line: str) -> bool:
    if path.suffix.lower() == ".csv":
        return True
    return first_line.lstrip().startswith("wav_filename")


def read_manifest_with_stats(path: str | Path,
                             max_duration: float | None = None) -> tuple[list[Utterance], ManifestStats]:
    """Read a manifest; return the utterances kept and what was skipped.

    Raises ``UserError`` (naming the file and line) for a missing file or a bad line.
    """
    path = Path(path)
    if max_duration is not None and max_duration <= 0:
        raise ValueError(f"max_duration must be > 0, got {max_duration}")
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    lines = list(enumerate(text.splitlines(), start=1))
    first = next((line for _, line in lines if line.strip()), "")
    reader = _read_csv if _is_csv(path, first) else _read_json_lines
    utterances: list[Utterance] = []
    total = 0
    for utterance in reader(path, lines):
        total += 1
        if max_duration is None or utterance.duration <= max_duration:
            utterances.append(utterance)
    stats = ManifestStats(path, total, len(utterances), total - len(utterances), max_duration)
    return utterances, stats


def read_manifest(path: str | Path, max_duration: float | None = None) -> list[Utterance]:
    """Read a JSON-lines or Mozilla CSV manifest; skip clips over ``max_duration`` seconds.

    Skipped clips are never silent: one warning line ``skipped N of M utterances longer
    than X s`` goes to the ``asr.data.manifest`` logger.
    """
    utterances, stats = read_manifest_with_stats(path, max_duration)
    if stats.skipped_too_long:
        logger.warning(stats.summary())
    return utterances


def _manifest_path(audio: Path, folder: Path, relative: bool) -> str:
    audio = Path(os.path.normpath(Path(audio).absolute()))
    if relative:
        try:
            return audio.relative_to(folder).as_posix()
        except ValueError:
            pass
    return str(audio)


def write_manifest(path: str | Path, utterances: Iterable[Utterance], relative: bool = True) -> int:
    """Write ``utterances`` as JSON lines, atomically; return how many were written.

    With ``relative`` (the default) audio files under the manifest's folder are written
    relative to it, so the folder can be moved; others are written as absolute paths.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(os.path.normpath(path.parent.absolute()))
    count = 0
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8") as stream:
        for utterance in utterances:
            if not isinstance(utterance, Utterance):
                raise ValueError(f"write_manifest expects Utterance items, got {type(utterance).__name__}")
            record = {"audio_filepath": _manifest_path(utterance.audio_filepath, folder, relative),
                      "duration": round(float(utterance.duration), 6),
                      "text": utterance.text}
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
