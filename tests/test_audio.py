"""Audio loading (formats, channels, resampling) and features."""

import numpy as np
import pytest
import soundfile

from asr.audio.features import compute_features, get_features, load_audio
from asr.configuration import FeaturesConfig
from asr.errors import UserError


def tone(seconds: float, rate: int, frequency: float = 440.0) -> np.ndarray:
    time = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


@pytest.mark.parametrize("extension,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_formats_load_as_float32_mono(tmp_path, extension, subtype):
    path = tmp_path / f"a.{extension}"
    soundfile.write(path, tone(0.5, 16000), 16000, subtype=subtype)
    signal = load_audio(path, 16000)
    assert signal.dtype == np.float32 and signal.ndim == 1
    assert abs(len(signal) - 8000) < 200


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(0.25, 16000), np.zeros(4000, np.float32)
    soundfile.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    signal = load_audio(tmp_path / "s.wav", 16000)
    np.testing.assert_allclose(signal, left / 2, atol=1e-6)


def test_resampling_to_the_configured_rate(tmp_path):
    soundfile.write(tmp_path / "r.wav", tone(1.0, 44100), 44100)
    signal = load_audio(tmp_path / "r.wav", 16000)
    assert abs(len(signal) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(signal))
    assert abs(np.argmax(spectrum) * 16000 / len(signal) - 440) < 5  # the tone survives


def test_not_audio_and_missing_files_are_user_errors(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(UserError, match="notes.wav"):
        load_audio(bad, 16000)
    with pytest.raises(UserError, match="not found"):
        get_features([tmp_path / "missing.wav"])


@pytest.mark.parametrize("kind,size", [("mfcc", 26), ("logmel", 40)])
def test_features_are_normalised_per_utterance(kind, size):
    config = FeaturesConfig(type=kind, num_features=size)
    features = compute_features(tone(1.0, 16000) + 0.01 * np.random.default_rng(0).normal(size=16000).astype(
        np.float32), config)
    assert features.shape == (101, size) and features.dtype == np.float32  # 10 ms hop, centred frames
    np.testing.assert_allclose(features.mean(axis=0), 0, atol=1e-4)


def test_get_features_pads_with_zeros_and_returns_lengths(tmp_path):
    for name, seconds in (("short.wav", 0.3), ("long.wav", 0.7)):
        soundfile.write(tmp_path / name, tone(seconds, 16000), 16000)
    batch, lengths = get_features([tmp_path / "short.wav", tmp_path / "long.wav"], return_lengths=True)
    assert batch.shape == (2, 71, 26) and lengths.tolist() == [31, 71]
    assert not batch[0, 31:].any() and batch[0, :31].any(axis=-1).all()
    assert get_features(tmp_path / "short.wav").shape == (1, 31, 26)
