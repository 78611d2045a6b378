"""The model bundle: round trip, and clear errors for bad files."""

import json
import zipfile

import numpy as np
import pytest
from omegaconf import OmegaConf

from asr.bundle import load_bundle, save_bundle
from asr.configuration import TrainConfig
from asr.errors import UserError
from asr.models import build_model
from asr.text import Alphabet


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    config = OmegaConf.structured(TrainConfig(exp_dir="/tmp/x"))
    config.model.parameters.rnn_sizes = [8]
    config.model.parameters.conv_filters = [2, 2]
    alphabet = Alphabet.default()
    model = build_model(config.model, config.features.num_features, len(alphabet) + 1)
    path = tmp_path_factory.mktemp("bundle") / "model.bin"
    save_bundle(path, model, config, alphabet, metrics={"test_cer": 0.5})
    return path, model


def test_round_trip_keeps_model_configuration_alphabet_and_metadata(bundle_path):
    path, model = bundle_path
    bundle = load_bundle(path)
    assert bundle.alphabet == Alphabet.default()
    assert bundle.configuration.model.parameters.rnn_sizes == [8]
    assert bundle.metadata["metrics"] == {"test_cer": 0.5}
    assert {"asr", "tensorflow", "keras"} <= set(bundle.metadata["versions"])
    features = np.random.default_rng(0).normal(size=(1, 20, 26)).astype(np.float32)
    np.testing.assert_allclose(bundle.model.predict_on_batch(features), model.predict_on_batch(features), atol=1e-6)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["alphabet.txt", "configuration.yaml", "metadata.json", "model.keras"]


def test_language_model_travels_in_the_bundle(bundle_path, tmp_path, monkeypatch):
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    bundle = load_bundle(bundle_path[0])
    lm = tmp_path / "words.arpa"
    lm.write_text("\\data\\\n")
    save_bundle(tmp_path / "with_lm.bin", bundle.model, bundle.configuration, bundle.alphabet, language_model=lm)
    loaded = load_bundle(tmp_path / "with_lm.bin")
    assert loaded.language_model.read_text() == "\\data\\\n"
    assert loaded.configuration.decoder.lm_path == "lm/words.arpa"


def test_truncated_bundle(bundle_path, tmp_path):
    data = bundle_path[0].read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.bin.*(truncated|corrupt)"):
        load_bundle(tmp_path / "cut.bin")


def test_not_a_zip(tmp_path):
    (tmp_path / "text.bin").write_text("hello")
    with pytest.raises(UserError, match="not a zip"):
        load_bundle(tmp_path / "text.bin")
    with pytest.raises(UserError, match="not found"):
        load_bundle(tmp_path / "missing.bin")


def test_foreign_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "foreign.bin", "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(UserError, match="not a model bundle: missing model.keras"):
        load_bundle(tmp_path / "foreign.bin")


def test_foreign_metadata_and_extra_entries(bundle_path, tmp_path):
    with zipfile.ZipFile(bundle_path[0]) as source:
        entries = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(tmp_path / "meta.bin", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, json.dumps({"format": "other"}) if name == "metadata.json" else data)
    with pytest.raises(UserError, match="format"):
        load_bundle(tmp_path / "meta.bin")
    with zipfile.ZipFile(tmp_path / "extra.bin", "w") as archive:
        for name, data in {**entries, "payload.py": b"print(1)"}.items():
            archive.writestr(name, data)
    with pytest.raises(UserError, match="unexpected entries payload.py"):
        load_bundle(tmp_path / "extra.bin")


@pytest.mark.parametrize("name", ["../x", "lm/../../x", "/etc/passwd"])
def test_entries_outside_the_archive_root_are_refused(bundle_path, tmp_path, name):
    with zipfile.ZipFile(bundle_path[0]) as source:
        entries = {entry: source.read(entry) for entry in source.namelist()}
    with zipfile.ZipFile(tmp_path / "escape.bin", "w") as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(UserError, match="outside the archive root"):
        load_bundle(tmp_path / "escape.bin")


def test_load_model_finds_bare_names_and_lists_where_it_looked(bundle_path, tmp_path, monkeypatch):
    import shutil

    import asr

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASR_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(UserError) as error:
        asr.load_model("small-en")
    assert str(tmp_path / "home" / ".cache" / "asr" / "models" / "small-en.bin") in str(error.value)
    assert str(tmp_path / "models" / "small-en.bin") in str(error.value)
    (tmp_path / "models").mkdir()
    shutil.copy(bundle_path[0], tmp_path / "models" / "small-en.bin")
    pipeline = asr.load_model("small-en")
    assert pipeline.alphabet == Alphabet.default() and pipeline.model.count_params() == bundle_path[1].count_params()
    with pytest.raises(UserError, match="not found"):
        asr.load_model(str(tmp_path / "elsewhere" / "model.bin"))
