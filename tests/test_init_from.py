"""Fine-tuning: ``trainer.init_from`` (a model name or a bundle path) and ``pipeline.configuration = …; train()``.

One tiny bundle is trained for real on a synthetic corpus; the runs that start from it check that
the starting weights are the bundle's, that a resumed run keeps its own, and that an alphabet or an
architecture the weights do not fit is one ``error:`` line and exit code 2.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import asr
from asr.configuration import Configuration
from asr.data.synth import synthesize_corpus
from asr.errors import UserError
from asr.pipeline import Pipeline
from asr.text import Alphabet
from tests.tiny_model import TINY_PARAMETERS, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMETERS = {**TINY_PARAMETERS, "rnn_sizes": [24]}
TINY = tiny_overrides(24)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=16, seed=11, quiet=True)


def configuration(corpus: dict, exp_dir: Path, **trainer) -> Configuration:
    return Configuration({
        "model": {"name": "deepspeech2", "parameters": TINY_PARAMETERS}, "exp_dir": str(exp_dir),
        "data": {"train_manifest": str(corpus["train"]), "dev_manifest": str(corpus["dev"]),
                 "test_manifest": str(corpus["test"])},
        "optimizer": {"learning_rate": 0.003, "schedule": "constant"},
        "trainer": {"epochs": 1, "batch_size": 8, "val_decode_limit": 2, **trainer},
    })


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    """A bundle trained for one epoch, in a folder that ``$ASR_MODELS_DIR`` can name."""
    folder = tmp_path_factory.mktemp("models")
    pipeline = Pipeline.from_configuration(configuration(corpus, folder / "exp"))
    pipeline.train()
    return pipeline.save(folder / "tiny-en.bin")


def weights_of(path: Path) -> list[np.ndarray]:
    return asr.load_model(str(path)).model.get_weights()


def assert_same_weights(first: list[np.ndarray], second: list[np.ndarray]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def train_app(*arguments: str, models_dir: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if models_dir is not None:
        environment["ASR_MODELS_DIR"] = str(models_dir)
    return subprocess.run([sys.executable, "-m", "asr.train", *arguments], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=600)


def data_overrides(corpus: dict) -> list[str]:
    return [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}",
            f"data.test_manifest={corpus['test']}"]


def test_init_from_a_name_starts_from_the_bundles_weights(corpus, pretrained, tmp_path):
    # trainer.epochs=0: the model the run saves is the one it would have started training from
    run = train_app(*TINY, *data_overrides(corpus), "trainer.epochs=0", "trainer.init_from=tiny-en",
                    f"hydra.run.dir={tmp_path / 'exp'}", models_dir=pretrained.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "exp" / "result.json").read_text())
    assert result["init_from"] == str(pretrained)
    assert_same_weights(weights_of(tmp_path / "exp" / "model.bin"), weights_of(pretrained))
    saved = asr.load_model(str(tmp_path / "exp" / "model.bin"))
    assert saved.configuration.trainer.init_from == "tiny-en"  # the recipe remembers where it started


def test_pipeline_from_configuration_loads_init_from(corpus, pretrained, tmp_path):
    pipeline = Pipeline.from_configuration(configuration(corpus, tmp_path / "exp", init_from=str(pretrained)))
    assert_same_weights(pipeline.model.get_weights(), weights_of(pretrained))
    assert pipeline.metadata["init_from"] == str(pretrained)


def test_other_features_are_refused(corpus, pretrained, tmp_path):
    config = configuration(corpus, tmp_path / "exp", init_from=str(pretrained)).config
    config.features.n_mels = 64
    with pytest.raises(UserError, match=r"trained on other features \(features.n_mels=40 there, 64 here\)"):
        Pipeline.from_configuration(config)


@pytest.mark.slow
def test_a_resumed_run_keeps_its_own_weights(corpus, pretrained, tmp_path):
    exp = tmp_path / "exp"
    first = train_app(*TINY, *data_overrides(corpus), "trainer.epochs=1", f"trainer.init_from={pretrained}",
                      f"hydra.run.dir={exp}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((exp / "result.json").read_text())["init_from"] == str(pretrained)
    # the rerun resumes from its checkpoint: init_from is not even looked up (this name exists nowhere)
    rerun = train_app(*TINY, *data_overrides(corpus), "trainer.epochs=2", "trainer.init_from=nosuch-model",
                      f"hydra.run.dir={exp}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads((exp / "result.json").read_text())
    assert result["epochs_run"] == 2 and result["epochs_this_run"] == 1 and "init_from" not in result
    log = (exp / "train.log").read_text()
    assert "resuming: trainer.init_from=nosuch-model is not loaded again" in log


def assert_one_error_line(run: subprocess.CompletedProcess, *fragments: str, before_tensorflow: bool = True) -> None:
    """Exit code 2 and one ``error:`` line; before TensorFlow starts, the only line (it logs to stderr itself)."""
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and run.stderr.endswith(errors[0] + "\n"), run.stderr[-3000:]
    if before_tensorflow:
        assert run.stderr.count("\n") == 1, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_another_alphabet_is_exit_2_naming_both(corpus, pretrained, tmp_path):
    alphabet = tmp_path / "alphabet.txt"
    Alphabet([*Alphabet.default().symbols, "é"]).to_file(alphabet)
    run = train_app(*TINY, *data_overrides(corpus), f"data.alphabet={alphabet}", f"trainer.init_from={pretrained}",
                    f"hydra.run.dir={tmp_path / 'exp'}")
    assert_one_error_line(run, f"trainer.init_from='{pretrained}'", f"data.alphabet={alphabet}",
                          f"{len(Alphabet.default())}-symbol alphabet", "only in the configuration: é")


def test_weights_that_do_not_fit_are_exit_2_naming_both(corpus, pretrained, tmp_path):
    run = train_app(*TINY, *data_overrides(corpus), "model.parameters.rnn_sizes=[16]", "trainer.init_from=tiny-en",
                    f"hydra.run.dir={tmp_path / 'exp'}", models_dir=pretrained.parent)
    assert_one_error_line(run, f"trainer.init_from='tiny-en' ({pretrained}) does not fit the configured model: ",
                          "shape (", "there, (", "build the same architecture", before_tensorflow=False)
    assert not (tmp_path / "exp" / "checkpoints").exists()  # refused before anything was trained


def test_an_unknown_init_from_is_exit_2(corpus, tmp_path):
    run = train_app(*TINY, *data_overrides(corpus), "trainer.init_from=nosuch-model",
                    f"hydra.run.dir={tmp_path / 'exp'}")
    assert_one_error_line(run, "trainer.init_from='nosuch-model': no model named 'nosuch-model'; looked in ")


def test_assigning_a_configuration_tunes_from_the_loaded_weights(corpus, pretrained, tmp_path):
    pipeline = asr.load_model(str(pretrained))
    loaded = pipeline.model.get_weights()
    # learning rate 0: training leaves the trainable weights where it started, so they must be the bundle's
    config = configuration(corpus, tmp_path / "tuned").config
    config.optimizer.learning_rate = 0.0
    OmegaConf.save(config, tmp_path / "new.yaml")
    pipeline.configuration = Configuration(tmp_path / "new.yaml")
    summary = pipeline.train()
    assert summary["epochs_run"] == 1 and "init_from" not in summary
    trainable = {id(variable) for variable in pipeline.model.trainable_weights}
    for variable, before in zip(pipeline.model.weights, loaded):
        if id(variable) in trainable:
            np.testing.assert_array_equal(np.asarray(variable), before)
    saved = pipeline.save(tmp_path / "my.bin")
    assert_same_weights(weights_of(saved), pipeline.model.get_weights())
    assert asr.load_model(str(saved)).configuration.optimizer.learning_rate == 0.0


def test_a_configuration_with_another_alphabet_is_refused_before_training(corpus, pretrained, tmp_path):
    pipeline = asr.load_model(str(pretrained))
    alphabet = tmp_path / "alphabet.txt"
    Alphabet([symbol for symbol in Alphabet.default().symbols if symbol != "q"]).to_file(alphabet)
    config = configuration(corpus, tmp_path / "tuned").config
    config.data.alphabet = str(alphabet)
    pipeline.configuration = config
    with pytest.raises(UserError, match="the pipeline's model has a 28-symbol alphabet but the configuration "
                                        r"\(data.alphabet=.*\) has 27 \(only in the model: q;"):
        pipeline.train()
    assert not (tmp_path / "tuned").exists()
