"""The TensorFlow side of ``asr export``: feature extraction in TensorFlow ops, the audio -> logits
model, and its conversion to a SavedModel, TFLite or ONNX (see :mod:`asr.serving.export`).

Importing this module starts TensorFlow; :func:`asr.serving.export.export` imports it only after
the command's arguments are checked.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import keras
import librosa
import numpy as np
import scipy.fft
import tensorflow as tf

from asr.audio.features import typed_features_config
from asr.errors import UserError, first_line
from asr.models.architectures import output_lengths
from asr.pipeline import load_model

ONNX_OPSET = 17
EPSILON = 1e-6  # as asr.audio.features
AMIN = 1e-10  # librosa.power_to_db defaults: amin, ref=1.0, top_db=80
TOP_DB = 80.0


class TFFeatures:
    """:func:`asr.audio.features.compute_features` in TensorFlow ops, batched over zero-padded audio."""

    def __init__(self, features_config: Any, matmul: bool = True, fft: bool = True) -> None:
        config = typed_features_config(features_config)
        self.type = config.type
        if self.type not in ("mfcc", "logmel"):
            raise UserError(f"features.type={self.type!r} cannot be exported (mfcc, logmel can)")
        self.rate = int(config.sample_rate)
        self.n_fft = int(config.n_fft)
        self.hop = int(round(config.hop_ms * self.rate / 1000))
        window = int(round(config.window_ms * self.rate / 1000))
        self.num_features = int(config.num_features)
        n_mels = int(config.n_mels) if self.type == "mfcc" else self.num_features
        self.normalize = config.normalize == "utterance"
        # librosa's own constants: a periodic Hann window centred in n_fft, the Slaney mel filter bank
        self.window = librosa.util.pad_center(librosa.filters.get_window("hann", window, fftbins=True),
                                              size=self.n_fft).astype(np.float32)
        self.mel = librosa.filters.mel(sr=self.rate, n_fft=self.n_fft, n_mels=n_mels).T.astype(np.float32)
        # DCT-II (orthonormal) as a matrix: tf.signal.dct slices complex tensors, which TFLite lacks
        self.dct = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0).T[:, : self.num_features]
        self.dct = self.dct.astype(np.float32)
        self.config = asdict(config)  # export.json's "features"
        # With matmul=False the filter bank and DCT are products and sums, not matrix products:
        # dynamic-range quantisation turns the input of every matrix product into int8 on the fly,
        # which wrecks power spectra spanning 1e-10..1e3; the front end must stay float.
        self.matmul = matmul
        # With fft=False the spectrum is a DFT written as two matrix products (cosine, sine): tf2onnx
        # cannot convert TensorFlow's RFFT with dynamic shapes, a matrix product it can.
        self.fft = fft
        if not fft:
            phase = 2 * np.pi * np.outer(np.arange(self.n_fft), np.arange(self.n_fft // 2 + 1)) / self.n_fft
            self.cosine, self.sine = np.cos(phase).astype(np.float32), np.sin(phase).astype(np.float32)

    def _product(self, values: Any, matrix: np.ndarray) -> Any:
        if self.matmul:
            return tf.tensordot(values, matrix, axes=1)
        return tf.reduce_sum(tf.expand_dims(values, -1) * matrix, axis=-2)

    def frame_lengths(self, audio_length: Any) -> Any:
        """Frames per utterance: librosa's ``1 + len // hop`` with centred frames (n_fft even)."""
        return 1 + tf.cast(audio_length, tf.int32) // self.hop

    def __call__(self, audio: Any, audio_length: Any) -> Any:
        """``[B, N]`` float32 audio, ``[B]`` lengths -> features ``[B, T, F]``, padded frames all zeros."""
        half = self.n_fft // 2
        samples = tf.shape(audio)[1]
        positions = tf.range(samples)[None, :]
        audio = tf.where(positions < audio_length[:, None], audio, 0.0)  # zero beyond each length
        padded = tf.pad(audio, [[0, 0], [half, half]])  # librosa: center=True, pad_mode="constant"
        frames = tf.signal.frame(padded, self.n_fft, self.hop) * self.window  # [B, T, n_fft]
        if self.fft:
            spectrum = tf.signal.rfft(frames, fft_length=[self.n_fft])
            power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
        else:
            power = (tf.math.square(tf.tensordot(frames, self.cosine, axes=1))
                     + tf.math.square(tf.tensordot(frames, self.sine, axes=1)))
        mel = self._product(power, self.mel)  # [B, T, n_mels]
        lengths = self.frame_lengths(audio_length)
        valid = tf.sequence_mask(lengths, tf.shape(mel)[1])[:, :, None]  # [B, T, 1]
        if self.type == "mfcc":
            decibels = 10.0 * tf.math.log(tf.maximum(mel, AMIN)) / tf.math.log(10.0)
            loudest = tf.reduce_max(tf.where(valid, decibels, -np.inf), axis=[1, 2], keepdims=True)
            decibels = tf.maximum(decibels, loudest - TOP_DB)  # power_to_db's floor, per utterance
            features = self._product(decibels, self.dct)  # DCT-II, orthonormal, first num_features
        else:
            features = tf.math.log(mel + EPSILON)
        if self.normalize:
            count = tf.cast(lengths, tf.float32)[:, None, None]
            weights = tf.cast(valid, tf.float32)
            mean = tf.reduce_sum(features * weights, axis=1, keepdims=True) / count
            variance = tf.reduce_sum(tf.square(features - mean) * weights, axis=1, keepdims=True) / count
            features = (features - mean) / (tf.sqrt(variance) + EPSILON)
        return tf.where(valid, features, 0.0)


class AudioModel:
    """The Keras model behind TensorFlow feature extraction: audio -> logits, and greedy transcripts."""

    def __init__(self, pipeline: Any, quantized: bool = False, fft: bool = True) -> None:
        self.pipeline = pipeline
        self.features = TFFeatures(pipeline.configuration.config.features, matmul=not quantized, fft=fft)
        self.symbols = ["", *pipeline.alphabet.symbols]

    def logits(self, audio: Any, audio_length: Any) -> dict[str, Any]:
        features = self.features(audio, audio_length)
        logits = self.pipeline.model(features, training=False)
        lengths = output_lengths(self.features.frame_lengths(audio_length), self.pipeline.configuration.model)
        return {"logits": tf.cast(logits, tf.float32), "logit_length": tf.minimum(lengths, tf.shape(logits)[1])}

    def transcribe(self, audio: Any, audio_length: Any) -> dict[str, Any]:
        """Greedy CTC: argmax per frame, merge repeats, drop blanks, join the symbols (as asr.decoding.decoders)."""
        outputs = self.logits(audio, audio_length)
        best = tf.argmax(outputs["logits"], axis=-1, output_type=tf.int32)
        best = tf.where(tf.sequence_mask(outputs["logit_length"], tf.shape(best)[1]), best, 0)
        previous = tf.pad(best[:, :-1], [[0, 0], [1, 0]])
        keep = tf.logical_and(tf.not_equal(best, previous), tf.not_equal(best, 0))
        characters = tf.where(keep, tf.gather(tf.constant(self.symbols), best), "")
        return {"transcript": tf.strings.reduce_join(characters, axis=1), **outputs}


def _signature(batch: int | None = None) -> list[Any]:
    return [tf.TensorSpec([batch, None], tf.float32, name="audio"),
            tf.TensorSpec([batch], tf.int32, name="audio_length")]


@contextlib.contextmanager
def portable_rnns(model: Any) -> Iterator[None]:
    """Trace the RNNs without cuDNN: on a GPU machine Keras would put ``CudnnRNNV3`` into the graph,
    which neither a CPU, TFLite nor tf2onnx can run. Restores each layer's setting afterwards."""

    def recurrent(layer: Any) -> Iterator[Any]:
        if isinstance(layer, keras.layers.Bidirectional):
            yield from recurrent(layer.forward_layer)
            yield from recurrent(layer.backward_layer)
        elif isinstance(layer, (keras.layers.GRU, keras.layers.LSTM)):  # ProjectedGRU included
            yield layer

    layers = [found for layer in model.layers for found in recurrent(layer)]
    saved = [layer.use_cudnn for layer in layers]
    try:
        for layer in layers:
            layer.use_cudnn = False
        yield
    finally:
        for layer, setting in zip(layers, saved):
            layer.use_cudnn = setting


def _save(pipeline: Any, out: Path, endpoints: dict[str, Any], batch: int | None = None) -> None:
    """A SavedModel of ``endpoints`` (name -> function of audio, audio_length), the weights saved once.

    ``tf.saved_model.save`` of a module tracking the model's TensorFlow variables: Keras'
    ``ExportArchive`` wrote every weight twice (as ``variables`` and ``_all_variables``).
    """
    module = tf.Module()
    module.weights = [getattr(weight, "value", weight) for weight in pipeline.model.weights]  # the tf.Variables
    signatures = {}
    for name, function in endpoints.items():
        signatures[name] = tf.function(function, input_signature=_signature(batch))
        setattr(module, name, signatures[name])
    with portable_rnns(pipeline.model):  # the functions are traced while saving
        tf.saved_model.save(module, str(out), signatures=signatures)


def save_tf_model(pipeline: Any, out: Path) -> AudioModel:
    """A SavedModel at ``out`` with the signatures ``serving_default`` (logits) and ``transcribe``."""
    wrapped = AudioModel(pipeline)
    _save(pipeline, out, {"serving_default": wrapped.logits, "transcribe": wrapped.transcribe})
    return wrapped


def convert_to_tflite(pipeline: Any, path: Path, quantize: str = "none") -> Path:
    """A TFLite model (``serving_default``: audio, audio_length -> logits, logit_length) at ``path``.

    Converted from a SavedModel (TensorFlow's recommended path; it freezes the variables, which
    the RNN loops would otherwise read as resource variables the TFLite runtime cannot find).
    """
    wrapped = AudioModel(pipeline, quantized=quantize != "none")
    with tempfile.TemporaryDirectory(prefix="asr-export-") as scratch:
        # One utterance per call: the RNN loops' tensor lists then have a static element shape
        # [1, units], which TFLite lowers to builtin ops (a dynamic batch would need Select TF ops).
        _save(pipeline, Path(scratch), {"serving_default": wrapped.logits}, batch=1)
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
        try:
            flat = converter.convert()
        except Exception as error:  # noqa: BLE001 - the converter's errors are long MLIR dumps
            first = first_line(error)
            raise UserError(f"TFLite conversion failed: {first}") from None
    path.write_bytes(flat)
    return path


def convert_to_onnx(pipeline: Any, path: Path) -> Path:
    """An ONNX model (inputs audio, audio_length; outputs logits, logit_length; any batch) at ``path``.

    Needs ``tf2onnx`` and ``onnx`` (not dependencies of asr: ``pip install tf2onnx onnx``).
    """
    try:  # optional dependencies (tf2onnx here, ai_edge_litert in TFLiteRunner) are imported where used
        import tf2onnx
    except ImportError:
        raise UserError("--format onnx needs tf2onnx and onnx: pip install tf2onnx onnx") from None
    wrapped = AudioModel(pipeline, fft=False)
    function = tf.function(wrapped.logits, input_signature=_signature())
    try:
        with portable_rnns(pipeline.model):
            tf2onnx.convert.from_function(function, input_signature=_signature(), opset=ONNX_OPSET,
                                          output_path=str(path))
    except Exception as error:  # noqa: BLE001 - the converter's errors are long
        first = first_line(error)
        raise UserError(f"ONNX conversion failed: {first}") from None
    return path


def write_export(source: Path, fmt: str, quantize: str, folder: Path, model_file: str) -> dict[str, Any]:
    """Load the bundle at ``source``; write its ``fmt`` model as ``folder / model_file`` ("." for a
    SavedModel) and ``alphabet.txt``. Returns the sample rate and feature settings for ``export.json``."""
    pipeline = load_model(str(source))
    if fmt == "saved_model":
        save_tf_model(pipeline, folder / model_file)
    elif fmt == "onnx":
        convert_to_onnx(pipeline, folder / model_file)
    else:
        convert_to_tflite(pipeline, folder / model_file, quantize)
    (folder / "alphabet.txt").write_text(pipeline.alphabet.to_string(), encoding="utf-8")
    features = TFFeatures(pipeline.configuration.config.features)
    return {"sample_rate": features.rate, "features": features.config}


class TFLiteRunner:
    """Runs an exported ``model.tflite`` on one utterance at a time (the interpreter resizes per input)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:  # LiteRT, TFLite's successor, an optional dependency; else TensorFlow's own (deprecated) interpreter
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            Interpreter = tf.lite.Interpreter  # noqa: N806
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Logits ``[T', V]`` of one utterance's samples."""
        audio = np.asarray(audio, dtype=np.float32)[None, :]
        outputs = self.runner(audio=audio, audio_length=np.asarray([audio.shape[1]], dtype=np.int32))
        return outputs["logits"][0, : int(outputs["logit_length"][0])]
