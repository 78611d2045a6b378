"""The one configuration shape: Enum choices in the schemas, defaults only there, groups that override."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import fields, is_dataclass
from enum import StrEnum
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from asr.configuration import (GROUP_SCHEMAS, Configuration, DecoderName, OptimizerName, Schedule, TrainConfig,
                               register_configs, validate)
from asr.data.feature_cache import config_hash
from asr.errors import UserError
from asr.text import Alphabet
from asr.training.checkpoint import training_fingerprint

CONF = Path(__file__).resolve().parents[1] / "asr" / "conf"
EN_BUNDLE = Path(__file__).resolve().parents[1] / "asr" / "pretrained" / "en.bin"
NOWHERE = {"train_manifest": "no/such/train.jsonl", "dev_manifest": "no/such/dev.jsonl", "test_manifest": None}
OTHER_CHOICES = {"data": NOWHERE, "features": {"type": "logmel", "normalize": "none"},
                 "model": {"parameters": {"rnn_type": "lstm"}}, "optimizer": {"name": "sgd", "schedule": "cosine"},
                 "decoder": {"name": "beam_lm"}, "trainer": {"strategy": "mirrored"}}


def _compose(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=[*overrides, "exp_dir=x"])


def test_choices_read_and_write_as_their_strings() -> None:
    config = validate({"optimizer": {"schedule": "cosine"}, "decoder": {"name": "beam_lm"}})
    schedule = config.optimizer.schedule
    assert schedule is Schedule.cosine and schedule == "cosine" and str(schedule) == f"{schedule}" == "cosine"
    assert "schedule: cosine" in OmegaConf.to_yaml(config) and "name: beam_lm" in OmegaConf.to_yaml(config)
    plain = OmegaConf.to_container(config, resolve=True)
    assert json.loads(json.dumps(plain))["decoder"]["name"] == "beam_lm"
    assert {"beam_lm": 1}[plain["decoder"]["name"]] == 1  # hashes as its string
    again = validate(OmegaConf.create(OmegaConf.to_yaml(config)))  # a saved configuration.yaml loads back
    assert again == config and again.decoder.name is DecoderName.beam_lm


def test_every_choice_is_named_as_its_value() -> None:
    """OmegaConf writes enum NAMES into YAML: a name that differs from its value would not load back."""
    def enums(node: object) -> list[type[StrEnum]]:
        found = []
        for item in fields(node):  # type: ignore[arg-type]
            default = getattr(node, item.name)
            if isinstance(default, StrEnum):
                found.append(type(default))
            elif is_dataclass(default):
                found += enums(default)
        return found

    choices = enums(TrainConfig())
    assert len(choices) == 7
    for choice in choices:
        assert [member.name for member in choice] == [member.value for member in choice]


@pytest.mark.parametrize(("override", "message"), [
    ({"optimizer": {"name": "adagrad"}}, "optimizer.name='adagrad' is not one of adam, adamw, sgd"),
    ({"features": {"type": "wavelet"}}, "features.type='wavelet' is not one of mfcc, logmel"),
    ({"trainer": {"strategy": "x"}}, "trainer.strategy='x' is not one of auto, default, mirrored, multi_worker"),
])
def test_a_bad_choice_is_one_line_naming_key_and_choices(override: dict, message: str) -> None:
    with pytest.raises(UserError) as caught:
        validate(override)
    assert str(caught.value) == message


def test_command_line_overrides_of_choices_compose() -> None:
    config = validate(_compose(["optimizer.schedule=cosine", "decoder=beam_lm", "optimizer=sgd"]))
    assert config.optimizer.schedule is Schedule.cosine and config.optimizer.name is OptimizerName.sgd
    assert config.decoder.name is DecoderName.beam_lm and config.optimizer.learning_rate == 0.01


def test_hydra_refuses_a_bad_choice_on_the_command_line() -> None:
    """The schema Hydra composes against is typed too: ``python -m asr.train features.type=wavelet`` stops
    before the app starts, with Hydra's message (like a value of the wrong type)."""
    with pytest.raises(ConfigCompositionException) as caught:
        _compose(["features.type=wavelet"])
    assert "Invalid value 'wavelet', expected one of [mfcc, logmel]" in str(caught.value.__cause__)


def test_group_files_only_override_the_schema() -> None:
    """Defaults live in the schemas: a group file that repeats one would be a second place to change it.

    Only the key that names the option (``name: adam``, ``type: mfcc``) may say what the schema says."""
    for group, schema in GROUP_SCHEMAS.items():
        defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=True)
        for path in sorted((CONF / group).glob("*.yaml")):
            overrides = OmegaConf.to_container(OmegaConf.load(path) or OmegaConf.create({}))
            for key, value in overrides.items():
                if key in ("name", "type"):
                    continue
                if isinstance(value, dict):
                    for inner, item in value.items():
                        assert item != defaults[key][inner], f"{path.name}: {key}.{inner} repeats the schema"
                else:
                    assert value != defaults[key], f"{path.name}: {key} repeats the schema default"


def test_default_composition_is_the_schema() -> None:
    assert validate(_compose([])) == validate({"exp_dir": "x"})


def test_training_fingerprints_are_unchanged_by_enum_choices() -> None:
    """sha256 values computed with the string choices before the Enums: checkpoints stay resumable."""
    alphabet = Alphabet.default()
    assert training_fingerprint(validate({"data": NOWHERE}), alphabet)["fingerprint"] == \
        "873742f2653651b1e807128d51e07171c847e672636a0a96833de4930e39cce9"
    assert training_fingerprint(validate(OTHER_CHOICES), alphabet)["fingerprint"] == \
        "59830f7d302ef1aa613a3d348c24ad53d44f8144e72521d32851d2779f5c3894"


def test_feature_cache_keys_are_unchanged_by_enum_choices() -> None:
    """Values computed before the Enums: existing feature caches stay valid."""
    assert config_hash(validate({}).features) == "a8f6e2486cf22633144574ca4f5c2e8c"
    assert config_hash(validate({"features": {"type": "logmel", "normalize": "none"}}).features) == \
        "39be1a5bb2cb085d52e3ea7e387df587"


def test_a_saved_configuration_loads_back(tmp_path: Path) -> None:
    configuration = Configuration(OTHER_CHOICES)
    configuration.save(tmp_path / "configuration.yaml")
    assert "name: beam_lm" in (tmp_path / "configuration.yaml").read_text()
    assert Configuration(tmp_path / "configuration.yaml").config == configuration.config


def test_the_packaged_bundle_configuration_loads() -> None:
    text = zipfile.ZipFile(EN_BUNDLE).read("configuration.yaml").decode()
    configuration = Configuration(OmegaConf.create(text))
    assert configuration.features.type == "logmel" and configuration.optimizer.schedule is Schedule.cosine
    assert Configuration(OmegaConf.create(configuration.to_yaml())).config == configuration.config


def test_the_schema_does_not_import_the_audio_layer() -> None:
    """The layers import downwards only: configuration -> audio would make a cycle again."""
    code = "import sys, asr.configuration; print(sorted(m for m in sys.modules if m.startswith('asr.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "asr.audio" not in loaded and "asr.configuration" in loaded


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("queue_file", sorted(RECIPES.glob("*/*.txt")), ids=lambda path: path.name)
def test_every_recipe_queue_line_composes_and_validates(queue_file: Path) -> None:
    """A renamed or removed key would otherwise surface hours into a recipe, when its line's turn comes."""
    lines = [line for line in queue_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines
    for line in lines:
        base, *overrides = line.split("|")
        assert base == "config", line
        config = validate(_compose([override for override in overrides if not override.startswith("exp_dir=")]))
        assert config.model.parameters.rnn_sizes == [256, 256]  # the en preset took effect
