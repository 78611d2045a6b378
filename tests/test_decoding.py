"""Decoders on known logits: greedy, beam, beam with a KenLM model, hotwords, pools, bad inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.decoding import decoders as decoding
from asr.configuration import DecoderConfig
from asr.decoding.decoders import BeamSearchDecoder, greedy_decode, make_decoder
from asr.errors import UserError
from asr.decoding.lm import build_arpa
from asr.text import Alphabet

ALPHABET = Alphabet.default()


def logits_for(
    text: str,
    alphabet: Alphabet = ALPHABET,
    confidence: float = 0.9,
    rivals: Optional[dict[int, dict[str, float]]] = None,
    frames_per_symbol: int = 1,
) -> np.ndarray:
    """Logits ``[T, V]`` (log-probabilities) that spell ``text``: each symbol for
    ``frames_per_symbol`` frames then one blank frame, after a leading blank frame. ``rivals`` maps a character
    position to a distribution over symbols that replaces the confident one there."""
    rivals = rivals or {}
    width = len(alphabet) + 1
    rows = []

    def frame(distribution: dict[int, float]) -> np.ndarray:
        rest = (1.0 - sum(distribution.values())) / (width - len(distribution))
        probabilities = np.full(width, rest)
        for label, probability in distribution.items():
            probabilities[label] = probability
        return np.log(probabilities)

    rows.append(frame({0: confidence}))
    for position, char in enumerate(text):
        if position in rivals:
            distribution = {alphabet.symbols.index(symbol) + 1: p for symbol, p in rivals[position].items()}
        else:
            distribution = {alphabet.symbols.index(char) + 1: confidence}
        rows += [frame(distribution)] * frames_per_symbol
        rows.append(frame({0: confidence}))
    return np.stack(rows).astype(np.float32)


def batch_of(*texts: str, **options) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded batch ``[B, Tmax, V]`` and lengths; padding frames are garbage on purpose."""
    rows = [logits_for(text, **options) for text in texts]
    lengths = np.array([len(row) for row in rows])
    batch = np.random.default_rng(0).normal(size=(len(rows), lengths.max(), len(ALPHABET) + 1)).astype(np.float32)
    for index, row in enumerate(rows):
        batch[index, : len(row)] = row
    return batch, lengths


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sentences = [
        "the speech is clear",
        "speech recognition works",
        "we like clear speech",
        "the weather is clear today",
        "recognition of speech is hard",
    ]
    path = tmp_path_factory.mktemp("lm") / "small.arpa"
    build_arpa([sentence.split() for sentence in sentences], order=3).write(path)
    return path


# --------------------------------------------------------------------------- greedy


def test_greedy_decodes_known_logits_and_ignores_padding() -> None:
    batch, lengths = batch_of("hello world", "a", "see  me")
    assert greedy_decode(batch, ALPHABET, lengths) == ["hello world", "a", "see  me"]


def test_greedy_merges_repeats_unless_a_blank_separates_them() -> None:
    a, b = ALPHABET.symbols.index("a") + 1, ALPHABET.symbols.index("b") + 1
    labels = [a, a, 0, a, b, b, 0, 0, b]
    logits = np.eye(len(ALPHABET) + 1, dtype=np.float32)[labels][None] * 10
    assert greedy_decode(logits, ALPHABET) == ["aabb"]


def test_greedy_with_zero_length_gives_empty_text() -> None:
    batch, _ = batch_of("abc")
    assert greedy_decode(batch, ALPHABET, [0]) == [""]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET.symbols, max_size=40),
    repeats=st.lists(st.integers(min_value=1, max_value=3), min_size=40, max_size=40),
    blanks=st.lists(st.integers(min_value=0, max_value=2), min_size=41, max_size=41),
)
def test_greedy_inverts_one_hot_encoding(text: str, repeats: list[int], blanks: list[int]) -> None:
    """decode(one-hot(text)) == text for any text, any symbol durations and blank runs
    (a blank is forced between two equal symbols, as CTC requires)."""
    labels: list[int] = [0] * blanks[0]
    previous = None
    for position, label in enumerate(ALPHABET.encode(text)):
        if label == previous and (not labels or labels[-1] != 0):
            labels.append(0)
        labels += [label] * repeats[position]
        labels += [0] * blanks[position + 1]
        previous = label
    one_hot = np.eye(len(ALPHABET) + 1, dtype=np.float32)[np.array(labels, dtype=int)].reshape(1, -1, len(ALPHABET) + 1)
    assert greedy_decode(one_hot, ALPHABET) == [text]


# --------------------------------------------------------------------------- shapes


def test_label_count_must_match_logits_width() -> None:
    """pyctcdecode gets ["", *symbols]: one more label than symbols, as wide as the model output."""
    decoder = make_decoder(DecoderConfig(name="beam"), ALPHABET)
    assert decoder.labels == ["", *ALPHABET.symbols]
    assert len(decoder.labels) == len(ALPHABET) + 1
    narrow = np.zeros((1, 5, len(ALPHABET)), dtype=np.float32)
    for decode in (decoder.decode, lambda logits: greedy_decode(logits, ALPHABET)):
        with pytest.raises(ValueError, match=r"28 labels per frame but the alphabet has 28 symbols \+ 1 blank = 29"):
            decode(narrow)
    with pytest.raises(ValueError, match=r"\[batch, time, labels\]"):
        decoder.decode(np.zeros((5, len(ALPHABET) + 1)))


# --------------------------------------------------------------------------- every decoder


@pytest.mark.parametrize("name", ["greedy", "beam", "beam_lm"])
def test_every_decoder_reads_known_logits(name: str, small_lm: Path) -> None:
    batch, lengths = batch_of("the speech is clear", "recognition works", "")
    config = DecoderConfig(name=name, beam_width=16, lm_path=str(small_lm) if name == "beam_lm" else None)
    with make_decoder(config, ALPHABET) as decoder:
        assert decoder.name == name
        assert decoder.decode(batch, lengths) == ["the speech is clear", "recognition works", ""]


def test_lm_path_argument_overrides_configuration(small_lm: Path) -> None:
    config = DecoderConfig(name="beam_lm", lm_path="/nonexistent.arpa")
    with make_decoder(config, ALPHABET, lm_path=small_lm) as decoder:
        assert decoder.language_model_info.path == small_lm
        assert decoder.language_model_info.order == 3


def test_the_schema_fills_in_what_a_mapping_leaves_out_and_a_name_overrides(small_lm: Path) -> None:
    defaults = DecoderConfig()
    beam = make_decoder({"name": "beam"}, ALPHABET)
    assert beam.beam_width == defaults.beam_width and beam.options["hotword_weight"] == defaults.hotword_weight
    assert make_decoder(None, ALPHABET).name == defaults.name
    configured = DecoderConfig(name="greedy", beam_width=7, lm_path=str(small_lm), alpha=1.5, beta=0.25)
    with make_decoder(configured, ALPHABET, name="beam_lm") as decoder:  # the name swapped, the settings kept
        assert (decoder.name, decoder.beam_width, decoder.language_model_info.path) == ("beam_lm", 7, small_lm)
    with pytest.raises(UserError, match="beam_width"):
        make_decoder({"beam_width": "wide"}, ALPHABET)


def test_hotword_wins_an_ambiguous_word() -> None:
    # "cat" or "cot": the acoustic model slightly prefers "cat"
    logits = logits_for("cat", rivals={1: {"a": 0.5, "o": 0.4}})[None]
    assert make_decoder(DecoderConfig(name="beam"), ALPHABET).decode(logits) == ["cat"]
    config = DecoderConfig(name="beam", hotwords=["cot"], hotword_weight=5.0)
    assert make_decoder(config, ALPHABET).decode(logits) == ["cot"]


def test_unigram_file_restricts_the_vocabulary(small_lm: Path, tmp_path: Path) -> None:
    unigrams = tmp_path / "words.txt"
    unigrams.write_text("speech\nclear\n")
    config = DecoderConfig(name="beam_lm", lm_path=str(small_lm), unigrams=str(unigrams))
    decoder = make_decoder(config, ALPHABET)
    assert decoder.language_model_info.unigrams == ["speech", "clear"]


def test_pool_gives_the_same_transcripts_in_input_order(monkeypatch: pytest.MonkeyPatch, small_lm: Path) -> None:
    texts = ["the speech is clear", "a", "recognition of speech is hard", "", "we like clear speech"] * 2
    batch, lengths = batch_of(*texts)
    sequential = BeamSearchDecoder(ALPHABET, beam_width=8, language_model_path=small_lm, workers=1)
    monkeypatch.setattr(decoding, "POOL_MIN_FRAMES", 0)
    with BeamSearchDecoder(ALPHABET, beam_width=8, language_model_path=small_lm, workers=2) as pooled:
        assert pooled.decode(batch, lengths) == sequential.decode(batch, lengths) == texts
        assert pooled._pool is not None
        pooled.set_weights(alpha=1.0, beta=0.5)  # new weights: the workers must be restarted
        assert pooled._pool is None
        assert pooled.decode(batch, lengths) == texts
    assert pooled._pool is None


# --------------------------------------------------------------------------- bad inputs


def test_unknown_decoder_name() -> None:
    with pytest.raises(UserError, match=r"decoder.name: Invalid value 'viterbi', expected one of \[greedy, beam, beam_lm\]"):
        make_decoder({"name": "viterbi"}, ALPHABET)


def test_beam_lm_without_language_model() -> None:
    with pytest.raises(UserError, match="needs a language model"):
        make_decoder(DecoderConfig(name="beam_lm"), ALPHABET)


def test_missing_language_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="language model not found"):
        make_decoder(DecoderConfig(name="beam_lm"), ALPHABET, lm_path=tmp_path / "none.arpa")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a language model\n", "neither an ARPA file"),
        (b"\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1.0\ta\n", "cannot load language model"),
        (b"mmap lm http://kheafield.com/code format version 5\n\x00\x01garbage", "cannot load language model"),
    ],
)
def test_corrupt_language_model(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.lm"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        make_decoder(DecoderConfig(name="beam_lm"), ALPHABET, lm_path=path)


def test_language_model_sharing_no_word_with_the_alphabet(tmp_path: Path) -> None:
    path = tmp_path / "russian.arpa"
    build_arpa([["привет", "мир"], ["мир", "труд", "май"]], order=2).write(path)
    with pytest.raises(UserError, match="shares no words with the alphabet"):
        make_decoder(DecoderConfig(name="beam_lm"), ALPHABET, lm_path=path)


def test_missing_unigram_file(small_lm: Path, tmp_path: Path) -> None:
    config = DecoderConfig(name="beam_lm", lm_path=str(small_lm), unigrams=str(tmp_path / "none.txt"))
    with pytest.raises(UserError, match="unigram file not found"):
        make_decoder(config, ALPHABET)


def test_dropping_repeated_blank_frames_changes_no_transcript(small_lm: Path) -> None:
    """The speed-up in BeamSearchDecoder is exact: pyctcdecode on all frames reads the same."""
    from asr.decoding.decoders import drop_repeated_blank_frames, log_softmax

    rng = np.random.default_rng(1)
    words = "the speech is clear recognition works we like".split()
    decoder = BeamSearchDecoder(ALPHABET, beam_width=8, language_model_path=small_lm, workers=1)
    dropped_total = 0
    for _ in range(20):
        text = " ".join(rng.choice(words, size=rng.integers(1, 5)))
        frames = []
        for char in text:
            frames += [0] * int(rng.integers(0, 4)) + [ALPHABET.symbols.index(char) + 1] * int(rng.integers(1, 3))
        frames += [0] * int(rng.integers(1, 6))
        logits = rng.normal(scale=1.5, size=(len(frames), len(ALPHABET) + 1))
        logits[np.arange(len(frames)), frames] += rng.uniform(4, 12, size=len(frames))
        log_probs = log_softmax(logits.astype(np.float32))
        kept = drop_repeated_blank_frames(log_probs, -5.0)
        dropped_total += len(log_probs) - len(kept)
        expected = decoder.decoder.decode(log_probs, beam_width=8)  # pyctcdecode itself, every frame
        assert decoder.decode(log_probs[None]) == [expected]
    assert dropped_total > 0
