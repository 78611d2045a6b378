"""Importers on tiny corpora laid out exactly like LibriSpeech and Common Voice."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from asr.data.importers import corpus_transcript, import_commonvoice, import_librispeech
from asr.errors import UserError
from asr.data.manifest import read_manifest

MP3_WRITABLE = "MP3" in soundfile.available_formats()


def _tone(path: Path, seconds: float, sample_rate: int = 16000, format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = (0.3 * np.sin(2 * np.pi * 330 * time)).astype(np.float32)
    soundfile.write(path, signal, sample_rate, format=format)
    return path


@pytest.fixture()
def librispeech(tmp_path: Path) -> Path:
    """LibriSpeech/train-clean-5/SPEAKER/CHAPTER/{*.flac, SPEAKER-CHAPTER.trans.txt}."""
    split = tmp_path / "LibriSpeech" / "train-clean-5"
    chapter = split / "19" / "198"
    _tone(chapter / "19-198-0000.flac", 0.6)
    _tone(chapter / "19-198-0001.flac", 2.5)  # too long for max_duration=2
    (chapter / "19-198-0002.flac").write_bytes(b"fLaC but not really")  # unreadable
    _tone(chapter / "19-198-0003.flac", 0.4)  # empty transcript
    _tone(chapter / "19-198-0009.flac", 0.4)  # no transcript line at all
    (chapter / "19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY'S FIRST CHAPTER\n"
        "19-198-0001 A LONG ONE\n"
        "19-198-0002 BROKEN AUDIO\n"
        "19-198-0003 \n"
        "19-198-0004 AUDIO FILE IS MISSING\n", encoding="utf-8")
    other = split / "32" / "21631"
    _tone(other / "32-21631-0000.flac", 1.0)
    (other / "32-21631.trans.txt").write_text("32-21631-0000 SECOND SPEAKER\n", encoding="utf-8")
    return split


def test_librispeech_imports_and_counts_every_skip(librispeech: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "manifests" / "train.jsonl"
    with caplog.at_level(logging.WARNING, logger="asr.data.importers"):
        summary = import_librispeech(librispeech, out, max_duration=2.0)
    utterances = read_manifest(out)
    assert [(u.audio_filepath.name, u.text) for u in utterances] == [
        ("19-198-0000.flac", "northanger abbey's first chapter"),
        ("32-21631-0000.flac", "second speaker"),
    ]
    assert utterances[0].duration == pytest.approx(0.6)
    assert all(u.audio_filepath.is_file() for u in utterances)
    assert (summary.imported, summary.too_long, summary.unreadable, summary.empty_transcript) == (2, 1, 2, 2)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [summary.line()]
    assert "skipped 5: 1 longer than 2 s, 2 unreadable, 2 with an empty or missing transcript" in printed[0]
    assert "19-198-0002.flac" in caplog.text and "19-198-0004.flac" in caplog.text


def test_librispeech_root_folder_works_too(librispeech: Path, tmp_path: Path) -> None:
    summary = import_librispeech(librispeech.parent, tmp_path / "all.jsonl", max_duration=None)
    assert summary.imported == 3  # the 2.5 s clip is kept without a limit


def test_librispeech_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="LibriSpeech folder not found"):
        import_librispeech(tmp_path / "nope", tmp_path / "m.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no LibriSpeech transcripts"):
        import_librispeech(tmp_path / "empty", tmp_path / "m.jsonl")


@pytest.fixture()
def commonvoice(tmp_path: Path) -> Path:
    """cv-corpus/en/{train,dev,test,validated}.tsv + clips/*.mp3, as Common Voice ships it."""
    if not MP3_WRITABLE:
        pytest.skip(f"libsndfile {soundfile.__libsndfile_version__} cannot write MP3 (needs >= 1.1)")
    folder = tmp_path / "cv-corpus" / "en"
    clips = folder / "clips"
    _tone(clips / "common_voice_en_1.mp3", 1.2, 48000, "MP3")
    _tone(clips / "common_voice_en_2.mp3", 3.5, 48000, "MP3")  # too long
    _tone(clips / "common_voice_en_3.mp3", 0.8, 32000, "MP3")  # empty sentence
    (clips / "common_voice_en_4.mp3").write_bytes(b"\x00" * 64)  # unreadable
    _tone(clips / "common_voice_en_6.mp3", 0.9, 48000, "MP3")
    header = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment\n"
    rows = [
        ("common_voice_en_1.mp3", 'He said "Hello, World!" — twice.'),
        ("common_voice_en_2.mp3", "A sentence that is far too long."),
        ("common_voice_en_3.mp3", "  ...  "),
        ("common_voice_en_4.mp3", "Broken file."),
        ("common_voice_en_5.mp3", "This clip is missing."),
        ("common_voice_en_6.mp3", "Don’t stop."),
    ]
    body = "".join(f"abc{i}\t{path}\tid{i}\t{sentence}\t\t2\t0\t\t\t\t\ten\t\n"
                   for i, (path, sentence) in enumerate(rows))
    (folder / "train.tsv").write_text(header + body, encoding="utf-8")
    (folder / "dev.tsv").write_text(header + body.splitlines(keepends=True)[0], encoding="utf-8")
    for name in ("test", "validated"):
        (folder / f"{name}.tsv").write_text(header, encoding="utf-8")
    return folder


def test_commonvoice_references_mp3_clips_and_counts_skips(commonvoice: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cv-train.jsonl"
    summary = import_commonvoice(commonvoice, out, split="train", max_duration=3.0)
    utterances = read_manifest(out)
    assert [(u.audio_filepath.name, u.text) for u in utterances] == [
        ("common_voice_en_1.mp3", "he said hello world twice"),
        ("common_voice_en_6.mp3", "don't stop"),
    ]
    assert utterances[0].duration == pytest.approx(1.2, abs=0.03)
    assert (summary.too_long, summary.unreadable, summary.empty_transcript) == (1, 2, 1)
    assert capsys.readouterr().out.strip() == summary.line()
    # the referenced MP3 decodes with the same stack training uses (librosa -> soundfile)
    import librosa

    signal, rate = librosa.load(utterances[0].audio_filepath, sr=16000)
    assert rate == 16000 and abs(len(signal) / rate - 1.2) < 0.03


def test_commonvoice_other_split_and_errors(commonvoice: Path, tmp_path: Path) -> None:
    assert import_commonvoice(commonvoice, tmp_path / "dev.jsonl", split="dev").imported == 1
    with pytest.raises(UserError, match=r"no other\.tsv .*splits present: dev, test, train, validated"):
        import_commonvoice(commonvoice, tmp_path / "x.jsonl", split="other")
    with pytest.raises(UserError, match="nothing to import"):
        import_commonvoice(commonvoice, tmp_path / "x.jsonl", split="test")
    assert not (tmp_path / "x.jsonl").exists()
    (commonvoice / "bad.tsv").write_text("client_id\tfile\ttext\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.tsv:1: header must have 'path' and 'sentence'"):
        import_commonvoice(commonvoice, tmp_path / "x.jsonl", split="bad")


def test_cli_import_prints_summary_and_errors_in_one_line(librispeech: Path, tmp_path: Path) -> None:
    from asr.cli import app

    runner = CliRunner()
    out = tmp_path / "cli.jsonl"
    result = runner.invoke(app, ["data", "import", "librispeech", str(librispeech), "--out", str(out),
                                 "--max-duration", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 utterances" in result.output and len(read_manifest(out)) == 2
    result = runner.invoke(app, ["data", "import", "commonvoice", str(tmp_path / "nope"), "--out", str(out)])
    assert result.exit_code == 2
    assert "error: Common Voice folder not found" in result.output


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("HELLO  WORLD", "hello world"),
        ("It's 'quoted' text.", "it's quoted text"),
        ("Ça coûte 5 €, n’est-ce pas ?", "ca coute 5 n'est ce pas"),  # the one normaliser: NFKD, marks dropped
        ("Grüße aus Köln", "gruße aus koln"),
        ("   ", ""),
    ],
)
def test_corpus_transcripts_are_normalised_then_punctuation_becomes_spaces(raw: str, clean: str) -> None:
    assert corpus_transcript(raw) == clean
