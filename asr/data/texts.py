"""Natural English sentences for the synthetic corpus and its language model.

``fortunes`` reads Debian's ``fortunes`` package (``/usr/share/games/fortunes``: quotations,
literature, proverbs; install with ``make voices``): entries are split into sentences and
normalised to the default alphabet (lower case a-z, apostrophe, single spaces). A sentence is
kept only if nothing but punctuation had to be dropped: one holding digits, symbols or
abbreviations would be read differently from its transcript, so it is skipped rather than
guessed at. ``wordnet`` reads the example sentences of Debian's ``wordnet-base`` (the quoted
examples in WordNet's glosses, e.g. "she choked with emotion when she spoke"), normalised alike.
Each result is sorted and de-duplicated, so it depends only on the installed files.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from asr.errors import UserError
from asr.text import normalize_transcript

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Files of pictures or other languages, not English prose.
_SKIPPED_FORTUNE_FILES = frozenset({"ascii-art", "art", "translate-me", "perl", "linuxcookie"})
MIN_WORDS, MAX_WORDS = 4, 16

_ATTRIBUTION = re.compile(r"^\s*(--|~~|-- )")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_DROPPED_PUNCTUATION = re.compile(r"[.,;:!?\"()\[\]]")
_WORD_JOINERS = re.compile(r"\s*(--|[-\u2013\u2014/])\s*")
_STRAY_APOSTROPHES = re.compile(r"(^|\s)'+|'+(\s|$)")
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz' ")
_WORDNET_EXAMPLE = re.compile(r'"([^"]+)"')


def usable_sentence(raw: str) -> str | None:
    """``raw`` in the alphabet's form, or None when it holds anything a reader would say differently."""
    text = normalize_transcript(raw)
    text = _WORD_JOINERS.sub(" ", text)
    text = _DROPPED_PUNCTUATION.sub("", text)
    text = _STRAY_APOSTROPHES.sub(r"\1\2", text)
    text = " ".join(text.split())
    if not text or not set(text) <= _ALLOWED:
        return None
    if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
        return None
    return text


def split_sentences(entry: str) -> list[str]:
    """The sentences of one fortune, its attribution lines left out."""
    lines = [line for line in entry.splitlines() if not _ATTRIBUTION.match(line)]
    prose = " ".join(line.strip() for line in lines)
    return [part for part in _SENTENCE_END.split(prose) if part]


@functools.lru_cache(maxsize=2)
def fortune_sentences(folder: Path = FORTUNES_DIR) -> tuple[str, ...]:
    """Every usable sentence of the fortune files in ``folder``, sorted and distinct."""
    files = sorted(path for path in folder.glob("*")
                   if path.is_file() and not path.suffix and path.name not in _SKIPPED_FORTUNE_FILES)
    if not files:
        raise UserError(f"no fortune files in {folder}: install Debian's fortunes package (make voices)")
    sentences = set()
    for path in files:
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            for raw in split_sentences(entry):
                sentence = usable_sentence(raw)
                if sentence:
                    sentences.add(sentence)
    return tuple(sorted(sentences))


@functools.lru_cache(maxsize=2)
def wordnet_sentences(folder: Path = WORDNET_DIR) -> tuple[str, ...]:
    """Every usable example sentence of WordNet's glosses in ``folder``, sorted and distinct."""
    files = [folder / f"data.{part}" for part in ("noun", "verb", "adj", "adv")]
    if not all(path.is_file() for path in files):
        raise UserError(f"no WordNet data in {folder}: install Debian's wordnet-base package (make voices)")
    sentences = set()
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  "):  # the licence header
                continue
            for raw in _WORDNET_EXAMPLE.findall(line.partition("|")[2]):
                sentence = usable_sentence(raw)
                if sentence:
                    sentences.add(sentence)
    return tuple(sorted(sentences))
