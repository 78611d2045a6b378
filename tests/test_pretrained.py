"""Models by name: the package folder, then ~/.cache/asr/models, then $ASR_MODELS_DIR, then a path;
``asr models list``; ``asr transcribe`` / ``asr evaluate`` with ``--model NAME``."""

import json
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from omegaconf import OmegaConf
from typer.testing import CliRunner

import asr
from asr.pretrained import registry as models_registry
from asr.bundle import save_bundle
from asr.cli import app
from asr.configuration import TrainConfig
from asr.errors import UserError
from asr.models.architectures import build_model
from asr.text import Alphabet

REPO = Path(__file__).resolve().parents[1]


def tiny_bundle(path: Path, rnn_size: int = 8, metrics: dict | None = None) -> Path:
    config = OmegaConf.structured(TrainConfig(exp_dir="/tmp/x"))
    config.model.parameters.rnn_sizes = [rnn_size]
    config.model.parameters.conv_filters = [2, 2]
    alphabet = Alphabet.default()
    model = build_model(config.model, config.features.num_features, len(alphabet) + 1)
    return save_bundle(path, model, config, alphabet, metrics=metrics)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two bundles that differ in size, so a test can tell which one a name resolved to."""
    folder = tmp_path_factory.mktemp("bundles")
    return {"small": tiny_bundle(folder / "small.bin", 8, {"test_wer": 0.25, "test_cer": 0.125}),
            "large": tiny_bundle(folder / "large.bin", 12)}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Empty package, cache and $ASR_MODELS_DIR folders, and a current folder, all under tmp_path."""
    places = {name: tmp_path / name for name in ("package", "home", "env", "cwd")}
    for place in places.values():
        place.mkdir()
    monkeypatch.setattr(models_registry, "PACKAGE_FOLDER", places["package"])
    monkeypatch.setenv("HOME", str(places["home"]))
    monkeypatch.setenv("ASR_MODELS_DIR", str(places["env"]))
    monkeypatch.chdir(places["cwd"])
    places["cache"] = places["home"] / ".cache" / "asr" / "models"
    places["cache"].mkdir(parents=True)
    return places


def test_the_package_folder_ships_with_the_wheel():
    assert models_registry.PACKAGE_FOLDER == REPO / "asr" / "pretrained"
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"*.bin", "*.md"} <= set(package_data["asr.pretrained"])


def test_a_name_resolves_package_then_cache_then_env_then_path(folders, bundles):
    order = ["package", "cache", "env", "cwd"]
    for place in order:
        shutil.copy(bundles["small"], folders[place] / "tiny.bin")
    for place in order:
        found = models_registry.resolve_model_path("tiny" if place != "cwd" else "tiny.bin")
        assert found.resolve() == (folders[place] / "tiny.bin").resolve(), place
        (folders[place] / "tiny.bin").unlink()  # the next place is found once this one is gone


def test_a_name_with_the_suffix_is_the_same_name(folders, bundles):
    shutil.copy(bundles["small"], folders["cache"] / "tiny.bin")
    assert models_registry.resolve_model_path("tiny.bin") == models_registry.resolve_model_path("tiny")


def test_a_value_with_a_folder_is_only_a_path(folders, bundles):
    shutil.copy(bundles["small"], folders["package"] / "model.bin")
    (folders["cwd"] / "sub").mkdir()
    shutil.copy(bundles["large"], folders["cwd"] / "sub" / "model.bin")
    assert models_registry.resolve_model_path("sub/model.bin") == Path("sub/model.bin")
    assert models_registry.resolve_model_path(str(bundles["large"])) == bundles["large"]
    with pytest.raises(UserError, match="^model bundle not found: .*elsewhere/model.bin$"):
        models_registry.resolve_model_path(str(folders["cwd"] / "elsewhere" / "model.bin"))


def test_an_unknown_name_is_one_line_listing_every_place(folders):
    with pytest.raises(UserError) as error:
        models_registry.resolve_model_path("nosuch")
    message = str(error.value)
    assert "\n" not in message and message.startswith("no model named 'nosuch'; looked in ")
    for place in ("package", "cache", "env"):
        assert str(folders[place] / "nosuch.bin") in message
    assert "./nosuch" in message and "asr models list" in message


def test_load_model_by_name_from_the_package_folder(folders, bundles):
    shutil.copy(bundles["large"], folders["package"] / "en.bin")
    shutil.copy(bundles["small"], folders["cache"] / "en.bin")  # shadowed by the packaged one
    pipeline = asr.load_model("en")
    assert pipeline.configuration.model.parameters.rnn_sizes == [12]
    assert pipeline.alphabet == Alphabet.default()


def invoke(*arguments: str):
    # a wide terminal, so rich folds no cell of the table
    return CliRunner().invoke(app, list(arguments), env={"COLUMNS": "300"})


def test_models_list_json_describes_every_installed_bundle(folders, bundles):
    shutil.copy(bundles["small"], folders["package"] / "en.bin")
    shutil.copy(bundles["large"], folders["cache"] / "en.bin")
    shutil.copy(bundles["large"], folders["env"] / "big.bin")
    (folders["env"] / "broken.bin").write_bytes(b"not a zip at all")
    result = invoke("models", "list", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert [folder["where"] for folder in document["folders"]] == ["package", "cache", "$ASR_MODELS_DIR"]
    models = {(entry["name"], entry["where"]): entry for entry in document["models"]}
    assert set(models) == {("en", "package"), ("en", "cache"), ("big", "$ASR_MODELS_DIR"),
                           ("broken", "$ASR_MODELS_DIR")}
    packaged = models["en", "package"]
    small = asr.load_model(str(bundles["small"])).model.count_params()
    assert packaged["parameters"] == small and packaged["architecture"] == "deepspeech2"
    assert packaged["metrics"] == {"test_wer": 0.25, "test_cer": 0.125} and packaged["decoder"] == "greedy"
    assert packaged["size_mb"] == round(bundles["small"].stat().st_size / 1e6, 2) and packaged["shadowed_by"] is None
    assert models["en", "cache"]["shadowed_by"] == str(folders["package"] / "en.bin")
    assert models["big", "$ASR_MODELS_DIR"]["parameters"] > small
    assert "not a readable model bundle" in models["broken", "$ASR_MODELS_DIR"]["error"]


def test_models_list_table_escapes_names(folders, bundles):
    shutil.copy(bundles["small"], folders["cache"] / "[bold]en.bin")
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    assert "[bold]en" in result.output  # printed as it is, not taken for rich markup
    assert "25.0%" in result.output and "12.5%" in result.output and "cache" in result.output


def test_models_list_with_nothing_installed_says_where_it_looked(folders):
    result = invoke("models", "list")
    assert result.exit_code == 0
    assert result.output.startswith("no models installed; looked in ") and str(folders["cache"]) in result.output


def test_parameters_are_counted_when_the_metadata_lacks_them(folders, bundles):
    # an older bundle: metadata.json without the model's parameter count
    target = folders["cache"] / "old.bin"
    with zipfile.ZipFile(bundles["small"]) as source, zipfile.ZipFile(target, "w") as archive:
        for name in source.namelist():
            data = source.read(name)
            if name == "metadata.json":
                metadata = json.loads(data)
                del metadata["model"]
                data = json.dumps(metadata).encode()
            archive.writestr(name, data)
    (entry,) = models_registry.installed_models()
    assert entry.parameters == asr.load_model(str(bundles["small"])).model.count_params()


@pytest.fixture
def audio(tmp_path):
    rate = 16000
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", tone, rate)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(tmp_path / "a.wav"), "duration": 1.0, "text": "a"}) + "\n")
    return tmp_path / "a.wav", manifest


def test_transcribe_and_evaluate_take_a_model_name(folders, bundles, audio):
    wav, manifest = audio
    shutil.copy(bundles["small"], folders["package"] / "en.bin")
    result = invoke("transcribe", str(wav), "--model", "en", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["audio_filepath"] == str(wav)
    result = invoke("evaluate", "--model", "en", "--manifest", str(manifest))
    assert result.exit_code == 0, result.output
    assert "WER" in result.output


def test_an_unknown_model_name_is_exit_2_with_one_line(folders, audio):
    import subprocess

    wav, _ = audio
    run = subprocess.run([sys.executable, "-m", "asr.cli", "transcribe", str(wav), "--model", "nosuch"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("error: no model named 'nosuch'; looked in ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr
