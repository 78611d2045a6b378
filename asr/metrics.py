"""Word and character error rates, corpus level and per utterance, computed by jiwer.

Corpus-level rates are total edits over total reference length (not a mean of
per-utterance rates), as the speech literature reports them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import jiwer


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str]]:
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no references to score")
    return references, hypotheses


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words."""
    references, hypotheses = _check_pairs(references, hypotheses)
    return float(jiwer.wer(references, hypotheses))


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate (spaces count as characters)."""
    references, hypotheses = _check_pairs(references, hypotheses)
    return float(jiwer.cer(references, hypotheses))


@dataclass(frozen=True)
class UtteranceScore:
    """Edit counts of one reference/hypothesis pair."""

    reference: str
    hypothesis: str
    words: int  # reference words
    word_errors: int
    substitutions: int
    deletions: int
    insertions: int
    characters: int  # reference characters
    character_errors: int

    @property
    def wer(self) -> float:
        """Word error rate of this utterance (an empty reference counts each inserted word as 1.0)."""
        return self.word_errors / self.words if self.words else float(self.word_errors)

    @property
    def cer(self) -> float:
        return self.character_errors / self.characters if self.characters else float(self.character_errors)

    def to_dict(self) -> dict:
        return {**asdict(self), "wer": self.wer, "cer": self.cer}


def utterance_score(reference: str, hypothesis: str) -> UtteranceScore:
    """Edit counts of one utterance."""
    words = jiwer.process_words(reference, hypothesis)
    characters = jiwer.process_characters(reference, hypothesis)
    char_errors = characters.substitutions + characters.deletions + characters.insertions
    return UtteranceScore(
        reference=reference,
        hypothesis=hypothesis,
        words=words.hits + words.substitutions + words.deletions,
        word_errors=words.substitutions + words.deletions + words.insertions,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        characters=characters.hits + characters.substitutions + characters.deletions,
        character_errors=char_errors,
    )


def utterance_scores(references: Sequence[str], hypotheses: Sequence[str]) -> list[UtteranceScore]:
    """Per-utterance edit counts, in input order."""
    references, hypotheses = _check_pairs(references, hypotheses)
    return [utterance_score(reference, hypothesis) for reference, hypothesis in zip(references, hypotheses)]

