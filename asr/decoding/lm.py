"""N-gram language models: build an ARPA file from text, bundle it, tune its weights.

Building: KenLM's ``lmplz`` is not on PyPI, and the one pure-Python ARPA writer
there (arpabo 0.3.0) writes files KenLM cannot read and whose backoff weights
do not normalise. So ``build_arpa`` is a small, readable implementation of
interpolated modified Kneser-Ney smoothing (Chen & Goodman 1998), the estimator
``lmplz`` uses, written as a backoff ARPA file: each n-gram's probability is the
interpolated one and each context's backoff weight is its interpolation weight
gamma, so ``sum_w p(w | h) = 1`` for every context (tests check this through
KenLM). It keeps all counts in memory: fine for up to a few million words; for
a large corpus build ``lmplz`` from KenLM's sources.

Tuning: ``tune_main`` runs the acoustic model once over a dev manifest, then
re-decodes its logits with beam search + LM for each (alpha, beta) trial.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from asr.errors import UserError

SENTENCE_START = "<s>"
SENTENCE_END = "</s>"
UNKNOWN = "<unk>"
# Discounts used when a small corpus lacks the count-of-counts that estimate them
# (the same fallback as lmplz --discount_fallback).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
LOG_ZERO = -99.0
MIN_ORDER, MAX_ORDER = 2, 6  # ARPA's "probability zero", for <s>

NGram = tuple[str, ...]


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


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
        _atomic_write_text(path, "\n".join(lines))


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
            words = normalize_line(line).split()
            if words:
                sentences.append(words)
    if not sentences:
        raise UserError(f"{path} holds no text to build a language model from")
    return sentences


def normalize_line(line: str) -> str:
    """A transcript-normalised line (asr.text) with punctuation other than the apostrophe removed."""
    from asr.text import normalize_transcript

    text = normalize_transcript(line)
    return "".join(" " if unicodedata.category(char).startswith("P") and char != "'" else char for char in text)


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


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Tuning alpha (LM weight) and beta (word bonus)
# ---------------------------------------------------------------------------

GRID_ALPHAS = (0.25, 0.5, 1.0, 1.5, 2.0)
GRID_BETAS = (0.0, 0.5, 1.0, 2.0, 3.0)
ALPHA_RANGE = (0.0, 2.5)
BETA_RANGE = (-1.0, 4.0)


@dataclass(frozen=True)
class Trial:
    alpha: float
    beta: float
    wer: float
    cer: float


def search_pairs(trials: int, start: tuple[float, float], seed: int = 0) -> list[tuple[float, float]]:
    """``trials`` > 0: the current pair then random pairs; 0: a 5x5 grid."""
    if trials < 0:
        raise UserError(f"--trials must be 0 (grid) or positive, got {trials}")
    if trials == 0:
        return [(alpha, beta) for alpha in GRID_ALPHAS for beta in GRID_BETAS]
    generator = random.Random(seed)
    pairs = [start]
    while len(pairs) < trials:
        pairs.append((round(generator.uniform(*ALPHA_RANGE), 3), round(generator.uniform(*BETA_RANGE), 3)))
    return pairs


def tune_weights(
    decoder: Any,
    logits: Sequence[Any],
    references: Sequence[str],
    pairs: Sequence[tuple[float, float]],
    report: Optional[Any] = None,
) -> list[Trial]:
    """Decode ``logits`` once per (alpha, beta) pair; return the trials, best (lowest WER, then CER) first."""
    from asr.metrics import cer, wer
    from asr.transcribe import decode_logits

    results = []
    for alpha, beta in pairs:
        decoder.set_weights(alpha, beta)
        hypotheses = decode_logits(decoder, logits)
        trial = Trial(alpha, beta, wer(references, hypotheses), cer(references, hypotheses))
        results.append(trial)
        if report is not None:
            report(len(results), len(pairs), trial)
    return sorted(results, key=lambda trial: (trial.wer, trial.cer))


def tune_main(model: str, manifest: Path, lm_path: Optional[Path] = None, trials: int = 20,
              write: bool = True) -> Trial:
    """``asr lm tune``: search alpha and beta on a dev manifest, print the best pair, write it into the bundle."""
    from asr.decoding.decoders import BeamSearchDecoder, read_unigram_file
    from asr.evaluate import read_references
    from asr.pretrained.registry import PACKAGE_FOLDER, resolve_model_path
    from asr.transcribe import acoustic_logits, bundled_language_model, load_pipeline

    manifest = Path(manifest)
    if not manifest.is_file():
        raise UserError(f"manifest not found: {manifest}")
    files, references, _ = read_references(manifest)
    search_pairs(trials, start=(0.0, 0.0))  # a bad --trials fails before the model loads
    if write and str(model).startswith(("models:/", "runs:/")):
        raise UserError(f"{model} lives in MLflow: tune a local copy of its bundle, or pass --no-write")
    bundle_path = resolve_model_path(model)
    if write and bundle_path.resolve().parent == PACKAGE_FOLDER:
        raise UserError(f"{model} is a packaged model: tune a copy of {bundle_path}, or pass --no-write")
    pipeline = load_pipeline(model)
    language_model = Path(lm_path) if lm_path is not None else bundled_language_model(pipeline)
    if language_model is None:
        raise UserError(f"{model} has no language model: pass one with --lm (build it with asr lm build)")
    config = pipeline.configuration.config.decoder
    pairs = search_pairs(trials, start=(float(config.alpha), float(config.beta)))
    print(f"computing logits of {len(files)} utterances from {manifest} ...")
    logits, _ = acoustic_logits(pipeline, files)
    decoder = BeamSearchDecoder(
        pipeline.alphabet,
        beam_width=int(config.beam_width),
        language_model_path=language_model,
        unigrams=read_unigram_file(config.unigrams) if config.get("unigrams") else None,
        hotwords=list(config.hotwords or []),
        hotword_weight=float(config.hotword_weight),
    )

    def report(done: int, total: int, trial: Trial) -> None:
        print(f"[{done}/{total}] alpha={trial.alpha:.3f} beta={trial.beta:.3f}  WER {trial.wer:.2%}  CER {trial.cer:.2%}",
              flush=True)

    with decoder:
        ranked = tune_weights(decoder, logits, references, pairs, report)
    best = ranked[0]
    print(f"best: alpha={best.alpha} beta={best.beta}  WER {best.wer:.2%}  CER {best.cer:.2%}")
    if write:
        update_bundle(bundle_path, {"name": "beam_lm", "alpha": best.alpha, "beta": best.beta},
                      language_model=Path(lm_path) if lm_path is not None else None)
        added = f" with language model {lm_path}" if lm_path is not None else ""
        print(f"wrote decoder beam_lm, alpha={best.alpha}, beta={best.beta} into {bundle_path}{added}")
    return best


def update_bundle(bundle_path: Path, decoder_values: dict, language_model: Optional[Path] = None) -> None:
    """Rewrite a model bundle atomically with new decoder settings and, optionally, a new LM under ``lm/``.

    Every other entry is copied unchanged. (asr.bundle has no update function; this one
    follows its layout: the LM is ``lm/<file name>`` and ``decoder.lm_path`` names that entry.)
    """
    import zipfile

    from omegaconf import OmegaConf

    from asr.bundle import CONFIGURATION_ENTRY, LM_FOLDER, check_sizes

    if language_model is not None and not language_model.is_file():
        raise UserError(f"language model not found: {language_model}")
    with zipfile.ZipFile(bundle_path) as archive:
        check_sizes(bundle_path, archive)  # a bomb is refused before anything is read into memory
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    configuration = OmegaConf.create(
        next(data for info, data in entries if info.filename == CONFIGURATION_ENTRY).decode("utf-8"))
    for key, value in decoder_values.items():
        configuration.decoder[key] = value
    if language_model is not None:
        entries = [(info, data) for info, data in entries if not info.filename.startswith(LM_FOLDER)]
        configuration.decoder.lm_path = LM_FOLDER + language_model.name
    handle, temporary = tempfile.mkstemp(dir=bundle_path.parent, prefix=f".{bundle_path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for info, data in entries:
                if info.filename == CONFIGURATION_ENTRY:
                    data = OmegaConf.to_yaml(configuration).encode("utf-8")
                archive.writestr(info, data, compress_type=info.compress_type)
            if language_model is not None:
                archive.write(language_model, LM_FOLDER + language_model.name)
        os.chmod(temporary, os.stat(bundle_path).st_mode & 0o777)
        os.replace(temporary, bundle_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
