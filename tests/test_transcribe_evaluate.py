"""`asr transcribe`, `asr evaluate` and `asr lm tune` end to end on a tiny (untrained) bundle.

The model is built, not trained (the pipeline test trains one): these tests check the plumbing
(features, batching by length, decoders, bundled LM, reports, errors), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asr.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from asr.bundle import save_bundle
    from asr.configuration import validate
    from asr.data.synth import synthesize_corpus
    from asr.decoding.lm import build_arpa
    from asr.models.architectures import build_model
    from asr.text import Alphabet

    folder = tmp_path_factory.mktemp("transcribe")
    manifests = synthesize_corpus(folder / "corpus", 6, seed=3, jobs=1, quiet=True)
    config = validate({
        "model": {"parameters": {"rnn_sizes": [16], "conv_filters": [4], "conv_kernels": [[5, 11]],
                                 "conv_strides": [[2, 2]]}},
        "decoder": {"beam_width": 4},
        "exp_dir": str(folder),
    })
    alphabet = Alphabet.default()
    model = build_model(config.model, config.features.num_features, len(alphabet) + 1)
    bundle = save_bundle(folder / "tiny.bin", model, config, alphabet)
    texts = [json.loads(line)["text"].split() for line in manifests["all"].read_text().splitlines()]
    lm = folder / "lm.arpa"
    build_arpa(texts, order=2).write(lm)
    empty = folder / "empty.jsonl"
    empty.write_text("")
    not_audio = folder / "notes.wav"
    not_audio.write_text("this is text, not audio\n")
    wavs = sorted((folder / "corpus" / "wavs").glob("*.wav"))
    return {"bundle": bundle, "manifest": manifests["all"], "lm": lm, "empty": empty, "not_audio": not_audio,
            "wav0": wavs[0], "wav1": wavs[1], "folder": folder}


def invoke(*arguments: str):
    return runner.invoke(app, [str(argument) for argument in arguments])


def test_transcribe_prints_one_line_per_file(workspace: dict[str, Path]) -> None:
    result = invoke("transcribe", workspace["wav1"], workspace["wav0"], "--model", workspace["bundle"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "\t" in line]
    assert [line.split("\t")[0] for line in lines] == [str(workspace["wav1"]), str(workspace["wav0"])]


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_transcribe_json(workspace: dict[str, Path], decoder: str) -> None:
    result = invoke("transcribe", workspace["wav0"], workspace["wav1"], "--model", workspace["bundle"],
                    "--decoder", decoder, "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [record["audio_filepath"] for record in records] == [str(workspace["wav0"]), str(workspace["wav1"])]
    for record in records:
        assert set(record) == {"audio_filepath", "duration", "text"}
        assert 0.5 < record["duration"] < 10
        assert isinstance(record["text"], str)


def test_evaluate_prints_scores_and_writes_a_report(workspace: dict[str, Path]) -> None:
    report = workspace["folder"] / "reports" / "eval.json"
    result = invoke("evaluate", "--model", workspace["bundle"], "--manifest", workspace["manifest"],
                    "--worst", "2", "--report", report)
    assert result.exit_code == 0, result.output
    assert "WER" in result.output and "CER" in result.output and "worst utterances" in result.output
    document = json.loads(report.read_text())
    assert document["utterances"] == 6 == len(document["per_utterance"])
    assert document["decoder"] == "greedy"
    assert 0.0 <= document["cer"] and 0.0 <= document["wer"]
    assert len(document["worst"]) <= 2
    assert document["audio_seconds"] > 0 and document["real_time_factor"] > 0
    first = document["per_utterance"][0]
    assert {"audio_filepath", "reference", "hypothesis", "wer", "cer", "substitutions", "deletions",
            "insertions"} <= set(first)


def test_tune_writes_weights_and_language_model_into_the_bundle(workspace: dict[str, Path], tmp_path: Path) -> None:
    from asr.bundle import load_bundle

    bundle = tmp_path / "tuned.bin"
    bundle.write_bytes(workspace["bundle"].read_bytes())
    result = invoke("lm", "tune", "--model", bundle, "--manifest", workspace["manifest"], "--lm", workspace["lm"],
                    "--trials", "3")
    assert result.exit_code == 0, result.output
    best = next(line for line in result.output.splitlines() if line.startswith("best:"))
    loaded = load_bundle(bundle)
    assert loaded.language_model is not None and loaded.language_model.name == "lm.arpa"
    decoder = loaded.configuration.decoder
    assert decoder.name == "beam_lm" and decoder.lm_path == "lm/lm.arpa"
    assert f"alpha={decoder.alpha} beta={decoder.beta}" in best
    assert loaded.configuration.decoder.beam_width == 4  # the rest is untouched

    # the tuned bundle now decodes with its own LM by default
    result = invoke("evaluate", "--model", bundle, "--manifest", workspace["manifest"], "--worst", "0")
    assert result.exit_code == 0, result.output
    assert "decoder beam_lm" in result.output
    # a grid search without --lm uses the bundled LM; --no-write leaves the bundle alone
    before = bundle.read_bytes()
    result = invoke("lm", "tune", "--model", bundle, "--manifest", workspace["manifest"], "--trials", "1",
                    "--no-write")
    assert result.exit_code == 0, result.output
    assert bundle.read_bytes() == before


def test_evaluate_record_makes_the_figures_the_bundles_test_figures(workspace: dict[str, Path], tmp_path: Path) -> None:
    import json
    import zipfile

    from asr.pretrained.registry import describe_bundle

    from asr.bundle import update_bundle

    bundle = tmp_path / "recorded.bin"
    bundle.write_bytes(workspace["bundle"].read_bytes())
    # as a training run leaves it: greedy figures beside the configured decoder's
    update_bundle(bundle, metadata={"metrics": {"best_val_loss": 12.5, "test_wer": 0.9, "test_greedy_wer": 0.95}})
    before = json.loads(zipfile.ZipFile(bundle).read("metadata.json"))
    result = invoke("evaluate", "--model", bundle, "--manifest", workspace["manifest"], "--decoder", "beam",
                    "--worst", "0", "--record")
    assert result.exit_code == 0, result.output
    summary = result.output.splitlines()[0]  # "WER 83.33%  CER ..."
    entry = describe_bundle(bundle, "path")
    assert summary.startswith(f"WER {entry.metrics['test_wer']:.2%}  CER {entry.metrics['test_cer']:.2%}")
    assert entry.test == {"decoder": "beam", "manifest": workspace["manifest"].name}
    after = json.loads(zipfile.ZipFile(bundle).read("metadata.json"))
    assert after["model"] == before["model"] and after["versions"] == before["versions"]  # the rest is kept
    assert {key: after["metrics"][key] for key in before["metrics"] if not key.startswith("test_")} == \
        {key: value for key, value in before["metrics"].items() if not key.startswith("test_")}
    assert after["metrics"]["best_val_loss"] == 12.5 and "test_greedy_wer" not in after["metrics"]  # not stale

    # the packaged model is never rewritten in place: one line, nothing written
    packaged = invoke("evaluate", "--model", "en", "--manifest", workspace["manifest"], "--record")
    assert packaged.exit_code == 2 and "is a packaged model: record figures in a copy" in packaged.output


# --------------------------------------------------------------------------- bad inputs


def test_file_that_is_not_audio(workspace: dict[str, Path]) -> None:
    result = invoke("transcribe", workspace["not_audio"], "--model", workspace["bundle"])
    assert result.exit_code == 2
    assert f"error: cannot read audio file {workspace['not_audio']}" in result.output


def test_missing_audio_file(workspace: dict[str, Path]) -> None:
    result = invoke("transcribe", workspace["folder"] / "nope.wav", "--model", workspace["bundle"])
    assert result.exit_code == 2
    assert "audio file not found" in result.output


def test_empty_manifest(workspace: dict[str, Path]) -> None:
    result = invoke("evaluate", "--model", workspace["bundle"], "--manifest", workspace["empty"])
    assert result.exit_code == 2
    assert "has no utterances" in result.output


def test_beam_lm_on_a_bundle_without_language_model(workspace: dict[str, Path]) -> None:
    result = invoke("transcribe", workspace["wav0"], "--model", workspace["bundle"], "--decoder", "beam_lm")
    assert result.exit_code == 2
    assert "needs a language model" in result.output


def test_tune_without_language_model(workspace: dict[str, Path]) -> None:
    result = invoke("lm", "tune", "--model", workspace["bundle"], "--manifest", workspace["manifest"])
    assert result.exit_code == 2
    assert "has no language model" in result.output


@pytest.mark.parametrize("content, message", [
    ("not an lm", "neither an ARPA file"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\tпривет\n\n\\end\\\n", "cannot load language model"),
])
def test_tune_with_a_bad_language_model(workspace: dict[str, Path], tmp_path: Path, content: str, message: str) -> None:
    lm = tmp_path / "bad.arpa"
    lm.write_text(content)
    result = invoke("lm", "tune", "--model", workspace["bundle"], "--manifest", workspace["manifest"], "--lm", lm)
    assert result.exit_code == 2
    assert message in result.output


def test_tune_with_a_language_model_of_another_script(workspace: dict[str, Path], tmp_path: Path) -> None:
    from asr.decoding.lm import build_arpa

    lm = tmp_path / "russian.arpa"
    build_arpa([["привет", "мир"], ["мир", "труд"]], order=2).write(lm)
    result = invoke("lm", "tune", "--model", workspace["bundle"], "--manifest", workspace["manifest"], "--lm", lm)
    assert result.exit_code == 2
    assert "shares no words with the alphabet" in result.output


def test_missing_model(workspace: dict[str, Path]) -> None:
    result = invoke("evaluate", "--model", workspace["folder"] / "none.bin", "--manifest", workspace["manifest"])
    assert result.exit_code == 2
    assert "model bundle not found" in result.output


def test_usage_mistakes_are_one_line_naming_the_help() -> None:
    import subprocess
    import sys

    for arguments, fragment in ((["transcribe", "--bogus"], "No such option: --bogus"),
                                (["transcribe"], "Missing argument"),
                                (["data", "synth", "--out", "x", "--count", "many"], "Invalid value for '--count'")):
        done = subprocess.run([str(Path(sys.executable).with_name("asr")), *arguments], capture_output=True,
                              text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert fragment in lines[0] and f"'asr {' '.join(arguments[:2] if arguments[0] == 'data' else arguments[:1])} --help'" in lines[0]
