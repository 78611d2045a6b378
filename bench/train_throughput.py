"""Training throughput: the real input pipeline (cold and warm feature cache) against in-memory tensors.

    .venv/bin/python bench/train_throughput.py                  # synthetic corpus, default small model
    .venv/bin/python bench/train_throughput.py --utterances 256 --batch-size 32
    .venv/bin/python bench/train_throughput.py --manifest data/librispeech/dev-clean.jsonl --utterances 512

One process, one model (the default ``deepspeech2`` configuration), one training epoch order
(epoch 1: length-bucketed and shuffled) measured four ways, in audio-seconds per second:

* in-memory: the epoch's padded batches materialised as tensors beforehand: the model's ceiling;
* cold: the real pipeline (``asr.data.dataset.make_dataset``) over an empty ``FeatureCache``: every
  feature is computed (and stored) inside ``tf.data`` while training;
* cold, prefilled: ``FeatureCache.extract_many`` fills the empty cache in worker processes, then
  the real pipeline reads it; the fill time is counted;
* cold, background fill: ``FeatureCache.fill_in_background`` starts worker processes filling the
  empty cache in the epoch's order while the real pipeline trains from it (start-up counted);
* warm: the real pipeline over the filled cache, from a fresh ``FeatureCache`` object (as a new
  run would see it: content hashes come from the on-disk index, features from ``.npy`` files).

Each row is the best of ``--repeats`` epochs (the cold rows empty the cache before each). The
steps are the trainer's own ``tf.function`` (``asr.training.loop.Trainer``), traced once before timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import argparse
import functools
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
CHARACTERS_PER_SECOND = 12.0


def synthesise_corpus(folder: Path, count: int, low: float, high: float, seed: int) -> Path:
    """WAVs of speech-like noise (harmonic tones under a syllable envelope) and random letter transcripts."""
    import soundfile

    from asr.data.manifest import Utterance, write_manifest

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    utterances = []
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        seconds = float(rng.uniform(low, high))
        time_axis = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        pitch = rng.uniform(90, 220)
        signal = sum(np.sin(2 * np.pi * pitch * harmonic * time_axis) / harmonic for harmonic in range(1, 6))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * time_axis)
        signal = 0.1 * signal * envelope + 0.01 * rng.standard_normal(time_axis.size)
        path = folder / "wavs" / f"{index:05d}.wav"
        soundfile.write(path, signal.astype(np.float32), SAMPLE_RATE)
        words, length = [], 0
        while length < seconds * CHARACTERS_PER_SECOND:
            word = "".join(rng.choice(letters, int(rng.integers(2, 8))))
            words.append(word)
            length += len(word) + 1
        utterances.append(Utterance(path, seconds, " ".join(words)))
    manifest = folder / "train.jsonl"
    write_manifest(manifest, utterances)
    return manifest


def frames_for_duration(hop_ms: float) -> "callable":
    """Feature frames of a clip from its duration (librosa, ``center=True``), without reading it."""
    hop = int(round(hop_ms * SAMPLE_RATE / 1000))
    return lambda utterance: 1 + int(round(utterance.duration * SAMPLE_RATE)) // hop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, help="Train on this manifest instead of a synthetic corpus.")
    parser.add_argument("--utterances", type=int, default=512, help="Utterances (synthetic, or the first of --manifest).")
    parser.add_argument("--min-seconds", type=float, default=1.5)
    parser.add_argument("--max-seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="Epochs per row; the best one is reported.")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="Processes for the cache fill.")
    parser.add_argument("--work-dir", type=Path, help="Corpus, cache and checkpoints (default: a temporary folder).")
    arguments = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from omegaconf import OmegaConf

    from asr.models import architectures as models
    from asr.audio.features import extract_features, file_features
    from asr.configuration import validate
    from asr.data.dataset import batch_order, make_dataset, prepare_examples
    from asr.data.feature_cache import FeatureCache
    from asr.data.manifest import read_manifest
    from asr.text import Alphabet
    from asr.data.splits import SplitData
    from asr.training.loop import Trainer

    work = arguments.work_dir or Path(tempfile.mkdtemp(prefix="asr-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = arguments.manifest or synthesise_corpus(work / "corpus", arguments.utterances, arguments.min_seconds,
                                                       arguments.max_seconds, seed=0)
    cache_dir = work / "cache"
    config = validate(OmegaConf.create({
        "exp_dir": str(work / "exp"),
        "data": {"train_manifest": str(manifest), "dev_manifest": None, "test_manifest": None,
                 "cache_dir": str(cache_dir)},
        "trainer": {"batch_size": arguments.batch_size, "epochs": 1, "strategy": "default",
                    "early_stopping_patience": 0, "log_every_steps": 10**9, "resume": False},
    }))
    features_config = OmegaConf.to_container(config.features, resolve=True)
    compute = functools.partial(file_features, features_config=features_config)
    utterances = read_manifest(manifest, max_duration=config.data.max_duration)[: arguments.utterances]
    audio_seconds = sum(utterance.duration for utterance in utterances)
    alphabet = Alphabet.default()
    examples = prepare_examples(utterances, alphabet, frames_for_duration(config.features.hop_ms),
                                lambda frames: int(models.output_lengths(frames, config.model)))
    paths = [example.utterance.audio_filepath for example in examples]
    seconds_total = sum(example.utterance.duration for example in examples)

    # in-memory features (the core's parallel extraction, no cache) and the source switch
    extraction_started = time.perf_counter()
    arrays = dict(zip(paths, extract_features(paths, features_config, jobs=arguments.jobs)))
    extraction_seconds = time.perf_counter() - extraction_started
    source = {"features_for": lambda utterance: arrays[utterance.audio_filepath]}
    data = SplitData(examples, lambda utterance: source["features_for"](utterance))

    trainer = Trainer(config, train_data=data)
    trainer._build()
    num_features = int(config.features.num_features)
    probe = make_dataset(examples[:1], data.features_for, num_features, 1)
    trainer._step_functions(trainer.strategy.experimental_distribute_dataset(probe).element_spec)
    real_pipeline = trainer._dataset
    epoch = 1  # shuffled, jittered buckets: the steady state of training
    batches = list(make_dataset(examples, data.features_for, num_features, arguments.batch_size,
                                epoch=epoch, seed=int(config.seed), sortagrad=False, shuffle=True))
    frames = sum(int(batch["features"].shape[0] * batch["features"].shape[1]) for batch in batches)
    real = sum(int(np.sum(batch["feature_lengths"])) for batch in batches)

    def in_memory(_data: SplitData, _epoch: int, training: bool) -> list:
        return batches

    def run_epoch(use_in_memory_batches: bool) -> float:
        trainer._dataset = in_memory if use_in_memory_batches else real_pipeline
        return trainer._train_epoch(epoch)[1]

    run_epoch(True)  # trace the step function and warm up the kernels

    def empty_cache() -> None:
        shutil.rmtree(cache_dir, ignore_errors=True)

    def cold() -> float:
        empty_cache()
        cache = FeatureCache(cache_dir)
        source["features_for"] = lambda utterance: cache.get_or_compute(utterance.audio_filepath,
                                                                         features_config, compute)
        return run_epoch(False)

    def cold_prefilled() -> float:
        empty_cache()
        fill_started = time.perf_counter()
        cache = FeatureCache(cache_dir)
        cache.extract_many(paths, features_config, compute, jobs=arguments.jobs, progress=False)
        fill = time.perf_counter() - fill_started
        source["features_for"] = lambda utterance: cache.get_or_compute(utterance.audio_filepath,
                                                                         features_config, compute)
        return fill + run_epoch(False)

    def cold_background() -> float:
        empty_cache()
        epoch_started = time.perf_counter()
        cache = FeatureCache(cache_dir)
        in_epoch_order = [examples[index].utterance.audio_filepath
                          for index in batch_order(examples, arguments.batch_size, epoch, int(config.seed),
                                                   sortagrad=False, shuffle=True)]
        with cache.fill_in_background(in_epoch_order, features_config, compute, jobs=arguments.jobs):
            source["features_for"] = lambda utterance: cache.get_or_compute(utterance.audio_filepath,
                                                                             features_config, compute)
            run_epoch(False)
        return time.perf_counter() - epoch_started

    def warm() -> float:
        cache = FeatureCache(cache_dir)  # a new run: hashes from the on-disk index, features from .npy
        source["features_for"] = lambda utterance: cache.get_or_compute(utterance.audio_filepath,
                                                                         features_config, compute)
        seconds = run_epoch(False)
        if cache.statistics.computed:
            raise RuntimeError(f"warm cache computed {cache.statistics.computed} entries")
        return seconds

    compute(paths[0])  # import librosa and warm its code paths once, as any long run would have
    empty_cache()
    FeatureCache(cache_dir).extract_many(paths, features_config, compute, jobs=arguments.jobs, progress=False)
    load_started = time.perf_counter()
    FeatureCache(cache_dir).extract_many(paths, features_config, compute, jobs=arguments.jobs, progress=False)
    load_seconds = time.perf_counter() - load_started

    def settled(measure: Any) -> Any:
        """``measure`` after a pause: worker processes of the previous row have exited, the disk is idle."""
        def run() -> float:
            time.sleep(2.0)
            return measure()
        return run

    # warm runs first in each round, while the cache the previous round left is full; the rows that
    # start worker processes come last
    measures = {"in-memory tensors": lambda: run_epoch(True), "real pipeline, warm cache": warm,
                "real pipeline, cold cache": cold, "real pipeline, cold cache prefilled": cold_prefilled,
                "real pipeline, cold, background fill": cold_background}
    timings: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(max(1, arguments.repeats)):  # round robin, so a busy moment hits every row alike
        for name, measure in measures.items():
            timings[name].append(settled(measure)())
    rows = {name: min(values) for name, values in timings.items()}

    devices = ", ".join(device.name for device in tf.config.list_logical_devices()) or "?"
    print(f"train throughput: {len(examples)} utterances, {seconds_total:.1f} s of audio "
          f"({audio_seconds / max(len(utterances), 1):.2f} s mean), batch {arguments.batch_size}, "
          f"{len(batches)} steps, padding {1 - real / frames:.1%} of frames")
    print(f"model: {config.model.name} rnn {list(config.model.parameters.rnn_sizes)} "
          f"{config.model.parameters.rnn_type}, features {config.features.type} x{num_features}; "
          f"devices: {devices}; {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); tf {tf.__version__}")
    print(f"feature extraction, {arguments.jobs} processes, no cache: {seconds_total / extraction_seconds:,.0f} "
          f"audio-s/s; warm cache load (one process): {seconds_total / load_seconds:,.0f} audio-s/s")
    baseline = seconds_total / rows["in-memory tensors"]
    print(f"{'':38}{'best s':>9}{'audio-s/s':>12}{'ratio':>8}   all epochs (s)")
    for name, seconds in rows.items():
        throughput = seconds_total / seconds
        every = " ".join(f"{value:.2f}" for value in timings[name])
        print(f"{name:38}{seconds:9.2f}{throughput:12.1f}{throughput / baseline:8.2f}   {every}")
    warm_ratio = rows["in-memory tensors"] / rows["real pipeline, warm cache"]
    cold_ratio = rows["in-memory tensors"] / rows["real pipeline, cold cache"]
    print(f"ratios: warm/in-memory {warm_ratio:.2f} (aim >= 0.95), cold/in-memory {cold_ratio:.2f} (aim >= 0.7); "
          f"total bench time {time.perf_counter() - started:.0f} s; work dir {work}")
    if not arguments.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
