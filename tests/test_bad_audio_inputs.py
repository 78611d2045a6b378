"""Bad inputs end in one clear line, never a traceback (issue 12, smaller ones): an all-NaN WAV in
``asr transcribe`` / ``asr evaluate``; one unreadable file among many (the good ones are still
transcribed and printed); a DeepSpeech CSV row whose ``wav_filesize`` is not a number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from asr.cli import app
from asr.errors import UserError
from asr.data.manifest import read_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from asr.bundle import save_bundle
    from asr.configuration import validate
    from asr.data.synth import synthesize_corpus
    from asr.models.architectures import build_model
    from asr.text import Alphabet

    folder = tmp_path_factory.mktemp("bad-audio")
    manifests = synthesize_corpus(folder / "corpus", 4, seed=9, jobs=1, quiet=True)
    config = validate({"model": {"parameters": {"rnn_sizes": [8], "conv_filters": [4], "conv_kernels": [[5, 11]],
                                                "conv_strides": [[2, 2]]}}, "exp_dir": str(folder)})
    alphabet = Alphabet.default()
    bundle = save_bundle(folder / "tiny.bin", build_model(config.model, config.features.num_features,
                                                          len(alphabet) + 1), config, alphabet)
    nan = folder / "nan.wav"
    soundfile.write(nan, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    some_inf = folder / "inf.wav"
    samples = np.zeros(16000, dtype=np.float32)
    samples[100:103] = np.inf
    soundfile.write(some_inf, samples, 16000, subtype="FLOAT")
    not_audio = folder / "notes.wav"
    not_audio.write_text("text, not audio\n")
    wavs = sorted((folder / "corpus" / "wavs").glob("*.wav"))
    return {"bundle": bundle, "nan": nan, "inf": some_inf, "not_audio": not_audio, "wav0": wavs[0],
            "wav1": wavs[1], "folder": folder, "manifest": manifests["all"]}


def invoke(*arguments: object):  # noqa: ANN201
    return runner.invoke(app, [str(argument) for argument in arguments])


def one_error_line(result, *fragments: str) -> None:  # noqa: ANN001
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_an_all_nan_wav_is_one_error_line(workspace: dict[str, Path]) -> None:
    one_error_line(invoke("transcribe", workspace["nan"], "--model", workspace["bundle"]),
                   f"audio file {workspace['nan']} has only NaN or infinite samples")
    one_error_line(invoke("transcribe", workspace["inf"], "--model", workspace["bundle"]),
                   "has 3 NaN or infinite sample(s)")
    manifest = workspace["folder"] / "with-nan.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(workspace["nan"]), "duration": 1.0, "text": "x"}) + "\n")
    one_error_line(invoke("evaluate", "--model", workspace["bundle"], "--manifest", manifest),
                   "has only NaN or infinite samples")


def test_one_unreadable_file_among_many_still_prints_the_good_ones(workspace: dict[str, Path]) -> None:
    result = invoke("transcribe", workspace["wav1"], workspace["not_audio"], workspace["wav0"],
                    "--model", workspace["bundle"])
    one_error_line(result, f"cannot read audio file {workspace['not_audio']}")
    printed = [line.split("\t")[0] for line in result.stdout.splitlines() if "\t" in line]
    assert printed == [str(workspace["wav1"]), str(workspace["wav0"])]

    missing = workspace["folder"] / "gone.wav"
    result = invoke("transcribe", workspace["nan"], workspace["wav0"], missing, "--model", workspace["bundle"], "--json")
    one_error_line(result, "2 of 3 files could not be transcribed", "only NaN", f"audio file not found: {missing}")
    assert [json.loads(line)["audio_filepath"] for line in result.stdout.splitlines()] == [str(workspace["wav0"])]

    # nothing readable at all: refused before the model is even loaded
    one_error_line(invoke("transcribe", missing, "--model", workspace["folder"] / "no-such-model.bin"),
                   "audio file not found")


def test_a_csv_row_with_a_bad_wav_filesize_is_refused_naming_the_row(workspace: dict[str, Path]) -> None:
    manifest = workspace["folder"] / "sizes.csv"
    wav = workspace["wav0"]
    manifest.write_text("wav_filename,wav_filesize,transcript\n"
                        f"{wav},{wav.stat().st_size},fine\n"
                        f"{wav},abc,sized wrong\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"sizes\.csv:3: wav_filesize 'abc' is not a size in bytes"):
        read_manifest(manifest)
    for bad in ("-5", "1.5", "12 kB"):
        manifest.write_text(f"wav_filename,wav_filesize,transcript\n{wav},{bad},x\n", encoding="utf-8")
        with pytest.raises(UserError, match=rf"sizes\.csv:2: wav_filesize '{bad}'"):
            read_manifest(manifest)
    one_error_line(invoke("evaluate", "--model", workspace["bundle"], "--manifest", manifest),
                   "sizes.csv:2: wav_filesize '12 kB'")
    manifest.write_text(f"wav_filename,wav_filesize,transcript\n{wav},{wav.stat().st_size},fine\n", encoding="utf-8")
    assert [utterance.text for utterance in read_manifest(manifest)] == ["fine"]
