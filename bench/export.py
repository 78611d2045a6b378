"""Size and speed of each export format next to the Keras model.

    python bench/export.py [--model en|model.bin|models:/asr-en/1] [--count 20] [--work-dir /tmp/asr-bench-export]

Synthesises ``--count`` utterances (asr.data.synth), exports the model as a SavedModel, a TFLite
float32 and a TFLite dynamic-range int8 model (and ONNX where tf2onnx and onnxruntime are
installed), then transcribes every utterance one at a time
with each (after a warm-up on two of them) and prints, per format: size on disk, real-time factor
(wall seconds / audio seconds, audio already in memory at 16 kHz; the Keras row includes librosa's
features, the exported rows their TensorFlow features), the largest logit difference from Keras,
and the greedy transcripts' CER against Keras'. Without ``--model`` the default architecture is
trained for one epoch first (its transcripts mean nothing; its sizes and speeds are real).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def folder_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(item.stat().st_size for item in path.rglob("*")
                                                          if item.is_file())


def untrained_model(work: Path, corpus: dict) -> Path:
    """The default architecture (conf/model/deepspeech2.yaml), one epoch on the bench's corpus."""
    from asr.configuration import Configuration
    from asr.pipeline import Pipeline

    bundle = work / "default-1-epoch.bin"
    if bundle.is_file():
        return bundle
    configuration = Configuration({
        "exp_dir": str(work / "default-1-epoch"), "data": {"train_manifest": str(corpus["train"]),
                                                "dev_manifest": str(corpus["dev"])},
        "trainer": {"epochs": 1, "batch_size": 8, "val_decode_limit": 2}})
    pipeline = Pipeline.from_configuration(configuration)
    pipeline.train()
    return pipeline.save(bundle)


def timed(function: Callable[[np.ndarray], np.ndarray], signals: list[np.ndarray]) -> tuple[float, list]:
    for signal in signals[:2]:
        function(signal)  # warm-up: graph tracing, interpreter allocation
    started = time.perf_counter()
    outputs = [function(signal) for signal in signals]
    return time.perf_counter() - started, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="name, bundle or MLflow URI (default: the default architecture, 1 epoch)")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/asr-bench-export"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="TFLite interpreter threads")
    arguments = parser.parse_args()

    import jiwer
    import tensorflow as tf

    from asr.audio.features import compute_features, load_audio
    from asr.data.synth import synthesize_corpus
    from asr.decoding.decoders import greedy_decode
    from asr.serving.export import ONNX_FILE, TFLITE_FILE, export
    from asr.serving.export_graphs import TFLiteRunner
    from asr.pretrained.registry import resolve_model_path
    from asr.pipeline import load_model

    work = arguments.work_dir
    work.mkdir(parents=True, exist_ok=True)
    corpus = synthesize_corpus(work / "corpus", count=max(arguments.count, 12), seed=4242, quiet=True)
    wavs = sorted((Path(corpus["all"]).parent / "wavs").glob("*.wav"))[: arguments.count]
    bundle = resolve_model_path(arguments.model) if arguments.model else untrained_model(work, corpus)
    pipeline = load_model(str(bundle))
    rate = int(pipeline.configuration.features.sample_rate)
    signals = [load_audio(path, rate) for path in wavs]
    audio_seconds = sum(len(signal) for signal in signals) / rate
    exports = work / "exports"
    paths = {}
    formats = [("saved_model", "saved_model", "none"), ("tflite_float32", "tflite", "none"),
               ("tflite_int8", "tflite", "dynamic")]
    try:
        import onnxruntime
        import tf2onnx  # noqa: F401

        formats.append(("onnx", "onnx", "none"))
    except ImportError:
        print("ONNX left out: pip install tf2onnx onnx onnxruntime")
    for name, fmt, quantize in formats:
        target = exports / name
        if not target.exists():
            export(str(bundle), fmt, target, quantize=quantize)
        paths[name] = target

    def keras(signal: np.ndarray) -> np.ndarray:
        features = compute_features(signal, pipeline.configuration.features)[None]
        return np.asarray(pipeline.predict(features))[0]

    saved = tf.saved_model.load(str(paths["saved_model"]))
    serve = saved.signatures["serving_default"]

    def saved_model(signal: np.ndarray) -> np.ndarray:
        outputs = serve(audio=tf.constant(signal[None]), audio_length=tf.constant([len(signal)], tf.int32))
        return outputs["logits"][0, : int(outputs["logit_length"][0])].numpy()

    rows: list[tuple[str, int, Callable[[np.ndarray], np.ndarray]]] = [
        ("keras (bundle)", bundle.stat().st_size, keras),
        ("saved_model", folder_size(paths["saved_model"]), saved_model)]
    for name in ("tflite_float32", "tflite_int8"):
        runner: Any = TFLiteRunner(paths[name] / TFLITE_FILE, threads=arguments.threads)
        rows.append((name, folder_size(paths[name] / TFLITE_FILE), runner))
    if "onnx" in paths:
        session = onnxruntime.InferenceSession(str(paths["onnx"] / ONNX_FILE), providers=["CPUExecutionProvider"])

        def onnx(signal: np.ndarray) -> np.ndarray:
            logits, length = session.run(["logits", "logit_length"], {
                "audio": signal[None], "audio_length": np.asarray([len(signal)], dtype=np.int32)})
            return logits[0, : int(length[0])]

        rows.append(("onnx", folder_size(paths["onnx"] / ONNX_FILE), onnx))

    reference: list[np.ndarray] = []
    reference_text: list[str] = []
    print(f"{len(signals)} utterances, {audio_seconds:.1f} s of audio, model {bundle}")
    print(f"{'format':<16}{'size MB':>9}{'RTF':>9}{'max |dlogit|':>14}{'CER vs keras':>14}")
    for name, size, function in rows:
        seconds, logits = timed(function, signals)
        texts = [greedy_decode(item[None], pipeline.alphabet)[0] for item in logits]
        if not reference:
            reference = [item[: len(item)] for item in logits]
            reference_text = texts
        difference = max(float(np.abs(ours[: len(theirs)] - theirs[: len(ours)]).max())
                         for ours, theirs in zip(logits, reference))
        cer = jiwer.cer(reference_text, texts) if any(reference_text) else 0.0
        print(f"{name:<16}{size / 1e6:>9.2f}{seconds / audio_seconds:>9.3f}{difference:>14.2e}{cer:>14.1%}")


if __name__ == "__main__":
    main()
