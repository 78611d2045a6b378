"""The model bundle: round trip, and clear errors for bad files."""

import json
import zipfile

import numpy as np
import pytest
from omegaconf import OmegaConf

from asr.bundle import load_bundle, save_bundle, update_bundle
from asr.configuration import TrainConfig
from asr.errors import UserError
from asr.models.architectures import build_model
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


def test_update_rewrites_decoder_settings_and_the_language_model_only(bundle_path, tmp_path, monkeypatch):
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tuned.bin"
    path.write_bytes(bundle_path[0].read_bytes())
    path.chmod(0o640)
    with zipfile.ZipFile(path) as archive:
        before = {name: archive.read(name) for name in archive.namelist()}
    for content in ("\\data\\\nfirst\n", "\\data\\\nsecond\n"):  # the second LM replaces the first
        lm = tmp_path / f"{content.split()[1]}.arpa"
        lm.write_text(content)
        update_bundle(path, {"name": "beam_lm", "alpha": 0.75, "beta": 2.0}, language_model=lm)
    loaded = load_bundle(path)
    assert (loaded.configuration.decoder.name, loaded.configuration.decoder.alpha) == ("beam_lm", 0.75)
    assert loaded.configuration.decoder.lm_path == "lm/second.arpa"
    assert loaded.language_model.read_text() == "\\data\\\nsecond\n"
    with zipfile.ZipFile(path) as archive:
        after = {name: archive.read(name) for name in archive.namelist()}
    assert sorted(after) == sorted([*before, "lm/second.arpa"])
    assert all(after[name] == data for name, data in before.items() if name != "configuration.yaml")
    assert path.stat().st_mode & 0o777 == 0o640
    assert [item.name for item in tmp_path.iterdir() if item.name.startswith(".")] == []  # no temporary left
    with pytest.raises(UserError, match="language model not found"):
        update_bundle(path, {}, language_model=tmp_path / "none.arpa")


def test_update_refuses_a_bomb_before_reading_it(bundle_path, tmp_path):
    path = _bomb(tmp_path / "bomb.bin", _entries(bundle_path), "model.keras", 300 * MIB)
    with pytest.raises(UserError, match="refusing model.keras: it inflates to 300 MiB"):
        update_bundle(path, {"alpha": 1.0})


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


MIB = 1024 * 1024


def _entries(bundle_path):
    with zipfile.ZipFile(bundle_path[0]) as source:
        return {name: source.read(name) for name in source.namelist()}


def _bomb(path, entries, bomb_entry, size):
    """A bundle whose ``bomb_entry`` inflates to ``size`` bytes of zeros (a few hundred KiB on disk)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in entries.items():
            if name != bomb_entry:
                archive.writestr(name, data)
        with archive.open(bomb_entry, "w", force_zip64=True) as member:
            zeros = bytes(MIB)
            for _ in range(size // MIB):
                member.write(zeros)
    return path


@pytest.fixture
def isolated_temp(tmp_path, monkeypatch):
    """Temporary folders and the LM cache inside the test's folder, to see what is left behind."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    return scratch


def _left_behind(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "tmp").rglob("*")) + sorted(
        str(p.relative_to(tmp_path)) for p in (tmp_path / "cache").rglob("*") if (tmp_path / "cache").exists())


@pytest.mark.parametrize("bomb_entry", ["model.keras", "lm/words.arpa"])
def test_a_zip_bomb_is_refused_before_anything_is_extracted(bundle_path, tmp_path, isolated_temp, monkeypatch,
                                                            bomb_entry):
    path = _bomb(tmp_path / "bomb.bin", _entries(bundle_path), bomb_entry, 300 * MIB)
    assert path.stat().st_size < MIB
    with pytest.raises(UserError, match=f"refusing {bomb_entry}: it inflates to 300 MiB, over the limit of 200 MiB"):
        load_bundle(path)
    assert _left_behind(tmp_path) == []
    monkeypatch.setenv("ASR_BUNDLE_MAX_MEMBER_MB", "400")  # under the size limit, the ratio still refuses it
    with pytest.raises(UserError, match=f"refusing {bomb_entry}: compression ratio [0-9,]+ is over 200"):
        load_bundle(path)
    monkeypatch.setenv("ASR_BUNDLE_MAX_RATIO", "100000")
    with pytest.raises(UserError, match="inflates to 300 MiB, over the limit of 256 MiB"):
        monkeypatch.setenv("ASR_BUNDLE_MAX_TOTAL_MB", "256")
        load_bundle(path)
    assert _left_behind(tmp_path) == []
    monkeypatch.setenv("ASR_BUNDLE_MAX_MEMBER_MB", "x")
    with pytest.raises(UserError, match="ASR_BUNDLE_MAX_MEMBER_MB='x' is not a whole number"):
        load_bundle(path)


def test_a_corrupt_member_leaves_no_files(bundle_path, tmp_path, isolated_temp):
    entries = _entries(bundle_path)
    entries["lm/words.arpa"] = b"\\data\\\n" * 1000
    for victim in ("lm/words.arpa", "model.keras"):
        path = tmp_path / "corrupt.bin"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(victim)
        data = bytearray(path.read_bytes())
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # local header, then data
        data[start + info.compress_size // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(UserError, match="corrupt or truncated model bundle .*CRC"):
            load_bundle(path)
        assert [name for name in _left_behind(tmp_path) if ".extract-" in name or "asr-bundle-" in name] == []
        if victim.startswith("lm/"):
            assert not any((tmp_path / "cache").rglob("words.arpa"))


def test_malformed_configuration_is_one_clear_error(bundle_path, tmp_path, isolated_temp):
    entries = _entries(bundle_path)
    entries["configuration.yaml"] = b"model: [unclosed\n  x: {"
    with zipfile.ZipFile(tmp_path / "config.bin", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(UserError, match="corrupt configuration.yaml"):
        load_bundle(tmp_path / "config.bin")


def test_the_language_model_cache_keeps_the_most_recent(bundle_path, tmp_path, isolated_temp, monkeypatch):
    import os

    monkeypatch.setenv("ASR_LM_CACHE_KEEP", "2")
    entries = _entries(bundle_path)
    loaded = []
    for index in range(3):
        path = tmp_path / f"lm{index}.bin"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in {**entries, "lm/words.arpa": f"\\data\\ {index}\n".encode()}.items():
                archive.writestr(name, data)
        loaded.append(load_bundle(path).language_model)
        os.utime(loaded[-1].parent, (1000.0 + index, 1000.0 + index))  # distinct use times, oldest first
    cached = sorted(entry for entry in (tmp_path / "cache" / "lm").iterdir())
    assert cached == sorted([loaded[1].parent, loaded[2].parent])
    assert load_bundle(tmp_path / "lm0.bin").language_model.read_text() == "\\data\\ 0\n"  # extracted again
    assert sorted((tmp_path / "cache" / "lm").iterdir()) == sorted([loaded[0].parent, loaded[2].parent])
