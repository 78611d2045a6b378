"""Importers: turn LibriSpeech and Common Voice folders into JSON-lines manifests.

Audio is referenced where it lies, never converted: libsndfile (>= 1.1, via soundfile)
reads FLAC and MP3 alike, and durations come from the file headers. Clips longer than
``max_duration``, unreadable audio files and empty (or missing) transcripts are skipped and
counted; a one-line summary is printed at the end, and the first few unreadable files are
logged by name.

* LibriSpeech: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac`` and
  ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` (``ID TRANSCRIPT`` lines, upper case), found
  anywhere under the folder, so a split folder or the ``LibriSpeech`` root both work.
* Common Voice: ``train.tsv``, ``dev.tsv``, ``test.tsv``, ``validated.tsv``… (tab separated,
  with ``path`` and ``sentence`` columns) and ``clips/*.mp3``.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import soundfile
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from asr.data.manifest import Utterance, write_manifest
from asr.errors import UserError, first_line
from asr.text import normalize_transcript

logger = logging.getLogger(__name__)

MAX_NAMED_UNREADABLE = 5  # unreadable files logged by name; the rest are only counted


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote and what it skipped (and why)."""

    corpus: str
    out: Path
    imported: int
    seconds: float
    too_long: int
    unreadable: int
    empty_transcript: int
    max_duration: Optional[float]

    @property
    def skipped(self) -> int:
        return self.too_long + self.unreadable + self.empty_transcript

    def line(self) -> str:
        """The one-line summary printed at the end of an import."""
        limit = f"{self.max_duration:g} s" if self.max_duration is not None else "the limit"
        return (f"{self.corpus}: wrote {self.imported} utterances ({self.seconds / 3600:.2f} h) to {self.out}; "
                f"skipped {self.skipped}: {self.too_long} longer than {limit}, "
                f"{self.unreadable} unreadable, {self.empty_transcript} with an empty or missing transcript")


@dataclass(frozen=True)
class _Candidate:
    audio: Path
    text: str  # already normalised; "" means empty or missing


def corpus_transcript(text: str) -> str:
    """``asr.text.normalize_transcript``, then punctuation and symbols (apostrophes inside words kept) to spaces.

    Letters, spacing marks and digits of any script are kept (Common Voice is multilingual); characters outside the
    training alphabet are the alphabet's business, not the importer's.
    """
    kept = [character if character == "'" or unicodedata.category(character)[0] in ("L", "M", "N") else " "
            for character in normalize_transcript(text)]
    return " ".join(word.strip("'") for word in "".join(kept).split() if word.strip("'"))


def _probe(path: Path) -> tuple[Optional[float], str]:
    """Duration of ``path`` from its header, or ``(None, reason)`` when it cannot be read."""
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # LibsndfileError, RuntimeError, OSError
        message = first_line(error)
        return None, message
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "no audio frames"
    return float(info.frames) / float(info.samplerate), ""


def _progress(description: str) -> Progress:
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty())


def _write(corpus: str, candidates: Iterable[_Candidate], out: Path, max_duration: Optional[float],
           jobs: Optional[int]) -> ImportSummary:
    """Probe the audio of ``candidates`` in threads, write the manifest, print the summary."""
    if max_duration is not None and max_duration <= 0:
        raise UserError(f"--max-duration must be > 0 seconds, got {max_duration:g}")
    candidates = list(candidates)
    with_text = [candidate for candidate in candidates if candidate.text]
    empty = len(candidates) - len(with_text)
    workers = jobs or min(16, 2 * (os.cpu_count() or 1))
    utterances: list[Utterance] = []
    too_long = unreadable = 0
    seconds = 0.0
    with _progress(f"{corpus}: reading audio headers") as progress, ThreadPoolExecutor(workers) as pool:
        task = progress.add_task("probe", total=len(with_text))
        # soundfile's C calls release the GIL, so threads are enough to overlap the I/O
        for candidate, (duration, reason) in zip(with_text, pool.map(_probe, (c.audio for c in with_text),
                                                                      chunksize=64)):
            progress.advance(task)
            if duration is None:
                unreadable += 1
                if unreadable <= MAX_NAMED_UNREADABLE:
                    logger.warning("%s: skipping unreadable %s: %s", corpus, candidate.audio, reason)
                continue
            if max_duration is not None and duration > max_duration:
                too_long += 1
                continue
            utterances.append(Utterance(candidate.audio, duration, candidate.text))
            seconds += duration
    summary = ImportSummary(corpus, out, len(utterances), seconds, too_long, unreadable, empty, max_duration)
    if not utterances:
        raise UserError(f"nothing to import: {summary.line()}")
    write_manifest(out, utterances)
    print(summary.line(), flush=True)
    return summary


def _require_folder(folder: Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}")
    return folder


def _librispeech_candidates(folder: Path) -> list[_Candidate]:
    transcript_files = sorted(folder.rglob("*.trans.txt"))
    if not transcript_files:
        raise UserError(f"no LibriSpeech transcripts (SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt) under {folder}")
    candidates: dict[Path, _Candidate] = {}
    for transcript_file in transcript_files:
        chapter = transcript_file.parent
        try:
            lines = transcript_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read {transcript_file}: {error}") from None
        for line in lines:
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            audio = chapter / f"{utterance_id}.flac"
            candidates[audio] = _Candidate(audio, corpus_transcript(text))
        for audio in chapter.glob("*.flac"):  # audio without a transcript line: counted, not lost
            candidates.setdefault(audio, _Candidate(audio, ""))
    return [candidates[path] for path in sorted(candidates)]


def import_librispeech(folder: str | Path, out: str | Path, max_duration: Optional[float] = 20.0,
                       jobs: Optional[int] = None) -> ImportSummary:
    """Write a manifest for the LibriSpeech folder ``folder`` (a split, or the root) to ``out``."""
    folder = _require_folder(Path(folder), "LibriSpeech")
    absolute = Path(os.path.abspath(folder))
    return _write("librispeech", _librispeech_candidates(absolute), Path(out), max_duration, jobs)


def _commonvoice_candidates(folder: Path, split: str) -> list[_Candidate]:
    table = folder / f"{split}.tsv"
    if not table.is_file():
        present = sorted(path.stem for path in folder.glob("*.tsv"))
        raise UserError(f"no {table.name} in {folder} (splits present: {', '.join(present) or 'none'})")
    clips = folder / "clips"
    candidates = []
    with table.open(encoding="utf-8", newline="") as stream:
        # Common Voice sentences hold bare quotes: read the TSV without quoting rules
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "path" not in header or "sentence" not in header:
            raise UserError(f"{table}:1: header must have 'path' and 'sentence' columns, found {header}")
        path_column, sentence_column = header.index("path"), header.index("sentence")
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) <= max(path_column, sentence_column):
                raise UserError(f"{table}:{line_number}: expected {len(header)} tab-separated columns, "
                                f"found {len(row)}")
            audio = clips / row[path_column]
            candidates.append(_Candidate(audio, corpus_transcript(row[sentence_column])))
    return candidates


def import_commonvoice(folder: str | Path, out: str | Path, split: str = "train",
                       max_duration: Optional[float] = 20.0, jobs: Optional[int] = None) -> ImportSummary:
    """Write a manifest for split ``split`` of the Common Voice folder ``folder`` to ``out``.

    The MP3 clips are referenced as they are; libsndfile decodes MP3 when training reads them.
    """
    folder = _require_folder(Path(folder), "Common Voice")
    absolute = Path(os.path.abspath(folder))
    return _write("commonvoice", _commonvoice_candidates(absolute, split), Path(out), max_duration, jobs)
