"""Augmentation: SpecAugment masks (TensorFlow), speed perturbation and additive noise (numpy).

* ``spec_augment(features, augment_config, seed)``: frequency and time masks on one
  ``[T, F]`` utterance of any length, with stateless random ops, so it runs inside a
  ``tf.data`` map and the same seed gives the same masks. Masked values become 0 (the mean
  of per-utterance normalised features, and the value of padding). A mask is never wider
  than the utterance: a 5-frame clip with ``time_mask_width=20`` gets masks of 0..4 frames.
  The last frame is never masked and the frequency masks never cover every bin, because the
  models (``asr.models.architectures.FrameMask``) take an utterance's end to be its last non-zero frame.
* ``vocal_tract_perturb(features, max_warp, seed, sample_rate)``: vocal-tract-length perturbation
  (Jaitly & Hinton, 2013) on log-mel features: ``warp_bands`` scales the frequency axis by a factor
  drawn from ``[1 - max_warp, 1 + max_warp]``, as if a shorter or longer vocal tract had spoken, by
  interpolating between mel bands. It works on cached features, in the same ``tf.data`` map.
* ``speed_perturb(signal, rate)``: Kaldi-style speed change by resampling (tempo and pitch
  together); ``rate=1.1`` makes the clip 1/1.1 as long.
* ``add_noise(signal, snr_db, rng, noise=None)``: white noise, or a random stretch of a
  given noise recording, scaled to the requested signal-to-noise ratio.
* ``reverberate``, ``band_limit``, ``colored_noise``: simulated rooms, telephone-like channels and
  coloured noise, baked into synthetic corpora by ``asr data synth --room``.
* ``augment_waveform(...)``: what ``AugmentConfig`` asks for on the waveform side.
* ``WaveformAugmenter``: the training pipeline's use of it: features of one utterance after
  speed perturbation and noise, fresh for every (seed, epoch, utterance) and reproducible.
  These features are computed on the fly (never cached: each epoch hears a different version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import librosa
import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from asr.audio.features import compute_features, load_audio, typed_features_config
from asr.configuration import AugmentConfig, noise_files

# TensorFlow (seconds to import) is imported inside the SpecAugment functions only: the synthesis
# workers (asr.data.synth) use this module's numpy half and must start without it.


def waveform_augment_enabled(augment_config: Any) -> bool:
    """Whether the configuration asks for speed perturbation or noise."""
    return any(rate != 1.0 for rate in augment_config.speed_perturb) or augment_config.noise_probability > 0


def spec_augment_enabled(augment_config: Any) -> bool:
    """Whether the configuration asks for any mask."""
    return (augment_config.freq_masks > 0 and augment_config.freq_mask_width > 0) or (
        augment_config.time_masks > 0 and augment_config.time_mask_width > 0)


# --- SpecAugment (TensorFlow) ------------------------------------------------------------------

def _keep_mask(size: Any, count: int, max_width: int, seed: Any) -> Any:
    """Boolean ``[size]``: False inside ``count`` random spans of width 0..min(max_width, size)."""
    import tensorflow as tf

    width_seed, start_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    widths = tf.random.stateless_uniform([count], width_seed, minval=0, maxval=max_width + 1, dtype=tf.int32)
    widths = tf.minimum(widths, size)
    fractions = tf.random.stateless_uniform([count], start_seed, dtype=tf.float32)
    starts = tf.cast(tf.floor(fractions * tf.cast(size - widths + 1, tf.float32)), tf.int32)
    starts = tf.minimum(starts, size - widths)  # guard against fractions * n rounding up to n
    positions = tf.range(size)[tf.newaxis, :]
    inside = (positions >= starts[:, tf.newaxis]) & (positions < (starts + widths)[:, tf.newaxis])
    return tf.logical_not(tf.reduce_any(inside, axis=0))


def _as_seed(seed: Any) -> Any:
    import tensorflow as tf

    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(f"seed must be an int or a shape-[2] integer tensor, got shape {seed.shape}")
    return tf.cast(seed, tf.int64)


def spec_augment(features: Any, augment_config: Any, seed: Any) -> Any:
    """Frequency and time masks on one utterance ``[T, F]`` (T may be unknown); shape and dtype kept.

    ``seed``: an int or a shape-[2] integer tensor (``tf.random.stateless_*`` convention).
    """
    import tensorflow as tf

    features = tf.convert_to_tensor(features)
    if features.shape.rank is not None and features.shape.rank != 2:
        raise ValueError(f"spec_augment takes one utterance [T, F], got shape {features.shape}")
    if not spec_augment_enabled(augment_config):
        return features
    frequency_seed, time_seed = tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), 2))
    frames, bins = tf.shape(features)[0], tf.shape(features)[1]
    keep_bins = _keep_mask(bins, augment_config.freq_masks, augment_config.freq_mask_width, frequency_seed)
    keep_bins = tf.logical_or(keep_bins, tf.logical_not(tf.reduce_any(keep_bins)))  # never mask every bin
    # the last frame is never masked: the models find an utterance's end at its last non-zero frame
    maskable = tf.maximum(frames - 1, 0)
    keep_frames = _keep_mask(maskable, augment_config.time_masks, augment_config.time_mask_width, time_seed)
    keep_frames = tf.concat([keep_frames, tf.ones([frames - maskable], tf.bool)], axis=0)
    keep = tf.logical_and(keep_frames[:, tf.newaxis], keep_bins[tf.newaxis, :])
    return features * tf.cast(keep, features.dtype)


# The warp is linear up to this share of the Nyquist frequency, then bends to keep the top fixed
# (Jaitly & Hinton's boundary: 4.8 kHz at 16 kHz, above the formants that tell vowels apart).
VTLP_BOUNDARY = 0.6


def _slaney_mel(hertz: Any) -> Any:
    """librosa's default (Slaney) mel scale, in TensorFlow: linear below 1 kHz, logarithmic above."""
    import tensorflow as tf

    log_step = np.log(6.4) / 27.0
    return tf.where(hertz < 1000.0, hertz * 3.0 / 200.0,
                    15.0 + tf.math.log(tf.maximum(hertz, 1000.0) / 1000.0) / log_step)


def _mel_to_hertz(mels: Any) -> Any:
    """Inverse of ``_slaney_mel``."""
    import tensorflow as tf

    log_step = np.log(6.4) / 27.0
    return tf.where(mels < 15.0, mels * 200.0 / 3.0, 1000.0 * tf.exp(log_step * (mels - 15.0)))


def warp_bands(features: Any, alpha: Any, sample_rate: int = 16000) -> Any:
    """Log-mel features ``[T, F]`` (librosa's bands, 0 Hz to Nyquist) with frequencies scaled by ``alpha``.

    A frequency ``f`` moves to ``alpha * f`` below the boundary and linearly to the Nyquist frequency
    above it. Each output band takes the value the input had at the frequency that moved onto its
    centre (linear interpolation between bands, the edge bands repeated). Shape and dtype are kept.
    """
    import tensorflow as tf

    features = tf.convert_to_tensor(features)
    if features.shape.rank is not None and features.shape.rank != 2:
        raise ValueError(f"warp_bands takes one utterance [T, F], got shape {features.shape}")
    alpha = tf.cast(alpha, tf.float32)
    bins = tf.shape(features)[1]
    nyquist = sample_rate / 2.0
    top_mel = float(librosa.hz_to_mel(nyquist))  # Slaney, like _slaney_mel
    # band centres: F + 2 points equally spaced in mel from 0 to Nyquist, ends dropped (librosa.filters.mel)
    centres = _mel_to_hertz(top_mel * tf.cast(tf.range(1, bins + 1), tf.float32) / tf.cast(bins + 1, tf.float32))
    source_edge = VTLP_BOUNDARY * nyquist * tf.minimum(alpha, 1.0) / alpha  # where the bend starts, before...
    target_edge = alpha * source_edge  # ...and after the warp
    sources = tf.where(centres <= target_edge, centres / alpha,
                       nyquist - (nyquist - centres) * (nyquist - source_edge) / (nyquist - target_edge))
    positions = _slaney_mel(sources) / top_mel * tf.cast(bins + 1, tf.float32) - 1.0
    positions = tf.clip_by_value(positions, 0.0, tf.cast(bins - 1, tf.float32))
    below = tf.cast(tf.floor(positions), tf.int32)
    above = tf.minimum(below + 1, bins - 1)
    weight = tf.cast(positions - tf.cast(below, tf.float32), features.dtype)
    warped = tf.gather(features, below, axis=1) * (1.0 - weight) + tf.gather(features, above, axis=1) * weight
    return tf.ensure_shape(warped, features.shape)


def vocal_tract_perturb(features: Any, max_warp: float, seed: Any, sample_rate: int = 16000) -> Any:
    """``warp_bands`` by a factor drawn from ``[1 - max_warp, 1 + max_warp]`` (``seed`` as for ``spec_augment``)."""
    import tensorflow as tf

    if max_warp <= 0:
        return tf.convert_to_tensor(features)
    alpha = tf.random.stateless_uniform([], _as_seed(seed), minval=1.0 - max_warp, maxval=1.0 + max_warp)
    return warp_bands(features, alpha, sample_rate)


# --- waveform side (numpy) ---------------------------------------------------------------------

def speed_perturb(signal: np.ndarray, rate: float, sample_rate: int = 16000) -> np.ndarray:
    """Play ``signal`` ``rate`` times faster (length / rate samples, pitch shifted alike)."""
    if rate <= 0:
        raise ValueError(f"speed rate must be > 0, got {rate}")
    signal = np.asarray(signal, dtype=np.float32)
    if rate == 1.0 or signal.size == 0:
        return signal.copy()
    resampled = librosa.resample(signal, orig_sr=sample_rate * float(rate), target_sr=sample_rate)
    return np.ascontiguousarray(resampled, dtype=np.float32)


def _power(signal: np.ndarray) -> float:
    return float(np.mean(np.square(signal, dtype=np.float64))) if signal.size else 0.0


def add_noise(signal: np.ndarray, snr_db: float, rng: np.random.Generator,
              noise: Optional[np.ndarray] = None) -> np.ndarray:
    """``signal`` plus noise at ``snr_db`` dB: white Gaussian, or a random stretch of ``noise``.

    A recording shorter than the signal is repeated. Silence stays silence (no power to
    measure a ratio against), and so does a silent noise recording.
    """
    signal = np.asarray(signal, dtype=np.float32)
    signal_power = _power(signal)
    if signal_power == 0.0:
        return signal.copy()
    if noise is None:
        stretch = rng.standard_normal(signal.shape[0])
    else:
        noise = np.asarray(noise, dtype=np.float32)
        if noise.ndim != 1 or noise.size == 0:
            raise ValueError(f"noise must be a non-empty mono signal, got shape {noise.shape}")
        if noise.size < signal.size:
            noise = np.tile(noise, int(np.ceil(signal.size / noise.size)) + 1)
        start = int(rng.integers(0, noise.size - signal.size + 1))
        stretch = noise[start:start + signal.size].astype(np.float64)
    noise_power = _power(stretch)
    if noise_power == 0.0:
        return signal.copy()
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (signal + scale * stretch).astype(np.float32)


def colored_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown), unit variance."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.maximum(np.arange(spectrum.size), 1.0)
    shaped = np.fft.irfft(spectrum / frequencies ** (exponent / 2.0), n=length)
    return (shaped / (np.std(shaped) or 1.0)).astype(np.float32)


def reverberate(signal: np.ndarray, rt60: float, direct_to_reverberant_db: float, rng: np.random.Generator,
                sample_rate: int = 16000) -> np.ndarray:
    """``signal`` in a simulated room: a direct path plus exponentially decaying noise (Polack's model).

    ``rt60`` is the time (s) the reverberant tail takes to fall by 60 dB; the output keeps the
    input's length and peak level, so the transcript's timing is unchanged.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if signal.size == 0 or rt60 <= 0:
        return signal.copy()
    times = np.arange(int(rt60 * sample_rate)) / sample_rate
    tail = rng.standard_normal(times.size) * np.exp(-6.9078 * times / rt60)
    tail[0] = 0.0
    tail *= np.sqrt(10.0 ** (-direct_to_reverberant_db / 10.0) / max(float(np.sum(tail ** 2)), 1e-12))
    tail[0] = 1.0  # the direct path
    wet = fftconvolve(signal, tail.astype(np.float32))[: signal.size]
    peak_in, peak_out = float(np.max(np.abs(signal))), float(np.max(np.abs(wet)))
    return (wet * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def band_limit(signal: np.ndarray, low_hz: float | None, high_hz: float, sample_rate: int = 16000) -> np.ndarray:
    """``signal`` through a 4th-order Butterworth band-pass (high-pass skipped when ``low_hz`` is None)."""
    signal = np.asarray(signal, dtype=np.float32)
    if low_hz:
        sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
    else:
        sos = butter(4, high_hz, btype="lowpass", fs=sample_rate, output="sos")
    return sosfilt(sos, signal).astype(np.float32)


def load_noises(paths: Sequence[str], sample_rate: int) -> list[np.ndarray]:
    """Noise recordings for ``add_noise``, read with ``asr.audio.features.load_audio``."""
    return [load_audio(path, sample_rate) for path in paths]


def augment_waveform(signal: np.ndarray, augment_config: Any, rng: np.random.Generator,
                     sample_rate: int = 16000, noises: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Speed perturbation (a rate drawn from ``speed_perturb``), then noise with ``noise_probability``.

    The SNR is drawn uniformly from ``noise_snr_db``; the noise is white unless ``noises``
    (recordings at ``sample_rate``) are given, then one of them is picked at random.
    """
    rates = list(augment_config.speed_perturb)
    if rates:
        signal = speed_perturb(signal, float(rates[int(rng.integers(len(rates)))]), sample_rate)
    if rng.random() < augment_config.noise_probability:
        low, high = (float(value) for value in augment_config.noise_snr_db)
        noise = noises[int(rng.integers(len(noises)))] if noises else None
        signal = add_noise(signal, float(rng.uniform(low, high)), rng, noise)
    return np.asarray(signal, dtype=np.float32)


class WaveformAugmenter:
    """Features of a training utterance after ``augment_waveform``, reproducible from a seed key.

    ``fits(frames, labels)`` says whether an utterance of ``frames`` feature frames can still
    carry its labels under CTC; a speed-up that makes it too short falls back to the unperturbed
    speed (noise is still added). Noise recordings from ``noise_dir`` are read once, on first use.
    """

    def __init__(self, augment_config: Any, features_config: Any,
                 fits: Callable[[int, np.ndarray], bool] = lambda frames, labels: True) -> None:
        self.augment_config = augment_config
        self.features_config = typed_features_config(features_config)
        self.sample_rate = self.features_config.sample_rate
        self.fits = fits
        self._noises: Optional[list[np.ndarray]] = None

    def noises(self) -> list[np.ndarray]:
        if self._noises is None:
            noise_dir = self.augment_config.noise_dir
            self._noises = load_noises([str(path) for path in noise_files(noise_dir)], self.sample_rate) \
                if noise_dir else []
        return self._noises

    def __call__(self, audio_filepath: str | Path, labels: np.ndarray, seed_key: Sequence[int]) -> np.ndarray:
        """Features ``[T, F]`` of ``audio_filepath`` augmented as ``seed_key`` (e.g. seed, epoch, index) draws."""
        signal = load_audio(audio_filepath, self.sample_rate)
        noises = self.noises() or None
        augmented = augment_waveform(signal, self.augment_config, np.random.default_rng(list(seed_key)),
                                     self.sample_rate, noises)
        features = compute_features(augmented, self.features_config)
        if not self.fits(len(features), labels):  # sped up too much for its transcript: keep the speed
            no_speed = AugmentConfig(noise_probability=self.augment_config.noise_probability,
                                     noise_snr_db=list(self.augment_config.noise_snr_db))
            augmented = augment_waveform(signal, no_speed, np.random.default_rng(list(seed_key)), self.sample_rate,
                                         noises)
            features = compute_features(augmented, self.features_config)
        return features
