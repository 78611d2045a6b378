"""``asr export``: a tiny model trained on synthetic speech, exported to a SavedModel, to TFLite
(float32 and dynamic-range int8) and to ONNX (where tf2onnx is installed), each checked against the
Keras model on a dozen utterances.

Tolerances (absolute, on logits): SavedModel, TFLite float32 and ONNX 1e-3 (the TensorFlow feature
extraction matches librosa to ~1e-4, and the graphs compute the same float32 operations), and
identical greedy transcripts. TFLite with int8 weights (dynamic range): logits within 5 % of the
Keras ones (relative L2 error; ~1 % measured), at least 95 % of frames with the same best label,
greedy transcripts within 10 % CER of Keras' (a model trained for one epoch has near-uniform
logits, so an argmax can flip on a rounding; a trained model's margins are far wider).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.data.synth import synthesize_corpus
from tests.test_pipeline_end_to_end import tiny_configuration

ASR = Path(sys.executable).with_name("asr")
FLOAT_TOLERANCE = 1e-3
INT8_RELATIVE_ERROR = 0.05
INT8_FRAME_AGREEMENT = 0.95
INT8_CER = 0.10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from asr.pipeline import Pipeline

    folder = tmp_path_factory.mktemp("export")
    corpus = synthesize_corpus(folder / "corpus", count=16, seed=5, quiet=True)
    pipeline = Pipeline.from_configuration(tiny_configuration(corpus, folder / "exp", epochs=1))
    pipeline.train()
    bundle = pipeline.save(folder / "model.bin")
    wavs = sorted((Path(corpus["all"]).parent / "wavs").glob("*.wav"))[:12]
    return {"pipeline": pipeline, "bundle": bundle, "wavs": wavs, "folder": folder}


def keras_reference(pipeline, wavs):
    """Per-utterance logits of the Keras model (padding removed) and their greedy transcripts."""
    from asr.decoding.decoders import greedy_decode

    features, lengths = pipeline.get_features(wavs, return_lengths=True)
    logits = np.asarray(pipeline.predict(features))
    frames = pipeline.output_lengths(lengths)
    per_utterance = [logits[row, : int(frames[row])] for row in range(len(wavs))]
    return per_utterance, greedy_decode(logits, pipeline.alphabet, frames)


def audio_batch(wavs):
    from asr.audio.features import load_audio

    signals = [load_audio(path, 16000) for path in wavs]
    batch = np.zeros((len(signals), max(len(signal) for signal in signals)), dtype=np.float32)
    for row, signal in enumerate(signals):
        batch[row, : len(signal)] = signal
    return signals, batch, np.asarray([len(signal) for signal in signals], dtype=np.int32)


def test_saved_model_takes_audio_and_matches_keras(trained, tmp_path):
    import tensorflow as tf

    from asr.serving.export import export

    out = export(str(trained["bundle"]), "saved_model", tmp_path / "saved")
    description = json.loads((out / "export.json").read_text())
    assert description["signatures"] == ["serving_default", "transcribe"] and description["sample_rate"] == 16000
    assert (out / "alphabet.txt").read_text() == trained["pipeline"].alphabet.to_string()
    loaded = tf.saved_model.load(str(out))
    _, batch, lengths = audio_batch(trained["wavs"])
    outputs = loaded.signatures["serving_default"](audio=tf.constant(batch), audio_length=tf.constant(lengths))
    expected, transcripts = keras_reference(trained["pipeline"], trained["wavs"])
    for row, reference in enumerate(expected):
        assert int(outputs["logit_length"][row]) == len(reference)
        np.testing.assert_allclose(outputs["logits"][row, : len(reference)].numpy(), reference, atol=FLOAT_TOLERANCE)
    greedy = loaded.signatures["transcribe"](audio=tf.constant(batch), audio_length=tf.constant(lengths))
    assert [text.decode("utf-8") for text in greedy["transcript"].numpy()] == transcripts


def test_tflite_float32_and_dynamic_int8_match_keras(trained, tmp_path):
    from asr.decoding.decoders import greedy_decode
    from asr.serving.export import TFLITE_FILE, export
    from asr.serving.export_graphs import TFLiteRunner

    signals, _, _ = audio_batch(trained["wavs"])
    expected, transcripts = keras_reference(trained["pipeline"], trained["wavs"])
    alphabet = trained["pipeline"].alphabet
    sizes = {}
    for quantize in ("none", "dynamic"):
        out = export(str(trained["bundle"]), "tflite", tmp_path / quantize, quantize=quantize)
        sizes[quantize] = (out / TFLITE_FILE).stat().st_size
        runner = TFLiteRunner(out / TFLITE_FILE)
        logits = [runner(signal) for signal in signals]
        assert [len(item) for item in logits] == [len(item) for item in expected]
        if quantize == "none":
            for ours, reference in zip(logits, expected):
                np.testing.assert_allclose(ours, reference, atol=FLOAT_TOLERANCE)
            assert [greedy_decode(item[None], alphabet)[0] for item in logits] == transcripts
        else:
            import jiwer

            ours, reference = np.concatenate(logits), np.concatenate(expected)
            relative = float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))
            agreement = float(np.mean(ours.argmax(-1) == reference.argmax(-1)))
            cer = jiwer.cer(transcripts, [greedy_decode(item[None], alphabet)[0] for item in logits])
            assert relative <= INT8_RELATIVE_ERROR and agreement >= INT8_FRAME_AGREEMENT and cer <= INT8_CER, (
                relative, agreement, cer)
    assert sizes["dynamic"] < sizes["none"]


def test_onnx_matches_keras(trained, tmp_path):
    """Runs where tf2onnx, onnx and onnxruntime are installed (optional: not dependencies of asr)."""
    pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from asr.decoding.decoders import greedy_decode
    from asr.serving.export import ONNX_FILE, export

    out = export(str(trained["bundle"]), "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    _, batch, lengths = audio_batch(trained["wavs"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"audio": batch, "audio_length": lengths})))
    expected, transcripts = keras_reference(trained["pipeline"], trained["wavs"])
    for row, reference in enumerate(expected):
        assert int(outputs["logit_length"][row]) == len(reference)
        np.testing.assert_allclose(outputs["logits"][row, : len(reference)], reference, atol=FLOAT_TOLERANCE)
    assert greedy_decode(outputs["logits"], trained["pipeline"].alphabet, outputs["logit_length"]) == transcripts


def test_rnns_are_traced_without_cudnn_and_restored(trained):
    """On a GPU machine Keras would trace cuDNN kernels into the graph; exports switch that off."""
    import keras

    from asr.serving.export_graphs import portable_rnns

    model = trained["pipeline"].model
    recurrent = [sub for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)
                 for sub in (layer.forward_layer, layer.backward_layer)]
    assert recurrent and all(layer.use_cudnn == "auto" for layer in recurrent)
    with portable_rnns(model):
        assert all(layer.use_cudnn is False for layer in recurrent)
    assert all(layer.use_cudnn == "auto" for layer in recurrent)


def test_asr_export_command(trained, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([str(ASR), "export", "--model", str(trained["bundle"]), "--format", "tflite",
                           "--quantize", "dynamic", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"wrote {out} (") and (out / "model.tflite").is_file()
    assert json.loads((out / "export.json").read_text())["quantize"] == "dynamic"
    for arguments, message in ((["--format", "tf.js", "--out", str(tmp_path / "x")], "--format 'tf.js' is not one of"),
                               (["--format", "saved_model", "--out", str(out)], f"--out {out} exists"),
                               (["--format", "saved_model", "--quantize", "dynamic", "--out", str(tmp_path / "y")],
                                "--quantize dynamic applies to --format tflite only"),
                               (["--format", "tflite", "--out", str(tmp_path / "z")], None)):
        model = str(trained["bundle"]) if message else str(tmp_path / "missing.bin")
        failed = subprocess.run([str(ASR), "export", "--model", model, *arguments], capture_output=True, text=True,
                                timeout=900)
        assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr[-2000:]
        assert failed.stderr.startswith(f"error: {message or 'model bundle not found'}")
