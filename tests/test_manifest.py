"""Manifests: JSON lines and Mozilla CSV in, JSON lines out, errors that name file and line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.errors import UserError
from asr.data.manifest import Utterance, read_manifest, read_manifest_with_stats, write_manifest


def _tone(path: Path, seconds: float, sample_rate: int = 16000) -> Path:
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 440 * time)).astype(np.float32), sample_rate)
    return path


def test_json_lines_round_trip_with_relative_and_absolute_paths(tmp_path: Path) -> None:
    inside = tmp_path / "corpus" / "wavs" / "a.wav"
    outside = tmp_path / "elsewhere" / "b.wav"
    utterances = [Utterance(inside, 1.25, "hello world"), Utterance(outside, 2.0, "ça va")]
    manifest = tmp_path / "corpus" / "train.jsonl"
    assert write_manifest(manifest, utterances) == 2
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert records[0]["audio_filepath"] == "wavs/a.wav"  # relative: the folder can move
    assert records[1]["audio_filepath"] == str(outside)
    assert read_manifest(manifest) == utterances
    assert all(utterance.audio_filepath.is_absolute() for utterance in read_manifest(manifest))


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance(tmp_path / "a.wav", 1.0, "old")])

    def broken():
        yield Utterance(tmp_path / "b.wav", 1.0, "new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_manifest(manifest, broken())
    assert [u.text for u in read_manifest(manifest)] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_max_duration_skips_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance(tmp_path / f"{i}.wav", float(i), "x") for i in range(1, 6)])
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        kept = read_manifest(manifest, max_duration=3.0)
    assert [u.duration for u in kept] == [1.0, 2.0, 3.0]
    assert "skipped 2 of 5 utterances longer than 3 s" in caplog.text
    _, stats = read_manifest_with_stats(manifest, max_duration=3.0)
    assert (stats.total, stats.kept, stats.skipped_too_long) == (5, 3, 2)


def test_nothing_logged_when_nothing_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance(tmp_path / "a.wav", 1.0, "x")])
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        read_manifest(manifest, max_duration=3.0)
    assert caplog.text == ""


def test_mozilla_csv_reads_duration_from_the_audio_header(tmp_path: Path) -> None:
    _tone(tmp_path / "one.wav", 0.5)
    (tmp_path / "clips").mkdir()
    _tone(tmp_path / "clips" / "two.flac", 1.5)
    manifest = tmp_path / "train.csv"
    manifest.write_text("wav_filename,wav_filesize,transcript\n"
                        f"one.wav,{(tmp_path / 'one.wav').stat().st_size},hello\n"
                        f"{tmp_path / 'clips' / 'two.flac'},0,\"a, quoted one\"\n", encoding="utf-8")
    utterances = read_manifest(manifest)
    assert [u.text for u in utterances] == ["hello", "a, quoted one"]
    assert utterances[0].audio_filepath == tmp_path / "one.wav"
    assert utterances[0].duration == pytest.approx(0.5)
    assert utterances[1].duration == pytest.approx(1.5)
    assert len(read_manifest(manifest, max_duration=1.0)) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"audio_filepath": "a.wav", "duration": 1, "text": "ok"}\n{"audio_filepath": "b.wav"\n',
         ":2: not valid JSON"),
        ('{"audio_filepath": "a.wav", "text": "x"}\n', ":1: missing key(s) duration"),
        ('\n\n{"audio_filepath": "a.wav", "duration": "long", "text": "x"}\n', ":3: duration 'long'"),
        ('{"audio_filepath": "a.wav", "duration": -1, "text": "x"}\n', ":1: duration -1"),
        ('{"audio_filepath": "a.wav", "duration": 1, "text": 5}\n', ":1: text must be a string"),
        ('["a.wav", 1, "x"]\n', ":1: expected a JSON object"),
    ],
)
def test_bad_json_lines_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=str(manifest)) as error:
        read_manifest(manifest)
    assert message in str(error.value)


def test_bad_csv_names_file_and_line(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.csv"
    manifest.write_text("wav_filename,wav_filesize,transcript\nmissing.wav,10,hello\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.csv:2: cannot read the duration of .*missing\.wav"):
        read_manifest(manifest)
    manifest.write_text("file,text\na.wav,hi\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.csv:1: CSV header must name"):
        read_manifest(manifest)


def test_missing_manifest_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
