"""``asr evaluate``: WER and CER of a model bundle on a manifest, worst utterances, JSON report."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from asr.errors import UserError
from asr.metrics import UtteranceScore, cer, utterance_scores, wer
from asr.transcribe import Timings, decoder_for, load_pipeline, transcribe_files


@dataclass
class Evaluation:
    """Corpus scores plus one score per utterance (manifest order)."""

    wer: float
    cer: float
    scores: list[UtteranceScore]
    files: list[str]
    durations: list[float]
    decoder: str
    timings: Timings = field(default_factory=Timings)

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
    from asr.data.manifest import read_manifest
    from asr.text import normalize_transcript

    utterances = read_manifest(manifest)
    if not utterances:
        raise UserError(f"manifest {manifest} has no utterances to evaluate")
    files = [str(utterance.audio_filepath) for utterance in utterances]
    references = [normalize_transcript(utterance.text) for utterance in utterances]
    return files, references, [float(utterance.duration) for utterance in utterances]


def evaluate_pipeline(pipeline: Any, manifest: Path, decoder_name: Optional[str] = None) -> Evaluation:
    """Transcribe a manifest with ``pipeline`` and score it."""
    files, references, durations = read_references(Path(manifest))
    timings = Timings()
    with decoder_for(pipeline, decoder_name) as decoder:
        transcripts = transcribe_files(pipeline, files, decoder, timings)
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
    import jiwer
    from rich.text import Text

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
    from rich.console import Console
    from rich.table import Table

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


def write_report(path: Path, report: dict) -> None:
    """Write JSON atomically (a reader never sees half a report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=2, ensure_ascii=False)
            stream.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp makes 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(model: str, manifest: Path, decoder: Optional[str] = None, report: Optional[Path] = None,
         worst: int = 10) -> Evaluation:
    """``asr evaluate``."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise UserError(f"manifest not found: {manifest}")
    read_references(manifest)  # fail on a bad or empty manifest before loading TensorFlow
    started = time.perf_counter()
    pipeline = load_pipeline(model)
    evaluation = evaluate_pipeline(pipeline, manifest, decoder)
    print_evaluation(evaluation, worst)
    if report is not None:
        document = {"model": str(model), "manifest": str(manifest),
                    "wall_seconds": round(time.perf_counter() - started, 3), **evaluation.to_dict(worst)}
        write_report(Path(report), document)
        print(f"report written to {report}")
    return evaluation
