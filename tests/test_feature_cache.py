"""Feature cache: keys, corrupt entries, and several processes filling one cache at once."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from omegaconf import OmegaConf

import asr.data.feature_cache as feature_cache_module
from asr.configuration import FeaturesConfig
from asr.data.feature_cache import FeatureCache, config_hash

CONFIG = {"type": "mfcc", "num_features": 13}


def _write_tone(path: Path, frequency: float, seconds: float = 0.2) -> Path:
    time_axis = np.arange(int(seconds * 8000)) / 8000
    soundfile.write(path, (0.2 * np.sin(2 * np.pi * frequency * time_axis)).astype(np.float32), 8000)
    return path


def counting_compute(path: Path, log: str, delay: float = 0.0) -> np.ndarray:
    """A stand-in feature extractor: frames of the signal; logs each call (one line, O_APPEND)."""
    with open(log, "a", encoding="utf-8") as stream:
        stream.write(f"{Path(path).name}\n")
    time.sleep(delay)
    signal, _ = soundfile.read(path, dtype="float32")
    return signal[: len(signal) // 40 * 40].reshape(-1, 40)


def _calls(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


@pytest.fixture()
def audio(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "audio"
    folder.mkdir()
    return [_write_tone(folder / f"{index}.wav", 200 + 50 * index) for index in range(8)]


def test_hit_after_miss_and_key_follows_content_and_config(tmp_path: Path, audio: list[Path]) -> None:
    log = tmp_path / "calls.log"
    compute = functools.partial(counting_compute, log=str(log))
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get_or_compute(audio[0], CONFIG, compute)
    again = cache.get_or_compute(audio[0], CONFIG, compute)
    np.testing.assert_array_equal(first, again)
    assert len(_calls(log)) == 1 and (cache.statistics.hits, cache.statistics.computed) == (1, 1)

    copy = tmp_path / "renamed.wav"
    shutil.copy(audio[0], copy)
    os.utime(copy, (1, 1))  # another name and mtime, same bytes: same entry
    np.testing.assert_array_equal(FeatureCache(tmp_path / "cache").get_or_compute(copy, CONFIG, compute), first)
    assert len(_calls(log)) == 1

    cache.get_or_compute(audio[0], {**CONFIG, "num_features": 26}, compute)  # new config: new entry
    assert len(_calls(log)) == 2
    _write_tone(audio[0], 999)  # new content: new entry
    cache.get_or_compute(audio[0], CONFIG, compute)
    assert len(_calls(log)) == 3


def test_config_hash_is_canonical_across_config_types() -> None:
    as_dataclass = FeaturesConfig()
    as_dict = dict(reversed(list(vars(FeaturesConfig()).items())))
    as_dictconfig = OmegaConf.structured(FeaturesConfig)
    assert config_hash(as_dataclass) == config_hash(as_dict) == config_hash(as_dictconfig)
    assert config_hash(FeaturesConfig(num_features=13)) != config_hash(as_dataclass)


def test_content_hash_is_remembered_by_path_size_and_mtime(tmp_path: Path, audio: list[Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    FeatureCache(tmp_path / "cache").audio_hash(audio[0])
    reads: list[str] = []
    real_content_hash = feature_cache_module.content_hash
    monkeypatch.setattr(feature_cache_module, "content_hash", lambda path: reads.append(path) or real_content_hash(path))
    fresh = FeatureCache(tmp_path / "cache")  # a new process would start like this
    fresh.audio_hash(audio[0])
    assert reads == []  # found in the on-disk index: the audio was not read again
    os.utime(audio[0], ns=(1, 1))
    fresh.audio_hash(audio[0])
    assert len(reads) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_entry_is_recomputed(tmp_path: Path, audio: list[Path], damage: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "calls.log"
    compute = functools.partial(counting_compute, log=str(log))
    cache = FeatureCache(tmp_path / "cache")
    expected = cache.get_or_compute(audio[1], CONFIG, compute)
    entry = cache.entry_path(audio[1], CONFIG)
    content = entry.read_bytes()
    entry.write_bytes({"truncate": content[: len(content) // 2], "garbage": b"\x93NUMPY garbage" * 9,
                       "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="asr.data.feature_cache"):
        recovered = cache.get_or_compute(audio[1], CONFIG, compute)
    np.testing.assert_array_equal(recovered, expected)
    assert len(_calls(log)) == 2 and cache.statistics.corrupt_recomputed == 1
    assert "recomputing corrupt entry" in caplog.text
    np.testing.assert_array_equal(np.load(entry), expected)  # repaired on disk


def _fill_in_another_process(cache_dir: str, paths: list[str], log: str, start_at: float, out: str) -> None:
    time.sleep(max(0.0, start_at - time.time()))  # both processes start together
    compute = functools.partial(counting_compute, log=log, delay=0.02)
    features = FeatureCache(cache_dir).extract_many(paths, CONFIG, compute, jobs=1, progress=False)
    np.save(out, np.stack([f.sum(axis=1) for f in features]))


def test_two_processes_fill_one_cache_and_compute_each_entry_once(tmp_path: Path, audio: list[Path]) -> None:
    log = tmp_path / "calls.log"
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # after both interpreters have imported everything
    workers = [context.Process(target=_fill_in_another_process,
                               args=(str(tmp_path / "cache"), [str(p) for p in audio], str(log), start_at,
                                     str(tmp_path / f"out{index}.npy")))
               for index in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert sorted(_calls(log)) == sorted(path.name for path in audio)  # each computed exactly once
    expected = np.stack([counting_compute(p, str(tmp_path / "direct.log")).sum(axis=1) for p in audio])
    np.testing.assert_array_equal(np.load(tmp_path / "out0.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "out1.npy"), expected)
    leftovers = [p for p in (tmp_path / "cache").rglob(".*")]  # asr.files' temporary names
    assert leftovers == []


def test_extract_many_with_worker_processes_keeps_order(tmp_path: Path, audio: list[Path]) -> None:
    log = tmp_path / "calls.log"
    compute = functools.partial(counting_compute, log=str(log))
    cache = FeatureCache(tmp_path / "cache")
    cache.get_or_compute(audio[3], CONFIG, compute)  # one hit, seven misses
    features = cache.extract_many(audio, CONFIG, compute, jobs=2, progress=False)
    for path, array in zip(audio, features):
        np.testing.assert_array_equal(array, counting_compute(path, str(tmp_path / "direct.log")))
    assert len(_calls(log)) == 8
    assert cache.statistics.computed == 8 and cache.statistics.hits == 1
    warm = FeatureCache(tmp_path / "cache").extract_many(audio, CONFIG, compute, jobs=2, progress=False)
    assert len(_calls(log)) == 8 and all(np.array_equal(a, b) for a, b in zip(warm, features))


def test_a_failing_compute_in_a_worker_reaches_the_caller(tmp_path: Path, audio: list[Path]) -> None:
    from asr.audio.features import file_features
    from asr.errors import UserError

    broken = tmp_path / "audio" / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(UserError, match="broken.wav"):
        cache.extract_many([*audio[:3], broken], {"type": "mfcc"}, file_features, jobs=2, progress=False)
    assert not list((tmp_path / "cache").rglob(".*"))


def test_background_fill_runs_ahead_of_a_reader_without_double_work(tmp_path: Path, audio: list[Path]) -> None:
    log = tmp_path / "calls.log"
    compute = functools.partial(counting_compute, log=str(log), delay=0.05)
    cache = FeatureCache(tmp_path / "cache")
    with cache.fill_in_background(audio, CONFIG, compute, jobs=2, chunk=2) as fill:
        read = [cache.get_or_compute(path, CONFIG, compute) for path in audio]  # races the workers
        filled_by_workers = fill.wait()
    assert sorted(_calls(log)) == sorted(path.name for path in audio)  # each entry computed once
    assert filled_by_workers + cache.statistics.computed == len(audio)
    for path, array in zip(audio, read):
        np.testing.assert_array_equal(array, counting_compute(path, str(tmp_path / "direct.log")))
