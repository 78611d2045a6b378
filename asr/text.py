"""Alphabets (Mozilla DeepSpeech format), transcript normalisation and CTC label batches.

The alphabet file has one symbol per line; lines starting with ``#`` are comments, a line
holding one space is the space, and ``\\#`` stands for a literal ``#``. Symbol ``i`` of the
alphabet is CTC label ``i + 1``; label 0 is the blank.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from asr.errors import UserError
from asr.files import write_atomically

BLANK = 0
DEFAULT_SYMBOLS = (" ", *"abcdefghijklmnopqrstuvwxyz", "'")
# Typographic variants that NFKD leaves alone but that mean an alphabet symbol.
_EQUIVALENTS = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_WHITESPACE = re.compile(r"\s+")


class Alphabet:
    """An ordered set of single-character symbols; symbol ``i`` is CTC label ``i + 1``."""

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols: list[str] = list(symbols)
        if not self.symbols:
            raise UserError("an alphabet needs at least one symbol")
        for symbol in self.symbols:
            if len(symbol) != 1:
                raise UserError(f"alphabet symbols must be single characters, got {symbol!r}")
        duplicates = sorted({symbol for symbol in self.symbols if self.symbols.count(symbol) > 1})
        if duplicates:
            raise UserError(f"alphabet has duplicate symbols: {', '.join(map(repr, duplicates))}")
        self._label_of = {symbol: index + 1 for index, symbol in enumerate(self.symbols)}

    @classmethod
    def default(cls) -> "Alphabet":
        """English: space, a-z and the apostrophe."""
        return cls(DEFAULT_SYMBOLS)

    @classmethod
    def from_string(cls, text: str, source: str = "<string>") -> "Alphabet":
        """Parse the Mozilla DeepSpeech alphabet format."""
        symbols = []
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if line.startswith("\\#"):
                line = "#" + line[2:]
            elif line.startswith("#") or line == "":
                continue
            symbols.append(line)
        if not symbols:
            raise UserError(f"{source}: the alphabet has no symbols")
        try:
            return cls(symbols)
        except UserError as error:
            raise UserError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Alphabet":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"alphabet file not found: {path}") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: the alphabet is not UTF-8 text") from None
        return cls.from_string(text, source=str(path))

    def to_string(self) -> str:
        lines = ["# Alphabet: one symbol per line; '#' starts a comment, '\\#' is a literal '#'."]
        lines += ["\\#" if symbol == "#" else symbol for symbol in self.symbols]
        return "\n".join(lines) + "\n"

    def to_file(self, path: str | Path) -> None:
        write_atomically(path, self.to_string())

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alphabet) and self.symbols == other.symbols

    def __repr__(self) -> str:
        return f"Alphabet({''.join(self.symbols)!r})"

    def unknown_symbols(self, text: str) -> list[str]:
        """Characters of ``text`` that the alphabet cannot represent, in order of appearance."""
        return list(dict.fromkeys(char for char in text if char not in self._label_of))

    def encode(self, text: str) -> list[int]:
        """Labels (1-based) of ``text``; symbols outside the alphabet raise ``UserError``."""
        unknown = self.unknown_symbols(text)
        if unknown:
            raise UserError(f"symbols {', '.join(map(repr, unknown))} are not in the alphabet "
                            f"(utterance: {text!r})")
        return [self._label_of[char] for char in text]

    def decode(self, labels: Iterable[int]) -> str:
        """Text of ``labels``; blanks (0) are skipped, repeats are kept (no CTC collapsing)."""
        return "".join(self.symbols[label - 1] for label in labels if label != BLANK)


def normalize_transcript(text: str) -> str:
    """The one transcript normaliser: manifests (importers, synthetic corpora), training labels, LM text, WER.

    The rules, in order:

    1. typographic apostrophes (``’ ‘ ʼ ` ´``) become ``'``;
    2. Unicode NFKD: compatibility forms become plain ones (``ﬁ`` -> ``fi``, ``²`` -> ``2``, full-width
       letters -> ASCII) and accented letters split into letter + combining mark;
    3. combining marks are dropped (``é`` -> ``e``, ``ç`` -> ``c``): an alphabet never needs accented
       symbols, and scripts that write vowels or voicing as marks lose them;
    4. lower case;
    5. each run of whitespace becomes one space, none at the ends.

    Punctuation, digits and symbols are kept: what they mean is the caller's choice (the importers
    turn punctuation into spaces; the synthetic corpus drops sentences with digits or symbols).
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_EQUIVALENTS))
    without_marks = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _WHITESPACE.sub(" ", without_marks.lower()).strip()


def encode_transcript(text: str, alphabet: Alphabet) -> np.ndarray:
    """Normalise then encode one transcript as int32 labels."""
    return np.asarray(alphabet.encode(normalize_transcript(text)), dtype=np.int32)


def get_batch_labels(transcripts: Sequence[str], alphabet: Alphabet) -> tuple[np.ndarray, np.ndarray]:
    """Padded int32 labels ``[B, Lmax]`` (padding 0) and int32 label lengths ``[B]``."""
    encoded = [encode_transcript(text, alphabet) for text in transcripts]
    lengths = np.asarray([len(labels) for labels in encoded], dtype=np.int32)
    batch = np.zeros((len(encoded), int(lengths.max(initial=0))), dtype=np.int32)
    for row, labels in enumerate(encoded):
        batch[row, : len(labels)] = labels
    return batch, lengths
