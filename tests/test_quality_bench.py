"""bench/quality.py's pure helpers (sentence choice, normalisation, report shape) and, where the
binaries are installed (``make voices``), one flite and one Festival utterance. Fast: no model."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from asr.text import DEFAULT_SYMBOLS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_normalise_writes_sentences_in_the_alphabet(quality):
    assert quality.normalise("Well-known  ‘Dogs’ bark, don’t they?", DEFAULT_SYMBOLS) == "well known dogs bark don't they"
    assert quality.normalise("Café au lait.", DEFAULT_SYMBOLS) == "cafe au lait"


def test_normalise_refuses_what_the_alphabet_cannot_write_unless_lenient(quality):
    assert quality.normalise("He ran 5 miles.", DEFAULT_SYMBOLS) is None
    assert quality.normalise("Ελλάδα is Greece", DEFAULT_SYMBOLS) is None
    assert quality.normalise("He ran 5 miles.", DEFAULT_SYMBOLS, strict=False) == "he ran miles"
    assert quality.normalise("...", DEFAULT_SYMBOLS) is None


def test_sentences_come_from_a_manifest_or_plain_text(quality, tmp_path):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("\n".join(json.dumps({"audio_filepath": f"{i}.wav", "duration": 1.0, "text": text})
                                  for i, text in enumerate(["One cat.", "Two 2 dogs", "one cat", "three birds"])) + "\n")
    plain = tmp_path / "sentences.txt"
    plain.write_text("One cat.\n\nthree birds\n")
    assert quality.read_sentences(plain) == ["One cat.", "three birds"]
    chosen, left_out = quality.choose_sentences(quality.read_sentences(manifest), DEFAULT_SYMBOLS, 10)
    assert (chosen, left_out) == (["one cat", "three birds"], 1)
    assert quality.choose_sentences(quality.read_sentences(manifest), DEFAULT_SYMBOLS, 1) == (["one cat"], 0)
    with pytest.raises(quality.BenchError, match="not found"):
        quality.read_sentences(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"audio_filepath": "x.wav"}\n')
    with pytest.raises(quality.BenchError, match=r"bad.jsonl:2"):
        quality.read_sentences(tmp_path / "bad.jsonl")


def test_sphinx_transcriptions_parse(quality):
    text = "<s> ten of clubs  </s> (001)\none one (man.ah.11a)\n\n"
    assert quality.parse_sphinx_transcription(text) == {"001": "ten of clubs", "man.ah.11a": "one one"}


def test_report_has_a_row_per_voice_and_a_summary_per_set(quality, tmp_path):
    def utterance(set_name, voice, reference, greedy, sphinx):
        return quality.Utterance(set_name, voice, tmp_path / "a.wav", reference, 2.0,
                                 {"greedy": greedy, "pocketsphinx": sphinx})

    utterances = [utterance("festival", "festival kal_diphone", "a b c d", "a b c d", "a x c d"),
                  utterance("festival", "festival ked_diphone", "a b", "", "A B"),
                  utterance("real", "cards", "ten of clubs", "ten of clubs", "ten of clubs")]
    seconds = {voice: {"greedy": 0.2, "pocketsphinx": 1.0}
               for voice in ("festival kal_diphone", "festival ked_diphone", "cards")}
    report = quality.build_report(utterances, seconds, ["greedy", "pocketsphinx"], DEFAULT_SYMBOLS, {"model": "m"})
    assert [s["set"] for s in report["sets"]] == ["festival", "real"]
    festival = report["sets"][0]
    assert [v["voice"] for v in festival["voices"]] == ["festival kal_diphone", "festival ked_diphone"]
    kal = festival["voices"][0]["systems"]
    assert kal["greedy"]["wer"] == 0.0 and kal["pocketsphinx"]["wer"] == 0.25
    assert kal["greedy"]["rtf"] == pytest.approx(0.1)
    summary = festival["summary"]
    assert summary["utterances"] == 2 and summary["audio_seconds"] == 4.0
    assert summary["systems"]["greedy"]["wer"] == pytest.approx(2 / 6)  # corpus rate, not a mean of rates
    assert summary["systems"]["pocketsphinx"]["wer"] == pytest.approx(1 / 6)  # hypotheses are normalised
    assert summary["systems"]["pocketsphinx"]["rtf"] == pytest.approx(0.5)
    assert len(report["transcripts"]) == 3 and report["model"] == "m"
    table = quality.format_table(report)
    assert "Festival voices (never trained on)" in table and "real speech" in table
    assert table.count("all voices") == 2
    json.dumps(report)


@pytest.mark.parametrize("engine, voice, binary", [("flite", "slt", "flite"),
                                                    ("festival", "kal_diphone", "text2wave"),
                                                    ("dectalk", "drawn", None), ("mbrola", "drawn", None),
                                                    ("pico", "drawn", None)])
def test_an_engine_writes_16_khz_mono(quality, tmp_path, engine, voice, binary):
    if binary is not None and shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (make voices)")
    if binary is None:
        try:
            quality.check_engines([engine])
        except quality.UserError as error:
            pytest.skip(str(error))
    soundfile = pytest.importorskip("soundfile")
    path, made = quality.synthesise(quality.Voice(engine, voice), 0, "the cat sat on the mat", tmp_path)
    assert made and path.is_file()
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 0.5 < info.duration < 5
    assert quality.synthesise(quality.Voice(engine, voice), 0, "the cat sat on the mat", tmp_path) == (path, False)
