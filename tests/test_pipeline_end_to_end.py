"""The acceptance test: synthesise speech, train a tiny model, save, load, transcribe."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import asr
from asr.configuration import Configuration
from asr.data.synth import synthesize_corpus
from asr.pipeline import Pipeline

TINY_MODEL = {"name": "deepspeech2", "parameters": {"rnn_type": "gru", "rnn_sizes": [32], "conv_filters": [8],
                                                    "conv_kernels": [[11, 21]], "conv_strides": [[2, 2]],
                                                    "dropout": 0.0}}


def tiny_configuration(corpus: dict, exp_dir: Path, epochs: int = 2) -> Configuration:
    return Configuration({
        "model": TINY_MODEL, "exp_dir": str(exp_dir),
        "data": {"train_manifest": str(corpus["train"]), "dev_manifest": str(corpus["dev"]),
                 "test_manifest": str(corpus["test"])},
        "optimizer": {"learning_rate": 0.003, "schedule": "constant"},
        "trainer": {"epochs": epochs, "batch_size": 8, "val_decode_limit": 4},
    })


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=40, seed=7, quiet=True)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    pipeline = Pipeline.from_configuration(tiny_configuration(corpus, folder / "exp"))
    summary = pipeline.train()
    path = pipeline.save(folder / "model.bin")
    return pipeline, summary, path


def test_training_lowers_the_loss_and_writes_metrics(trained):
    pipeline, summary, _ = trained
    losses = [epoch["loss"] for epoch in summary["history"]]
    assert summary["epochs_run"] == 2 and len(losses) == 2
    assert losses[1] < losses[0]
    for key in ("val_loss", "val_wer", "val_cer", "learning_rate", "audio_seconds_per_second", "epoch_seconds"):
        assert key in summary["history"][-1]
    exp_dir = Path(pipeline.configuration.exp_dir)
    assert len((exp_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (exp_dir / "checkpoints" / "checkpoint").exists()


def test_saved_bundle_loads_and_transcribes(trained, corpus):
    pipeline, _, path = trained
    loaded = asr.load_model(str(path))
    files = sorted((Path(corpus["all"]).parent / "wavs").glob("*.wav"))[:3]
    X, y_hat, sentences = loaded(files, full=True)
    assert isinstance(X, np.ndarray) and X.dtype == np.float32 and X.ndim == 3 and X.shape[0] == 3
    assert X.shape[2] == loaded.configuration.features.num_features
    assert y_hat.shape == (3, (X.shape[1] + 1) // 2, len(loaded.alphabet) + 1)
    assert isinstance(sentences, list) and len(sentences) == 3 and all(isinstance(s, str) for s in sentences)
    assert loaded(files) == sentences
    assert loaded.decode(y_hat) == sentences  # padded frames decode to blank, lengths or not
    assert loaded.alphabet == pipeline.alphabet and loaded.language_model is None
    # the loaded model gives the same logits as the trained one
    np.testing.assert_allclose(loaded.model.predict_on_batch(X), pipeline.model.predict_on_batch(X), atol=1e-5)
    np.testing.assert_allclose(loaded.model.predict_on_batch(X), y_hat, atol=1e-5)
    # ... and its layers, applied one by one eagerly, give the same output
    activation = X
    for layer in loaded.model.layers[1:]:
        activation = layer(activation)
    np.testing.assert_allclose(np.asarray(activation), y_hat, atol=1e-5)


def test_low_level_path_matches_the_pipeline(trained, corpus):
    from asr.audio.features import get_features
    from asr.text import get_batch_labels

    pipeline, _, _ = trained
    files = sorted((Path(corpus["all"]).parent / "wavs").glob("*.wav"))[:2]
    X = get_features(files, pipeline.configuration.features)
    labels, lengths = get_batch_labels(["hello world", "a b"], pipeline.alphabet)
    assert labels.shape == (2, 11) and lengths.tolist() == [11, 3]
    assert pipeline.decode(pipeline.model.predict_on_batch(X)) == pipeline(files)


def test_assigning_a_configuration_and_training_tunes_the_loaded_weights(trained, corpus, tmp_path):
    _, _, path = trained
    loaded = asr.load_model(path)
    before = [weight.copy() for weight in loaded.model.get_weights()]
    config = tiny_configuration(corpus, tmp_path / "tuned", epochs=1)
    OmegaConf.save(config.config, tmp_path / "new.yaml")
    loaded.configuration = Configuration(tmp_path / "new.yaml")
    summary = loaded.train()
    assert summary["epochs_run"] == 1
    after = loaded.model.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert loaded.save(tmp_path / "tuned.bin").exists()


def test_a_nan_loss_stops_training_naming_the_batch_files(corpus, tmp_path):
    from asr.errors import NaNLossError
    from asr.training.loop import SplitData, Trainer, load_split

    config = tiny_configuration(corpus, tmp_path / "nan", epochs=1).config
    config.data.dev_manifest = None
    clean = load_split(config.data.train_manifest, config, Pipeline.from_configuration(config).alphabet, "train")
    poisoned = SplitData(clean.examples[:4], lambda utterance: clean.features_for(utterance) * np.nan)
    with pytest.raises(NaNLossError) as error:
        Trainer(config, train_data=poisoned).fit()
    assert str(clean.examples[0].utterance.audio_filepath) in str(error.value)


def test_the_public_api_loads_tensorflow_only_when_used():
    script = ("import sys, asr; assert 'tensorflow' not in sys.modules; "
              "assert asr.Configuration().model.name and 'tensorflow' not in sys.modules; "
              "assert asr.Pipeline.__module__ == 'asr.pipeline' and 'tensorflow' in sys.modules")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
