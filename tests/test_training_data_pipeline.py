"""The training input pipeline: the on-disk feature cache (``data.cache_dir``) and SpecAugment from ``augment``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.configuration import validate
from asr.data.synth import synthesize_corpus
from asr.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"rnn_type": "gru", "rnn_sizes": [8], "conv_filters": [2], "conv_kernels": [[11, 21]],
              "conv_strides": [[2, 2]]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), count=12, seed=1, quiet=True)


def make_config(corpus: dict, exp_dir: Path, cache_dir: Path | None = None, augment: dict | None = None,
                features: dict | None = None):
    return validate({
        "features": features or {},
        "model": {"parameters": TINY_MODEL},
        "data": {"train_manifest": str(corpus["train"]), "dev_manifest": None, "test_manifest": None,
                 "cache_dir": None if cache_dir is None else str(cache_dir)},
        "trainer": {"epochs": 1, "batch_size": 4, "strategy": "default", "early_stopping_patience": 0},
        "optimizer": {"schedule": "constant"},
        "augment": augment or {},
        "exp_dir": str(exp_dir),
    })


def cache_entries(cache_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*.npy")}


def test_cache_is_filled_on_first_use_and_reused_by_the_next_run(corpus, tmp_path, caplog):
    from asr.data.manifest import read_manifest
    from asr.text import Alphabet
    from asr.data.splits import load_split
    from asr.training.loop import Trainer

    cache_dir = tmp_path / "cache"
    config = make_config(corpus, tmp_path / "exp-1", cache_dir)
    train = load_split(config.data.train_manifest, config, Alphabet.default(), "train")
    assert not cache_entries(cache_dir), "frame counts must come from durations: nothing computed up front"
    files = {utterance.audio_filepath for utterance in read_manifest(corpus["train"])}

    caplog.set_level(logging.INFO, logger="asr.training.loop")
    first = Trainer(config, train_data=train).fit()
    assert "worker process(es) filling ahead" in caplog.text  # a cold cache is filled ahead of the reader
    caplog.clear()
    assert first.epochs_run == 1 and np.isfinite(first.history[-1]["loss"])
    filled = cache_entries(cache_dir)
    assert len(filled) == len({example.utterance.audio_filepath for example in train.examples}) <= len(files)

    second = Trainer(make_config(corpus, tmp_path / "exp-2", cache_dir)).fit()
    assert second.epochs_run == 1 and np.isfinite(second.history[-1]["loss"])
    assert cache_entries(cache_dir) == filled  # same entries, none rewritten
    assert "filling ahead" not in caplog.text


def test_precompute_features_fills_train_and_dev_with_every_core_before_the_first_epoch(corpus, tmp_path, caplog):
    from asr.data.manifest import read_manifest
    from asr.training.loop import Trainer

    cache_dir = tmp_path / "cache"
    config = make_config(corpus, tmp_path / "exp", cache_dir)
    config.data.dev_manifest, config.data.precompute_features = str(corpus["dev"]), True
    caplog.set_level(logging.INFO, logger="asr.training.loop")
    result = Trainer(config).fit()
    assert result.epochs_run == 1 and np.isfinite(result.history[-1]["loss"])
    assert "before training" in caplog.text and "filling ahead" not in caplog.text
    files = {u.audio_filepath for split in ("train", "dev") for u in read_manifest(corpus[split])}
    assert len(cache_entries(cache_dir)) == len(files)  # both splits, each file once
    caplog.clear()
    config.exp_dir = str(tmp_path / "exp-2")
    Trainer(config).fit()  # warm: nothing left to precompute
    assert "computing" not in caplog.text and "filling ahead" not in caplog.text


def test_cached_features_and_estimated_frame_counts_match_the_audio(corpus, tmp_path):
    from asr.audio.features import file_features
    from asr.text import Alphabet
    from asr.data.splits import load_split

    config = make_config(corpus, tmp_path / "exp", tmp_path / "cache")
    train = load_split(config.data.train_manifest, config, Alphabet.default(), "train")
    for example in train.examples:
        expected = file_features(example.utterance.audio_filepath, config.features)
        np.testing.assert_allclose(train.features_for(example.utterance), expected, rtol=1e-6, atol=1e-6)
        assert abs(example.num_frames - len(expected)) <= 1, example.utterance


def test_augment_config_masks_training_batches_only(corpus, tmp_path):
    from asr.training.loop import Trainer

    augment = {"freq_masks": 2, "freq_mask_width": 8, "time_masks": 2, "time_mask_width": 20}
    trainer = Trainer(make_config(corpus, tmp_path / "exp", augment=augment))
    trainer._load_data()
    data = trainer.train_data
    training = [batch["features"].numpy() for batch in trainer._dataset(data, 1, training=True)]
    again = [batch["features"].numpy() for batch in trainer._dataset(data, 1, training=True)]
    evaluation = {int(index): features for batch in trainer._dataset(data, 0, training=False)
                  for index, features in zip(batch["index"].numpy(), batch["features"].numpy())}
    masked = 0
    for batch, batch_again in zip(training, again):
        np.testing.assert_array_equal(batch, batch_again)  # per-element seeds: the same epoch, the same masks
    for batch in trainer._dataset(data, 1, training=True):
        for index, features, length in zip(batch["index"].numpy(), batch["features"].numpy(),
                                           batch["feature_lengths"].numpy()):
            plain = evaluation[int(index)][:length]
            kept = features[:length]
            assert np.all((kept == plain) | (kept == 0))  # masks only zero values out
            masked += int(np.any((kept == 0) & (plain != 0)))
    assert masked == len(data.examples)  # every training utterance got masks; evaluation got none
    for index, features in evaluation.items():  # evaluation batches: the features as they are
        plain = data.features_for(data.examples[index].utterance)
        np.testing.assert_array_equal(features[:len(plain)], plain)


def test_vocal_tract_perturbation_warps_training_batches_only_and_trains(corpus, tmp_path):
    from asr.training.loop import Trainer

    config = make_config(corpus, tmp_path / "exp", augment={"vtlp_warp": 0.15},
                         features={"type": "logmel", "num_features": 20})
    trainer = Trainer(config)
    trainer._load_data()
    data = trainer.train_data

    def by_index(epoch: int, training: bool) -> dict[int, np.ndarray]:
        return {int(index): features[:length] for batch in trainer._dataset(data, epoch, training=training)
                for index, features, length in zip(batch["index"].numpy(), batch["features"].numpy(),
                                                   batch["feature_lengths"].numpy())}

    plain, warped, again, next_epoch = by_index(0, False), by_index(1, True), by_index(1, True), by_index(2, True)
    for index, features in plain.items():
        np.testing.assert_array_equal(features, data.features_for(data.examples[index].utterance))
        assert warped[index].shape == features.shape and not np.allclose(warped[index], features)
        np.testing.assert_array_equal(warped[index], again[index])  # (seed, epoch, index) fixes the factor
        assert not np.array_equal(warped[index], next_epoch[index])  # a new factor each epoch
    result = trainer.fit()
    assert result.epochs_run == 1 and np.isfinite(result.history[-1]["loss"])


def test_nonsense_augment_config_is_refused_at_validation(corpus, tmp_path):
    with pytest.raises(UserError, match="augment.freq_masks must be >= 0"):
        make_config(corpus, tmp_path, augment={"freq_masks": -1})
    with pytest.raises(UserError, match="augment.noise_probability"):
        make_config(corpus, tmp_path, augment={"noise_probability": 1.5})
    run = subprocess.run([sys.executable, "-m", "asr.train", "augment.time_masks=-2", f"hydra.run.dir={tmp_path}"],
                         cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: augment.time_masks must be >= 0"), run.stderr[-2000:]


def _training_features(trainer, epoch: int) -> dict[int, np.ndarray]:
    """Each training utterance's features (padding cut off) in the batches of ``epoch``."""
    features_by_index = {}
    for batch in trainer._dataset(trainer.train_data, epoch, training=True):
        for index, features, length in zip(batch["index"].numpy(), batch["features"].numpy(),
                                           batch["feature_lengths"].numpy()):
            features_by_index[int(index)] = features[:length]
    return features_by_index


def test_speed_perturbation_and_noise_reach_training_batches_reproducibly(corpus, tmp_path):
    from asr.training.loop import Trainer

    augment = {"speed_perturb": [0.8, 1.25], "noise_probability": 1.0, "noise_snr_db": [10.0, 10.0]}
    trainer = Trainer(make_config(corpus, tmp_path / "exp", augment=augment))
    trainer._load_data()
    data = trainer.train_data
    first, again, later = (_training_features(trainer, epoch) for epoch in (1, 1, 2))
    assert set(first) == set(range(len(data.examples)))
    ratios = []
    for index, features in first.items():
        np.testing.assert_array_equal(features, again[index])  # (seed, epoch, index) fixes the augmentation
        plain = data.features_for(data.examples[index].utterance)
        ratios.append(len(plain) / len(features))
        assert not np.array_equal(features[:len(plain)], plain[:len(features)])  # every utterance is changed
    assert all(ratio == pytest.approx(0.8, abs=0.02) or ratio == pytest.approx(1.25, abs=0.03) for ratio in ratios)
    assert {min((0.8, 1.25), key=lambda rate: abs(rate - ratio)) for ratio in ratios} == {0.8, 1.25}  # both drawn
    assert any(not np.array_equal(first[index], later[index]) for index in first)  # a fresh draw each epoch
    for batch in trainer._dataset(data, 1, training=False):  # evaluation hears the audio as it is
        for index, features, length in zip(batch["index"].numpy(), batch["features"].numpy(),
                                           batch["feature_lengths"].numpy()):
            np.testing.assert_array_equal(features[:length], data.features_for(data.examples[int(index)].utterance))


def test_noise_alone_keeps_the_length_and_changes_the_features(corpus, tmp_path):
    from asr.training.loop import Trainer

    trainer = Trainer(make_config(corpus, tmp_path / "exp", augment={"noise_probability": 1.0,
                                                                     "noise_snr_db": [5.0, 5.0]}))
    trainer._load_data()
    for index, features in _training_features(trainer, 1).items():
        plain = trainer.train_data.features_for(trainer.train_data.examples[index].utterance)
        assert features.shape == plain.shape and np.abs(features - plain).mean() > 0.05


def test_a_speed_up_too_fast_for_the_transcript_keeps_the_original_speed(corpus, tmp_path):
    from asr.training.loop import Trainer

    trainer = Trainer(make_config(corpus, tmp_path / "exp", augment={"speed_perturb": [50.0]}))
    trainer._load_data()
    for index, features in _training_features(trainer, 1).items():  # 50x faster cannot carry any transcript
        plain = trainer.train_data.features_for(trainer.train_data.examples[index].utterance)
        np.testing.assert_allclose(features, plain, atol=1e-5)


def test_training_with_recorded_noise_from_noise_dir(corpus, tmp_path):
    import soundfile

    from asr.training.loop import Trainer

    noise_dir = tmp_path / "noises"
    (noise_dir / "street").mkdir(parents=True)
    hum = 0.3 * np.sin(2 * np.pi * 50 * np.arange(8000) / 16000)
    soundfile.write(noise_dir / "street" / "hum.wav", hum.astype(np.float32), 16000)
    augment = {"speed_perturb": [0.9, 1.0, 1.1], "noise_probability": 1.0, "noise_dir": str(noise_dir)}
    trainer = Trainer(make_config(corpus, tmp_path / "exp", augment=augment))
    assert [noise.size for noise in trainer.waveform_augmenter.noises()] == [8000]
    result = trainer.fit()
    assert result.epochs_run == 1 and np.isfinite(result.history[-1]["loss"])


def test_a_noise_dir_without_audio_is_refused_at_validation(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(UserError, match="augment.noise_dir=.* is not a folder holding audio files"):
            make_config(corpus, tmp_path, augment={"noise_probability": 0.5, "noise_dir": str(folder)})
