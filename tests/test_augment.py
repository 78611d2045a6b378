"""Augmentation: SpecAugment masks, speed perturbation, additive noise."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.audio.augment import (add_noise, augment_waveform, spec_augment, spec_augment_enabled, speed_perturb,
                               vocal_tract_perturb, warp_bands)
from asr.audio.features import compute_features
from asr.configuration import AugmentConfig, FeaturesConfig, FeatureType, Normalization, check_augment_config, validate
from asr.errors import UserError

SAMPLE_RATE = 16000


def _masked(features: np.ndarray, augmented: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which frames and which bins are entirely zeroed (input has no zeros)."""
    zero = augmented == 0
    return zero.all(axis=1), zero.all(axis=0)


def _check_masks(features: np.ndarray, augmented: np.ndarray, config: AugmentConfig) -> None:
    assert augmented.shape == features.shape and augmented.dtype == features.dtype
    frames, bins = _masked(features, augmented)
    zero = augmented == 0
    # every zero lies in a masked frame or a masked bin; everything else is untouched
    assert np.array_equal(zero, frames[:, None] | bins[None, :]) or features.size == 0
    np.testing.assert_array_equal(augmented[~zero], features[~zero])
    if features.shape[0] and features.shape[1]:
        assert not frames[-1] and not bins.all()  # the models find the end at the last non-zero frame
        if not frames.all():
            assert bins.sum() <= config.freq_masks * config.freq_mask_width
        if not bins.all():
            assert frames.sum() <= config.time_masks * config.time_mask_width


def _ones_plus(frames: int, bins: int) -> np.ndarray:
    return (1.0 + np.random.default_rng(frames * 100 + bins).random((frames, bins))).astype(np.float32)


def test_frequency_masks_only_zero_whole_bins() -> None:
    config = AugmentConfig(freq_masks=2, freq_mask_width=6)
    features = _ones_plus(50, 40)
    augmented = spec_augment(features, config, seed=3).numpy()
    frames, bins = _masked(features, augmented)
    assert not frames.any() and 0 < bins.sum() <= 12
    _check_masks(features, augmented, config)


def test_mask_widths_average_half_the_maximum() -> None:
    config = AugmentConfig(freq_masks=1, freq_mask_width=8, time_masks=1, time_mask_width=20)
    features = _ones_plus(400, 80)
    frame_counts, bin_counts = [], []
    for seed in range(300):
        frames, bins = _masked(features, spec_augment(features, config, seed=seed).numpy())
        frame_counts.append(frames.sum())
        bin_counts.append(bins.sum())
    # widths are uniform on 0..W: mean W / 2, and every width is reached
    assert np.mean(bin_counts) == pytest.approx(4.0, abs=0.6)
    assert np.mean(frame_counts) == pytest.approx(10.0, abs=1.2)
    assert set(bin_counts) == set(range(9))


def test_same_seed_same_masks_and_different_seed_different_masks() -> None:
    config = AugmentConfig(freq_masks=2, freq_mask_width=10, time_masks=2, time_mask_width=30)
    features = _ones_plus(200, 40)
    first = spec_augment(features, config, seed=7).numpy()
    np.testing.assert_array_equal(first, spec_augment(features, config, seed=7).numpy())
    np.testing.assert_array_equal(first, spec_augment(features, config, seed=tf.constant([7, 0])).numpy())
    assert not np.array_equal(first, spec_augment(features, config, seed=8).numpy())


def test_variable_length_inside_a_graph_and_tiny_clips() -> None:
    config = AugmentConfig(freq_masks=2, freq_mask_width=5, time_masks=3, time_mask_width=20)

    @tf.function(input_signature=[tf.TensorSpec([None, 13], tf.float32), tf.TensorSpec([2], tf.int64)])
    def augment(features: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return spec_augment(features, config, seed)

    for frames in (0, 1, 3, 19, 250):
        features = _ones_plus(frames, 13)
        augmented = augment(features, tf.constant([frames, 1], tf.int64)).numpy()
        _check_masks(features, augmented, config)


def map_spec_augment(dataset: tf.data.Dataset, config: AugmentConfig, seed: int) -> tf.data.Dataset:
    """SpecAugment on the features of (features, label) pairs, seeds from a dataset re-randomised each epoch."""
    if not spec_augment_enabled(config):
        return dataset
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
    pairs = tf.data.Dataset.zip((dataset, seeds))
    return pairs.map(lambda element, pair: (spec_augment(element[0], config, pair), element[1]))


def test_spec_augment_over_a_dataset_is_reproducible_and_changes_each_epoch() -> None:
    config = AugmentConfig(time_masks=2, time_mask_width=10, freq_masks=1, freq_mask_width=4)
    lengths = [30, 55, 12, 80]
    labels = tf.data.Dataset.from_tensor_slices(tf.constant([1, 2, 3, 4]))
    features = tf.data.Dataset.from_generator(lambda: (_ones_plus(n, 13) for n in lengths),
                                              output_signature=tf.TensorSpec([None, 13], tf.float32))
    dataset = tf.data.Dataset.zip((features, labels))

    def epoch(data: tf.data.Dataset) -> list[np.ndarray]:
        return [element[0].numpy() for element in data]

    augmented = map_spec_augment(dataset, config, seed=5)
    first, second = epoch(augmented), epoch(augmented)
    assert [a.shape[0] for a in first] == lengths
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))  # new masks each epoch
    again = epoch(map_spec_augment(dataset, config, seed=5))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # same seed, same run
    assert [int(element[1]) for element in augmented] == [1, 2, 3, 4]
    plain = map_spec_augment(dataset, AugmentConfig(), seed=5)
    assert plain is dataset  # no masks configured: nothing added to the pipeline


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.integers(0, 60), bins=st.integers(1, 30), freq_masks=st.integers(0, 3),
       freq_width=st.integers(0, 40), time_masks=st.integers(0, 3), time_width=st.integers(0, 40),
       seed=st.integers(0, 2**31 - 1))
def test_spec_augment_properties(frames: int, bins: int, freq_masks: int, freq_width: int, time_masks: int,
                                 time_width: int, seed: int) -> None:
    config = AugmentConfig(freq_masks=freq_masks, freq_mask_width=freq_width,
                           time_masks=time_masks, time_mask_width=time_width)
    features = _ones_plus(frames, bins)
    _check_masks(features, spec_augment(features, config, seed=seed).numpy(), config)


def _tone(seconds: float, frequency: float = 440.0) -> np.ndarray:
    time_axis = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * frequency * time_axis)).astype(np.float32)


def _peak_frequency(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal))
    return float(np.fft.rfftfreq(signal.size, 1 / SAMPLE_RATE)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate", [0.9, 1.1, 1.25])
def test_speed_perturbation_changes_length_and_pitch_by_the_rate(rate: float) -> None:
    signal = _tone(2.0)
    faster = speed_perturb(signal, rate, SAMPLE_RATE)
    assert faster.dtype == np.float32
    assert abs(faster.size - signal.size / rate) <= 2
    assert _peak_frequency(faster) == pytest.approx(440.0 * rate, rel=0.01)


def test_speed_one_is_a_copy_and_bad_rates_are_refused() -> None:
    signal = _tone(0.1)
    same = speed_perturb(signal, 1.0)
    np.testing.assert_array_equal(same, signal)
    assert same is not signal
    with pytest.raises(ValueError):
        speed_perturb(signal, 0.0)


def _measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean.astype(np.float64)
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2))


@settings(max_examples=30, deadline=None)
@given(snr_db=st.floats(-10, 40), seed=st.integers(0, 2**32 - 1))
def test_white_noise_snr_is_the_requested_one(snr_db: float, seed: int) -> None:
    clean = _tone(0.5)
    noisy = add_noise(clean, snr_db, np.random.default_rng(seed))
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    assert _measured_snr(clean, noisy) == pytest.approx(snr_db, abs=0.01)


def test_noise_recording_is_tiled_and_scaled() -> None:
    clean = _tone(1.0)
    recording = np.random.default_rng(1).uniform(-1, 1, 3000).astype(np.float32)  # shorter than the clip
    noisy = add_noise(clean, 5.0, np.random.default_rng(2), noise=recording)
    assert _measured_snr(clean, noisy) == pytest.approx(5.0, abs=0.01)
    silence = np.zeros(800, np.float32)
    np.testing.assert_array_equal(add_noise(silence, 10.0, np.random.default_rng(0)), silence)


def test_augment_waveform_is_deterministic_and_follows_the_config() -> None:
    config = AugmentConfig(speed_perturb=[0.9, 1.1], noise_probability=1.0, noise_snr_db=[20.0, 20.0])
    clean = _tone(1.0)
    first = augment_waveform(clean, config, np.random.default_rng(4), SAMPLE_RATE)
    second = augment_waveform(clean, config, np.random.default_rng(4), SAMPLE_RATE)
    np.testing.assert_array_equal(first, second)
    assert abs(first.size - clean.size / 0.9) <= 2 or abs(first.size - clean.size / 1.1) <= 2
    untouched = augment_waveform(clean, AugmentConfig(), np.random.default_rng(4), SAMPLE_RATE)
    np.testing.assert_array_equal(untouched, clean)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"freq_masks": -1}, "augment.freq_masks"), ({"speed_perturb": [1.0, 0.0]}, "speed_perturb"),
     ({"noise_probability": 1.5}, "noise_probability"), ({"noise_snr_db": [30.0, 10.0]}, "noise_snr_db"),
     ({"vtlp_warp": 0.5}, "vtlp_warp"), ({"vtlp_warp": -0.1}, "vtlp_warp")],
)
def test_bad_augment_config_is_a_user_error(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_augment_config(AugmentConfig(**overrides))
    check_augment_config(AugmentConfig())


# --- vocal-tract-length perturbation ---------------------------------------------------------

def _logmel_of_tone(frequency: float) -> np.ndarray:
    config = FeaturesConfig(type=FeatureType.logmel, num_features=40, normalize=Normalization.none)
    return compute_features(_tone(1.0, frequency), config)


@pytest.mark.parametrize(("frequency", "alpha"), [(600.0, 1.1), (1000.0, 0.9), (2000.0, 1.08), (3000.0, 0.92)])
def test_warping_the_bands_moves_a_tone_as_a_scaled_vocal_tract_would(frequency: float, alpha: float) -> None:
    """Below the bend, warp_bands(features of f, alpha) looks like the features of alpha * f."""
    warped = warp_bands(_logmel_of_tone(frequency), alpha).numpy().mean(axis=0)
    target = _logmel_of_tone(alpha * frequency).mean(axis=0)
    original = _logmel_of_tone(frequency).mean(axis=0)
    assert abs(int(np.argmax(warped)) - int(np.argmax(target))) <= 1
    assert np.argmax(target) != np.argmax(original)  # the shift is big enough to see
    assert np.abs(warped - target).mean() < 0.5 * np.abs(original - target).mean()


def test_a_factor_of_one_changes_nothing_and_the_top_band_stays() -> None:
    features = _logmel_of_tone(1500.0)
    np.testing.assert_allclose(warp_bands(features, 1.0).numpy(), features, rtol=1e-5, atol=1e-5)
    for alpha in (0.85, 1.15):  # the bend keeps Nyquist where it is: the top band barely moves
        assert np.abs(warp_bands(features, alpha).numpy()[:, -1] - features[:, -1]).max() < 0.05


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.integers(0, 40), bins=st.integers(1, 64), max_warp=st.floats(0.0, 0.3),
       seed=st.integers(0, 2**31 - 1), silent=st.integers(0, 5))
def test_vocal_tract_perturbation_properties(frames: int, bins: int, max_warp: float, seed: int, silent: int) -> None:
    features = _ones_plus(frames, bins) * np.random.default_rng(seed).choice([-1.0, 1.0], (frames, bins))
    features = features.astype(np.float32)
    features[max(0, frames - silent - 1):frames - 1] = 0.0  # padding-like zero frames (never the last)
    warped = vocal_tract_perturb(features, max_warp, seed).numpy()
    assert warped.shape == features.shape and warped.dtype == np.float32
    # each value lies between two of its frame's values: zero frames stay zero, nothing new appears
    if frames:
        assert np.all(warped >= features.min(axis=1, keepdims=True) - 1e-6)
        assert np.all(warped <= features.max(axis=1, keepdims=True) + 1e-6)
    assert np.array_equal(warped, vocal_tract_perturb(features, max_warp, seed).numpy())  # same seed, same warp


def test_vocal_tract_perturbation_inside_a_graph_and_off_when_zero() -> None:
    features = _ones_plus(25, 40)
    graph = tf.function(lambda values, seed: vocal_tract_perturb(values, 0.1, seed),
                        input_signature=[tf.TensorSpec([None, 40], tf.float32), tf.TensorSpec([2], tf.int64)])
    warps = [graph(features, tf.constant([seed, 0], tf.int64)).numpy() for seed in range(4)]
    assert len({array.tobytes() for array in warps}) == 4  # each seed its own factor
    assert vocal_tract_perturb(features, 0.0, 3) is not None
    np.testing.assert_array_equal(vocal_tract_perturb(features, 0.0, 3).numpy(), features)


def test_vocal_tract_perturbation_needs_log_mel_features() -> None:
    with pytest.raises(UserError, match="vtlp_warp warps log-mel"):
        validate({"features": {"type": "mfcc"}, "augment": {"vtlp_warp": 0.1}})
    assert validate({"features": {"type": "logmel"}, "augment": {"vtlp_warp": 0.1}}).augment.vtlp_warp == 0.1
