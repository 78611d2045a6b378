"""Building ARPA models (interpolated modified Kneser-Ney) and decoding with them."""

from __future__ import annotations

from pathlib import Path

import kenlm
import pytest
from typer.testing import CliRunner

from asr.cli import app
from asr.configuration import DecoderConfig
from asr.decoding.decoders import greedy_decode, make_decoder
from asr.errors import UserError
from asr.decoding.lm import adjust_counts, build_arpa, count_ngrams, estimate_discounts, read_sentences
from asr.text import Alphabet
from tests.test_decoding import logits_for

ALPHABET = Alphabet.default()
CORPUS = """The cat sat on the mat.
The dog sat on the log!
A cat and a dog
the cat ate the fish
Dogs and cats are friends
the mat is on the floor
the speech is clear
we like clear speech
speech recognition works
"""


def sentences() -> list[list[str]]:
    return [line.lower().strip(".!").split() for line in CORPUS.strip().splitlines()]


def total_probability(model: kenlm.Model, context: list[str], vocabulary: list[str], sentence_start: bool) -> float:
    """sum over the vocabulary of p(w | context), as KenLM computes it from the ARPA file."""
    state = kenlm.State()
    if sentence_start:
        model.BeginSentenceWrite(state)
    else:
        model.NullContextWrite(state)
    for word in context:
        following = kenlm.State()
        model.BaseScore(state, word, following)
        state = following
    return sum(10 ** model.BaseScore(state, word, kenlm.State()) for word in vocabulary)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_probabilities_sum_to_one_in_every_context(order: int, tmp_path: Path) -> None:
    path = tmp_path / "lm.arpa"
    build_arpa(sentences(), order).write(path)
    model = kenlm.Model(str(path))
    assert model.order == order
    vocabulary = sorted({word for sentence in sentences() for word in sentence}) + ["</s>", "<unk>"]
    contexts = [
        ([], True),  # sentence start
        ([], False),  # unigrams
        (["the"], False),
        (["the", "cat"], False),
        (["on", "the"], True),
        (["fish", "dog"], False),  # an unseen bigram: backs off twice
        (["zebra"], False),  # an unknown word
        (["a", "cat", "and"], False),
    ]
    for context, sentence_start in contexts:
        assert total_probability(model, context, vocabulary, sentence_start) == pytest.approx(1.0, abs=1e-5)


def test_seen_continuations_beat_unseen_ones(tmp_path: Path) -> None:
    path = tmp_path / "lm.arpa"
    build_arpa(sentences(), 3).write(path)
    model = kenlm.Model(str(path))
    assert model.score("the cat sat on the mat") > model.score("the mat sat on the cat")
    assert model.score("clear speech") > model.score("clear speach")


def test_kneser_ney_counts_and_discounts() -> None:
    corpus = [["a", "b"], ["c", "b"], ["a", "b"]]
    raw = count_ngrams(corpus, 2)
    assert raw[1][("a", "b")] == 2
    adjusted = adjust_counts(raw)
    assert adjusted[0][("b",)] == 2  # preceded by two distinct words, a and c
    assert adjusted[0][("</s>",)] == 1  # only ever after b
    assert adjusted[0][("a",)] == 1  # only after <s>
    assert ("<s>",) not in adjusted[0]
    assert estimate_discounts(adjusted[1]) == (0.5, 1.0, 1.5)  # too few counts: the fallback
    many = {("w", str(index)): count for index, count in enumerate([1] * 40 + [2] * 15 + [3] * 8 + [4] * 5)}
    d1, d2, d3 = estimate_discounts(many)
    assert 0 < d1 < d2 < d3 < 3


def test_arpa_header_counts_match_sections(tmp_path: Path) -> None:
    path = tmp_path / "lm.arpa"
    model = build_arpa(sentences(), 3)
    model.write(path)
    text = path.read_text()
    for n, table in enumerate(model.log_probabilities, start=1):
        assert f"ngram {n}={len(table)}" in text
        section = text.split(f"\\{n}-grams:\n")[1].split("\n\n")[0].splitlines()
        assert len(section) == len(table)
    assert "-99\t<s>\t" in text and "\t<unk>\t" in text


def test_small_lm_fixes_a_planted_misspelling(tmp_path: Path) -> None:
    """The acoustic model slightly prefers 'a' over 'e' in "speech": greedy keeps "speach",
    beam search without an LM keeps it too, beam search with the LM reads "speech"."""
    path = tmp_path / "lm.arpa"
    build_arpa(sentences(), 3).write(path)
    text = "we like clear speech"
    position = text.index("speech") + 3  # the second e
    logits = logits_for(text, rivals={position: {"a": 0.5, "e": 0.4}})[None]
    assert greedy_decode(logits, ALPHABET) == ["we like clear speach"]
    assert make_decoder(DecoderConfig(name="beam"), ALPHABET).decode(logits) == ["we like clear speach"]
    config = DecoderConfig(name="beam_lm", lm_path=str(path), alpha=0.5, beta=1.0)
    assert make_decoder(config, ALPHABET).decode(logits) == ["we like clear speech"]


def test_read_sentences_normalises_like_transcripts(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_text("Hello,  World!\n\n  Don’t PANIC.  \n...\n")
    assert read_sentences(path) == [["hello", "world"], ["don't", "panic"]]


@pytest.mark.parametrize("order", [0, 1, 7])
def test_bad_order(order: int) -> None:
    with pytest.raises(UserError, match="order must be between 2 and 6"):
        build_arpa(sentences(), order)


def test_cli_build(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(CORPUS)
    out = tmp_path / "models" / "lm.arpa"
    result = CliRunner().invoke(app, ["lm", "build", "--order", "3", "--text", str(text), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "order 3, 9 sentences" in result.output
    assert kenlm.Model(str(out)).order == 3


@pytest.mark.parametrize("content", [None, "", "\n ... \n"])
def test_cli_build_without_text(tmp_path: Path, content: str | None) -> None:
    text = tmp_path / "corpus.txt"
    if content is not None:
        text.write_text(content)
    result = CliRunner().invoke(app, ["lm", "build", "--text", str(text), "--out", str(tmp_path / "lm.arpa")])
    assert result.exit_code == 2
    assert "error:" in result.output and str(text) in result.output
    assert not (tmp_path / "lm.arpa").exists()
