"""N-gram language models: build an ARPA file from text (``asr lm build``).

Building: KenLM's ``lmplz`` is not on PyPI, and the one pure-Python ARPA writer
there (arpabo 0.3.0) writes files KenLM cannot read and whose backoff weights
do not normalise. So ``build_arpa`` is a small, readable implementation of
interpolated modified Kneser-Ney smoothing (Chen & Goodman 1998), the estimator
``lmplz`` uses, written as a backoff ARPA file: each n-gram's probability is the
interpolated one and each context's backoff weight is its interpolation weight
gamma, so ``sum_w p(w | h) = 1`` for every context (tests check this through
KenLM). It keeps all counts in memory: fine for up to a few million words; for
a large corpus build ``lmplz`` from KenLM's sources.

Tuning the LM's weights on a model is ``asr lm tune``, in :mod:`asr.evaluate`; a bundle takes
an LM through :func:`asr.bundle.update_bundle`.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from asr.errors import UserError
from asr.files import write_atomically
from asr.text import normalize_transcript

SENTENCE_START = "<s>"
SENTENCE_END = "</s>"
UNKNOWN = "<unk>"
# Discounts used when a small corpus lacks the count-of-counts that estimate them
# (the same fallback as lmplz --discount_fallback).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
LOG_ZERO = -99.0
MIN_ORDER, MAX_ORDER = 2, 6  # ARPA's "probability zero", for <s>

NGram = tuple[str, ...]


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Raw counts of every n-gram, n = 1..order, over ``<s> words </s>``; index n-1 holds order n."""
    counts = [Counter() for _ in range(order)]
    for words in sentences:
        tokens = (SENTENCE_START, *words, SENTENCE_END)
        for n in range(1, order + 1):
            table = counts[n - 1]
            for start in range(len(tokens) - n + 1):
                table[tokens[start : start + n]] += 1
    counts[0].pop((SENTENCE_START,), None)  # <s> is never predicted
    return counts


def adjust_counts(raw: list[Counter]) -> list[Counter]:
    """Kneser-Ney counts: the highest order keeps raw counts; a lower-order n-gram counts
    the distinct words seen before it (its continuation count), except n-grams that
    begin with ``<s>``, which nothing can precede and which keep their raw counts."""
    order = len(raw)
    adjusted = [Counter() for _ in range(order)]
    adjusted[order - 1] = Counter(raw[order - 1])
    for n in range(order - 1, 0, -1):  # n = length of the lower-order n-grams
        table = adjusted[n - 1]
        for ngram in raw[n]:  # each distinct (n+1)-gram adds one left extension to its suffix
            table[ngram[1:]] += 1
        for ngram, count in raw[n - 1].items():
            if ngram[0] == SENTENCE_START:
                table[ngram] = count
    adjusted[0].pop((SENTENCE_START,), None)
    return adjusted


def estimate_discounts(counts: Counter) -> tuple[float, float, float]:
    """Modified KN discounts D1, D2, D3+ from the counts-of-counts (Chen & Goodman eq. 26)."""
    count_of_counts = Counter(min(count, 4) for count in counts.values())
    t1, t2, t3, t4 = (count_of_counts[k] for k in (1, 2, 3, 4))
    if min(t1, t2, t3, t4) == 0:
        return FALLBACK_DISCOUNTS
    y = t1 / (t1 + 2 * t2)
    discounts = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0 < discount < k for k, discount in zip((1, 2, 3), discounts)):
        return FALLBACK_DISCOUNTS
    return discounts


@dataclass
class ArpaModel:
    """Log10 probabilities and backoff weights per order (index n-1 holds order n)."""

    log_probabilities: list[dict[NGram, float]]
    log_backoffs: list[dict[NGram, float]]

    @property
    def order(self) -> int:
        return len(self.log_probabilities)

    def write(self, path: str | Path) -> None:
        """Write the ARPA text atomically (KenLM's reader wants tabs between fields)."""
        path = Path(path)
        lines = ["", "\\data\\"]
        lines += [f"ngram {n + 1}={len(table)}" for n, table in enumerate(self.log_probabilities)]
        for n, table in enumerate(self.log_probabilities):
            lines += ["", f"\\{n + 1}-grams:"]
            backoffs = self.log_backoffs[n]
            for ngram in sorted(table):
                fields = [f"{table[ngram]:.7g}", " ".join(ngram)]
                if n + 1 < self.order:
                    fields.append(f"{backoffs.get(ngram, 0.0):.7g}")
                lines.append("\t".join(fields))
        lines += ["", "\\end\\", ""]
        write_atomically(path, "\n".join(lines))


def build_arpa(sentences: Iterable[Sequence[str]], order: int = 3) -> ArpaModel:
    """Interpolated modified Kneser-Ney n-gram model of ``sentences`` (lists of words)."""
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise UserError(f"n-gram order must be between {MIN_ORDER} and {MAX_ORDER} (KenLM reads no unigram-only model), got {order}")
    raw = count_ngrams(sentences, order)
    if not raw[0]:
        raise UserError("no words to build a language model from")
    adjusted = adjust_counts(raw)
    vocabulary = {ngram[0] for ngram in adjusted[0]} | {UNKNOWN}
    log_probabilities: list[dict[NGram, float]] = []
    log_backoffs: list[dict[NGram, float]] = []
    lower: dict[NGram, float] = {}  # interpolated probabilities of the order below (not log)
    for n in range(1, order + 1):
        counts = adjusted[n - 1]
        discounts = estimate_discounts(counts)
        # per context: total count and discounted mass
        totals: dict[NGram, float] = defaultdict(float)
        freed: dict[NGram, float] = defaultdict(float)
        for ngram, count in counts.items():
            context = ngram[:-1]
            totals[context] += count
            freed[context] += discounts[min(count, 3) - 1]
        gammas = {context: freed[context] / totals[context] for context in totals}
        probabilities: dict[NGram, float] = {}
        for ngram, count in counts.items():
            context = ngram[:-1]
            discounted = (count - discounts[min(count, 3) - 1]) / totals[context]
            backed_off = 1.0 / len(vocabulary) if n == 1 else lower[ngram[1:]]
            probabilities[ngram] = discounted + gammas[context] * backed_off
        if n == 1:
            probabilities[(UNKNOWN,)] = gammas[()] / len(vocabulary)
        log_probabilities.append({ngram: math.log10(p) for ngram, p in probabilities.items()})
        if n == 1:
            log_probabilities[0][(SENTENCE_START,)] = LOG_ZERO
        if n > 1:  # the backoff weight of a context h is its interpolation weight gamma(h)
            log_backoffs[n - 2] = {context: math.log10(gamma) for context, gamma in gammas.items()}
        log_backoffs.append({})
        lower = probabilities
    return ArpaModel(log_probabilities, log_backoffs)


def read_sentences(path: Path) -> list[list[str]]:
    """Lines of a text file, normalised like transcripts (asr.text) and split into words."""
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    sentences = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            words = words_of(line)
            if words:
                sentences.append(words)
    if not sentences:
        raise UserError(f"{path} holds no text to build a language model from")
    return sentences


def words_of(line: str) -> list[str]:
    """The words of a line normalised like transcripts (asr.text), punctuation other than the apostrophe
    taken for a space (an LM counts words, so "world!" and "world" must be one)."""
    text = normalize_transcript(line)
    return "".join(" " if unicodedata.category(char).startswith("P") and char != "'" else char
                   for char in text).split()


def build_main(text: Path, out: Path, order: int = 3) -> None:
    """``asr lm build``: normalise a text file, estimate the model, write ARPA, print a summary."""
    started = time.perf_counter()
    sentences = read_sentences(Path(text))
    model = build_arpa(sentences, order)
    model.write(out)
    sizes = ", ".join(f"{n + 1}-grams: {len(table)}" for n, table in enumerate(model.log_probabilities))
    words = sum(len(sentence) for sentence in sentences)
    print(f"wrote {out}: order {order}, {len(sentences)} sentences, {words} words, {sizes} "
          f"({time.perf_counter() - started:.1f}s)")
