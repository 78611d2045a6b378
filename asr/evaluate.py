"""Scoring a model on a manifest: ``asr evaluate`` (WER and CER, worst utterances, JSON report) and
``asr lm tune`` (the LM weight alpha and word bonus beta that score best, written into the bundle).

Both run the acoustic model through :mod:`asr.inference`; tuning runs it once, then re-decodes
its logits with beam search + LM for each (alpha, beta) trial. The arguments are checked before
TensorFlow is imported (about 5 s, and lines of its own on stderr): a mistake answers at once, in
one line; so :mod:`asr.inference` and :mod:`asr.pipeline` are imported inside the functions here.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import jiwer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from asr.bundle import update_bundle
from asr.data.manifest import read_manifest
from asr.errors import UserError
from asr.files import write_atomically
from asr.metrics import UtteranceScore, cer, utterance_scores, wer
from asr.pretrained.registry import PACKAGE_FOLDER, resolve_model_path
from asr.text import normalize_transcript

if TYPE_CHECKING:
    from asr.decoding.decoders import Decoder
    from asr.inference import Timings
    from asr.pipeline import Pipeline


@dataclass
class Evaluation:
    """Corpus scores plus one score per utterance (manifest order)."""

    wer: float
    cer: float
    scores: list[UtteranceScore]
    files: list[str]
    durations: list[float]
    decoder: str
    timings: "Timings"

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))

    @property
    def real_time_factor(self) -> float:
        return self.timings.total / self.audio_seconds if self.audio_seconds else 0.0

    def worst(self, count: int) -> list[int]:
        """Indices of the ``count`` utterances with the most word errors (then highest WER, CER)."""
        ranked = sorted(
            range(len(self.scores)),
            key=lambda index: (-self.scores[index].word_errors, -self.scores[index].wer, -self.scores[index].cer),
        )
        return [index for index in ranked[: max(count, 0)] if self.scores[index].word_errors > 0
                or self.scores[index].character_errors > 0]

    def utterance_dict(self, index: int) -> dict:
        return {"audio_filepath": self.files[index], "duration": round(self.durations[index], 3),
                **self.scores[index].to_dict()}

    def to_dict(self, worst: int = 10) -> dict:
        return {
            "decoder": self.decoder,
            "wer": self.wer,
            "cer": self.cer,
            "utterances": len(self.scores),
            "words": sum(score.words for score in self.scores),
            "word_errors": sum(score.word_errors for score in self.scores),
            "characters": sum(score.characters for score in self.scores),
            "character_errors": sum(score.character_errors for score in self.scores),
            "audio_seconds": round(self.audio_seconds, 3),
            "seconds": {"features": round(self.timings.features, 3),
                        "acoustic_model": round(self.timings.acoustic_model, 3),
                        "decoding": round(self.timings.decoding, 3)},
            "real_time_factor": round(self.real_time_factor, 5),
            "worst": [self.utterance_dict(index) for index in self.worst(worst)],
            "per_utterance": [self.utterance_dict(index) for index in range(len(self.scores))],
        }


def read_references(manifest: Path) -> tuple[list[str], list[str], list[float]]:
    """Files, normalised reference transcripts and manifest durations; an empty manifest is an error."""
    utterances = read_manifest(manifest)
    if not utterances:
        raise UserError(f"manifest {manifest} has no utterances to evaluate")
    files = [str(utterance.audio_filepath) for utterance in utterances]
    references = [normalize_transcript(utterance.text) for utterance in utterances]
    return files, references, [float(utterance.duration) for utterance in utterances]


def evaluate_pipeline(pipeline: "Pipeline", manifest: Path, decoder_name: Optional[str] = None) -> Evaluation:
    """Transcribe a manifest with ``pipeline`` and score it."""
    from asr.inference import Timings, transcribe_files  # TensorFlow: see the module docstring

    files, references, durations = read_references(Path(manifest))
    timings = Timings()
    with pipeline.decoder(decoder_name) as decoder:
        transcripts = transcribe_files(pipeline.model, pipeline.configuration, files, decoder, timings)
        name = decoder.name
    hypotheses = [transcript.text for transcript in transcripts]
    return Evaluation(
        wer=wer(references, hypotheses),
        cer=cer(references, hypotheses),
        scores=utterance_scores(references, hypotheses),
        files=files,
        durations=[duration or transcript.duration for duration, transcript in zip(durations, transcripts)],
        decoder=name,
        timings=timings,
    )


def _highlighted(score: UtteranceScore) -> tuple[Any, Any]:
    """Reference and hypothesis as rich Text, words in error in red (aligned by jiwer)."""
    reference_words, hypothesis_words = score.reference.split(), score.hypothesis.split()
    reference, hypothesis = Text(), Text()
    if not reference_words or not hypothesis_words:
        return Text(score.reference, style="red"), Text(score.hypothesis, style="red")
    alignment = jiwer.process_words(score.reference, score.hypothesis).alignments[0]
    for chunk in alignment:
        style = "" if chunk.type == "equal" else "bold red"
        words = reference_words[chunk.ref_start_idx : chunk.ref_end_idx]
        guesses = hypothesis_words[chunk.hyp_start_idx : chunk.hyp_end_idx]
        if words:
            reference.append(" ".join(words) + " ", style=style)
        if guesses:
            hypothesis.append(" ".join(guesses) + " ", style=style)
    reference.rstrip()
    hypothesis.rstrip()
    return reference, hypothesis


def print_evaluation(evaluation: Evaluation, worst: int, title: str = "") -> None:
    """Summary line and a table of the worst utterances (rich)."""
    console = Console(soft_wrap=False)
    words = sum(score.words for score in evaluation.scores)
    print(
        f"{title}WER {evaluation.wer:.2%}  CER {evaluation.cer:.2%}  "
        f"({len(evaluation.scores)} utterances, {words} words, {evaluation.audio_seconds / 60:.1f} min of audio, "
        f"decoder {evaluation.decoder}, real-time factor {evaluation.real_time_factor:.3f})",
        flush=True,
    )
    chosen = evaluation.worst(worst)
    if not chosen:
        return
    table = Table(title=f"{len(chosen)} worst utterances", show_lines=False)
    table.add_column("file", overflow="fold", max_width=30)
    table.add_column("WER", justify="right")
    table.add_column("CER", justify="right")
    table.add_column("S/D/I", justify="right")
    table.add_column("reference / hypothesis", overflow="fold")
    for index in chosen:
        score = evaluation.scores[index]
        reference, hypothesis = _highlighted(score)
        table.add_row(
            Path(evaluation.files[index]).name,
            f"{score.wer:.0%}",
            f"{score.cer:.0%}",
            f"{score.substitutions}/{score.deletions}/{score.insertions}",
            reference + "\n" + hypothesis,
        )
    console.print(table)


def writable_bundle(model: str, verb: str, otherwise: str) -> Path:
    """The local bundle ``model`` names, refused (one line saying what to do) when it lives in MLflow or
    is a packaged model: those are never rewritten in place."""
    if str(model).startswith(("models:/", "runs:/")):
        raise UserError(f"{model} lives in MLflow: {verb} a local copy of its bundle, or {otherwise}")
    bundle_path = resolve_model_path(model)
    if bundle_path.resolve().parent == PACKAGE_FOLDER:
        raise UserError(f"{model} is a packaged model: {verb} a copy of {bundle_path}, or {otherwise}")
    return bundle_path


def main(model: str, manifest: Path, decoder: Optional[str] = None, report: Optional[Path] = None,
         worst: int = 10, record: bool = False) -> Evaluation:
    """``asr evaluate``; with ``record``, the figures become the bundle's test figures (``asr models list``)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise UserError(f"manifest not found: {manifest}")
    read_references(manifest)  # fail on a bad or empty manifest before loading TensorFlow
    started = time.perf_counter()
    bundle = writable_bundle(model, "record figures in", "leave out --record") if record else resolve_model_path(model)
    from asr.pipeline import load_model  # TensorFlow: see the module docstring

    pipeline = load_model(bundle)
    evaluation = evaluate_pipeline(pipeline, manifest, decoder)
    print_evaluation(evaluation, worst)
    if report is not None:
        document = {"model": str(model), "manifest": str(manifest),
                    "wall_seconds": round(time.perf_counter() - started, 3), **evaluation.to_dict(worst)}
        write_atomically(report, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        print(f"report written to {report}")
    if record:
        # the new test figures replace all the old ones (a training run's greedy ones were of another decoding)
        kept = {key: value for key, value in pipeline.metadata.get("metrics", {}).items() if not key.startswith("test_")}
        figures = {"test_wer": evaluation.wer, "test_cer": evaluation.cer, "test_utterances": len(evaluation.scores)}
        update_bundle(bundle, metadata={"metrics": {**kept, **figures},
                                        "test": {"decoder": evaluation.decoder, "manifest": manifest.name}})
        print(f"recorded in {bundle}: test WER {evaluation.wer:.2%}, CER {evaluation.cer:.2%} ({evaluation.decoder})")
    return evaluation


# --------------------------------------------------------------------------- asr lm tune

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


def tune_weights(decoder: "Decoder", logits: Sequence[Any], references: Sequence[str],
                 pairs: Sequence[tuple[float, float]],
                 report: Optional[Callable[[int, int, Trial], None]] = None) -> list[Trial]:
    """Decode ``logits`` once per (alpha, beta) pair; return the trials, best (lowest WER, then CER) first."""
    from asr.inference import decode_logits  # TensorFlow: see the module docstring

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
    manifest = Path(manifest)
    if not manifest.is_file():
        raise UserError(f"manifest not found: {manifest}")
    files, references, _ = read_references(manifest)
    search_pairs(trials, start=(0.0, 0.0))  # a bad --trials fails before the model loads
    bundle_path = writable_bundle(model, "tune", "pass --no-write") if write else resolve_model_path(model)
    from asr.decoding.decoders import make_decoder  # TensorFlow and pyctcdecode: see the module docstring
    from asr.inference import logits_of_files
    from asr.pipeline import load_model

    pipeline = load_model(bundle_path)
    if lm_path is None and pipeline.language_model is None:
        raise UserError(f"{model} has no language model: pass one with --lm (build it with asr lm build)")
    config = pipeline.configuration.decoder
    pairs = search_pairs(trials, start=(float(config.alpha), float(config.beta)))
    print(f"computing logits of {len(files)} utterances from {manifest} ...")
    logits, _ = logits_of_files(pipeline.model, pipeline.configuration, files)

    def report(done: int, total: int, trial: Trial) -> None:
        print(f"[{done}/{total}] alpha={trial.alpha:.3f} beta={trial.beta:.3f}  WER {trial.wer:.2%}  CER {trial.cer:.2%}",
              flush=True)

    language_model = Path(lm_path) if lm_path is not None else pipeline.language_model
    with make_decoder(config, pipeline.alphabet, name="beam_lm", lm_path=language_model) as decoder:
        ranked = tune_weights(decoder, logits, references, pairs, report)
    best = ranked[0]
    print(f"best: alpha={best.alpha} beta={best.beta}  WER {best.wer:.2%}  CER {best.cer:.2%}")
    if write:
        update_bundle(bundle_path, {"name": "beam_lm", "alpha": best.alpha, "beta": best.beta}, language_model=lm_path)
        added = f" with language model {lm_path}" if lm_path is not None else ""
        print(f"wrote decoder beam_lm, alpha={best.alpha}, beta={best.beta} into {bundle_path}{added}")
    return best
