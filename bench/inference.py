"""Inference speed and accuracy: greedy and beam+LM decoding next to CMU PocketSphinx.

    python bench/inference.py [--model model.bin] [--count 300] [--work-dir /tmp/asr-bench-inference]
    python bench/inference.py --model en --batching manifest.jsonl   # one padded batch vs length buckets

Synthesises ``--count`` test utterances (asr.data.synth, a seed of their own), builds a
3-gram LM from generated sentences (test sentences left out), then transcribes the same
WAVs with

* this library: features → Keras model → greedy / beam / beam + LM (pyctcdecode + KenLM),
* PocketSphinx 5 with the en-US model and LM it ships (and, with ``--pocketsphinx-lm``,
  also with the in-domain LM built here),

and prints the real-time factor (wall seconds ÷ audio seconds, after a warm-up on a few
other utterances) and WER/CER of each. PocketSphinx runs first, in a fork pool of
``--jobs`` processes, before TensorFlow is imported; the library uses the same cores
(TensorFlow's threads, then a decoder pool). Without ``--model`` a small model is trained
first with ``python -m asr.train`` (cached in the work folder).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
TEST_SEED = 20240
LM_SEED = 777
WARMUP_UTTERANCES = 8
TUNE_UTTERANCES = 100
TRAIN_OVERRIDES = [
    "model.parameters.rnn_type=gru",
    "model.parameters.rnn_sizes=[192,192]",
    "model.parameters.conv_filters=[32]",
    "model.parameters.conv_kernels=[[11,41]]",
    "model.parameters.conv_strides=[[2,2]]",
    "trainer.batch_size=16",
    "trainer.val_decode_limit=60",
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- data, LM, model


def make_corpus(folder: Path, count: int, seed: int, jobs: int) -> Path:
    """A manifest of ``count`` synthetic utterances (reused when already there)."""
    from asr.data.synth import synthesize_corpus

    manifest = folder / "all.jsonl"
    if manifest.exists() and sum(1 for _ in open(manifest)) == count:
        return manifest
    return synthesize_corpus(folder, count, seed, splits={"test": 1.0}, jobs=jobs)["all"]


def read_manifest(path: Path) -> tuple[list[str], list[str], list[float]]:
    from asr.data.manifest import read_manifest as read

    utterances = read(path)
    return ([str(u.audio_filepath) for u in utterances], [u.text for u in utterances],
            [float(u.duration) for u in utterances])


def make_language_model(path: Path, sentences: int, order: int, exclude: set[str]) -> dict:
    """An ARPA model of generated sentences that are not test sentences."""
    from asr.data.sentences import generate_sentences
    from asr.decoding.lm import build_arpa

    texts = [text for text in generate_sentences(sentences, LM_SEED) if text not in exclude]
    started = time.perf_counter()
    model = build_arpa([text.split() for text in texts], order)
    model.write(path)
    return {"sentences": len(texts), "excluded_test_sentences": sentences - len(texts),
            "ngrams": [len(table) for table in model.log_probabilities],
            "build_seconds": round(time.perf_counter() - started, 2), "bytes": path.stat().st_size}


def train_model(work_dir: Path, train_count: int, epochs: int, jobs: int) -> Path:
    """Train a small model on a synthetic corpus of its own seed (``python -m asr.train``, resumable)."""
    bundle = work_dir / "train-run" / "model.bin"
    if bundle.exists():
        return bundle
    corpus = work_dir / "train-corpus"
    if not (corpus / "train.jsonl").exists():
        from asr.data.synth import synthesize_corpus

        synthesize_corpus(corpus, train_count, 101, jobs=jobs)
    command = [sys.executable, "-m", "asr.train",
               f"data.train_manifest={corpus / 'train.jsonl'}", f"data.dev_manifest={corpus / 'dev.jsonl'}",
               f"data.test_manifest={corpus / 'test.jsonl'}", f"data.cache_dir={work_dir / 'feature-cache'}",
               f"trainer.epochs={epochs}", f"exp_dir={work_dir / 'train-run'}", *TRAIN_OVERRIDES]
    log(f"training a small model ({train_count} utterances, {epochs} epochs): {' '.join(command[1:])}")
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return bundle


# --------------------------------------------------------------------------- PocketSphinx

_SPHINX: Any = None


def _sphinx_init(lm: Optional[str]) -> None:
    global _SPHINX
    from pocketsphinx import Decoder

    options: dict[str, Any] = {"samprate": 16000, "loglevel": "FATAL"}
    if lm:
        options["lm"] = lm
    _SPHINX = Decoder(**options)


def _sphinx_transcribe(path: str) -> str:
    import soundfile

    samples, rate = soundfile.read(path, dtype="int16")
    if rate != 16000:
        raise ValueError(f"{path}: {rate} Hz, PocketSphinx is configured for 16000")
    _SPHINX.start_utt()
    _SPHINX.process_raw(samples.tobytes(), full_utt=True)
    _SPHINX.end_utt()
    hypothesis = _SPHINX.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def run_pocketsphinx(files: list[str], warmup: list[str], jobs: int, lm: Optional[str]) -> tuple[list[str], float]:
    """Transcripts and wall seconds; each worker loads the model in its initializer (not timed)."""
    context = multiprocessing.get_context("fork")  # no TensorFlow in this process yet
    with context.Pool(jobs, initializer=_sphinx_init, initargs=(lm,)) as pool:
        pool.map(_sphinx_transcribe, warmup, chunksize=1)  # loads the model in every worker
        started = time.perf_counter()
        texts = pool.map(_sphinx_transcribe, files, chunksize=1)
        return [text.lower() for text in texts], time.perf_counter() - started


# --------------------------------------------------------------------------- this library


def run_library(model: Path, files: list[str], warmup: list[str], lm: Path, beam_width: int,
                alpha: float, beta: float, jobs: int) -> list[dict]:
    """Rows for greedy, beam, and beam+LM (pool and one process) on the same logits."""
    from asr import load_model
    from asr.decoding.decoders import make_decoder
    from asr.inference import Timings, decode_logits, logits_of_files

    pipeline = load_model(str(model))
    started = time.perf_counter()
    for part in (warmup[:2], warmup[2:5], warmup):  # several shapes: tf.function relaxes to a generic trace
        warm_logits, _ = logits_of_files(pipeline.model, pipeline.configuration, part)
    decode_logits(make_decoder({"name": "greedy"}, pipeline.alphabet), warm_logits)
    log(f"warm-up (librosa, tf.function traces) on {len(warmup)} utterances: {time.perf_counter() - started:.1f}s")
    front = Timings()
    logits, _ = logits_of_files(pipeline.model, pipeline.configuration, files, front)
    log(f"features {front.features:.2f}s, acoustic model {front.acoustic_model:.2f}s "
        f"({sum(len(item) for item in logits)} output frames)")
    beam_lm = {"name": "beam_lm", "beam_width": beam_width, "lm_path": str(lm), "alpha": alpha, "beta": beta}
    decoders = [
        ("greedy", make_decoder({"name": "greedy"}, pipeline.alphabet)),
        (f"beam {beam_width}", make_decoder({"name": "beam", "beam_width": beam_width}, pipeline.alphabet,
                                            workers=jobs)),
        (f"beam {beam_width} + LM, {jobs} procs", make_decoder(beam_lm, pipeline.alphabet, workers=jobs)),
        (f"beam {beam_width} + LM, 1 proc", make_decoder(beam_lm, pipeline.alphabet, workers=1)),
    ]
    rows = []
    for name, decoder in decoders:
        with decoder:
            decode_logits(decoder, warm_logits)  # starts the pool, if any
            timings = Timings(features=front.features, acoustic_model=front.acoustic_model)
            texts = decode_logits(decoder, logits, timings)
        rows.append({"system": name, "texts": texts, "seconds": timings.total,
                     "detail": f"feat {timings.features:.1f} + AM {timings.acoustic_model:.1f} "
                               f"+ dec {timings.decoding:.1f}s"})
        log(f"{name}: decoding {timings.decoding:.2f}s")
    return rows


def tune(model: Path, manifest: Path, lm: Path, beam_width: int, trials: int) -> tuple[float, float]:
    """alpha, beta from a random search on a dev manifest (asr.evaluate.tune_weights)."""
    from asr import load_model
    from asr.decoding.decoders import make_decoder
    from asr.evaluate import search_pairs, tune_weights
    from asr.inference import logits_of_files

    files, references, _ = read_manifest(manifest)
    files, references = files[:TUNE_UTTERANCES], references[:TUNE_UTTERANCES]
    pipeline = load_model(str(model))
    logits, _ = logits_of_files(pipeline.model, pipeline.configuration, files)
    config = {"name": "beam_lm", "beam_width": beam_width, "lm_path": str(lm)}
    with make_decoder(config, pipeline.alphabet) as decoder:
        best = tune_weights(decoder, logits, references, search_pairs(trials, (0.5, 1.0)))[0]
    log(f"tuned on {len(files)} dev utterances: alpha={best.alpha} beta={best.beta} (dev WER {best.wer:.2%})")
    return best.alpha, best.beta


# --------------------------------------------------------------------------- main


def batching_figures(model: str, files: list[str], repeats: int = 3) -> None:
    """Acoustic-model seconds of ``files`` in one padded batch (the pipeline before asr.inference) and in
    asr.inference's length buckets, best of ``repeats`` after a warm-up."""
    from asr import load_model
    from asr.audio.features import pad_features
    from asr.inference import features_of_files, forward, logits_of_features

    pipeline = load_model(model)
    features = features_of_files(files, pipeline.configuration.features)
    ways = {"one padded batch": lambda: forward(pipeline.model, pad_features(features)[0]),
            "length buckets": lambda: logits_of_features(pipeline.model, pipeline.configuration.model, features)}
    log(f"{len(features)} utterances, {sum(map(len, features))} frames, the longest {max(map(len, features))}")
    for name, way in ways.items():
        way(), way()  # traces
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            way()
            seconds.append(time.perf_counter() - started)
        log(f"{name}: {min(seconds):.3f}s (best of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model bundle; default: train a small one")
    parser.add_argument("--count", type=int, default=300, help="test utterances")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/asr-bench-inference"))
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="processes for pools")
    parser.add_argument("--beam-width", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=None, help="LM weight (default: tuned on dev)")
    parser.add_argument("--beta", type=float, default=None, help="word bonus (default: tuned on dev)")
    parser.add_argument("--dev", type=Path, help="dev manifest to tune alpha/beta on (default: the training corpus's)")
    parser.add_argument("--tune-trials", type=int, default=12)
    parser.add_argument("--lm-sentences", type=int, default=50000)
    parser.add_argument("--lm-order", type=int, default=3)
    parser.add_argument("--train-count", type=int, default=2400)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--skip-pocketsphinx", action="store_true")
    parser.add_argument("--pocketsphinx-lm", action="store_true", help="also run PocketSphinx with the in-domain LM")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--batching", type=Path, metavar="MANIFEST",
                        help="only compare one padded batch with length buckets on MANIFEST's files (with --model)")
    arguments = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if arguments.batching:
        batching_figures(str(arguments.model or "en"), read_manifest(arguments.batching)[0])
        return

    from asr.metrics import cer, wer
    from asr.text import normalize_transcript

    work = arguments.work_dir
    work.mkdir(parents=True, exist_ok=True)
    manifest = make_corpus(work / "test-corpus", arguments.count + WARMUP_UTTERANCES, TEST_SEED, arguments.jobs)
    all_files, all_texts, all_durations = read_manifest(manifest)
    warmup, files = all_files[:WARMUP_UTTERANCES], all_files[WARMUP_UTTERANCES:]
    references = [normalize_transcript(text) for text in all_texts[WARMUP_UTTERANCES:]]
    audio_seconds = sum(all_durations[WARMUP_UTTERANCES:])
    log(f"{len(files)} test utterances, {audio_seconds:.0f}s of audio")

    lm = work / f"lm{arguments.lm_order}.arpa"
    lm_info = make_language_model(lm, arguments.lm_sentences, arguments.lm_order, set(all_texts))
    log(f"LM: {lm_info}")

    rows: list[dict] = []
    if not arguments.skip_pocketsphinx:
        variants = [("pocketsphinx en-us", None)]
        if arguments.pocketsphinx_lm:
            variants.append(("pocketsphinx en-us + our LM", str(lm)))
        for name, sphinx_lm in variants:
            texts, seconds = run_pocketsphinx(files, warmup, arguments.jobs, sphinx_lm)
            rows.append({"system": f"{name}, {arguments.jobs} procs", "texts": texts, "seconds": seconds,
                         "detail": ""})
            log(f"{name}: {seconds:.1f}s")

    model = arguments.model or train_model(work, arguments.train_count, arguments.epochs, arguments.jobs)
    alpha, beta = arguments.alpha, arguments.beta
    if alpha is None or beta is None:
        dev = arguments.dev or (work / "train-corpus" / "dev.jsonl" if arguments.model is None else None)
        if dev is not None and dev.exists():
            alpha, beta = tune(model, dev, lm, arguments.beam_width, arguments.tune_trials)
        else:
            alpha, beta = alpha if alpha is not None else 0.5, beta if beta is not None else 1.0
    rows = run_library(model, files, warmup, lm, arguments.beam_width, alpha, beta, arguments.jobs) + rows

    print()
    print(f"{len(files)} synthetic utterances, {audio_seconds:.0f}s of audio, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f}), model {model}, LM alpha={alpha} beta={beta}")
    print(f"{'system':36} {'RTF':>7} {'WER':>8} {'CER':>8}  wall")
    figures = []
    for row in rows:
        row_wer, row_cer = wer(references, row["texts"]), cer(references, row["texts"])
        rtf = row["seconds"] / audio_seconds
        figures.append({"system": row["system"], "rtf": rtf, "wer": row_wer, "cer": row_cer,
                        "seconds": row["seconds"]})
        print(f"{row['system']:36} {rtf:7.4f} {row_wer:8.2%} {row_cer:8.2%}  {row['seconds']:.1f}s {row['detail']}")
    by_name = {figure["system"]: figure for figure in figures}
    greedy = by_name["greedy"]
    beam_lm = next(figure for figure in figures if "+ LM" in figure["system"])
    sphinx = next((figure for figure in figures if figure["system"].startswith("pocketsphinx en-us,")), None)
    print()
    print(f"aim greedy RTF <= 0.02: {greedy['rtf']:.4f} {'met' if greedy['rtf'] <= 0.02 else 'NOT met'}")
    print(f"aim beam+LM RTF <= 0.05: {beam_lm['rtf']:.4f} {'met' if beam_lm['rtf'] <= 0.05 else 'NOT met'}")
    if sphinx:
        for figure in (greedy, beam_lm):
            ratio = figure["rtf"] / sphinx["rtf"]
            print(f"aim {figure['system']} RTF <= PocketSphinx/3: {ratio:.3f} of PocketSphinx's "
                  f"{'met' if ratio <= 1 / 3 else 'NOT met'}")
    print(f"aim beam+LM WER < greedy WER: {beam_lm['wer']:.2%} vs {greedy['wer']:.2%} "
          f"{'met' if beam_lm['wer'] < greedy['wer'] else 'NOT met'}")
    if arguments.json:
        arguments.json.write_text(json.dumps({"utterances": len(files), "audio_seconds": audio_seconds,
                                              "alpha": alpha, "beta": beta, "lm": lm_info, "rows": figures},
                                             indent=2))


if __name__ == "__main__":
    main()
