"""Export a model for deployment: a TensorFlow SavedModel, a TFLite flat buffer or ONNX.

    asr export --model en --format saved_model --out exported/en
    asr export --model experiments/1/model.bin --format tflite --quantize dynamic --out exported/en-int8
    asr export --model models:/asr-en@champion --format onnx --out exported/en-onnx   # pip install tf2onnx onnx

Both take raw audio, not features: float32 samples at the model's sample rate (16 kHz; the caller
resamples), zero-padded to a batch ``audio [B, N]`` with the true sample counts
``audio_length [B]``. The feature extraction of :mod:`asr.audio.features` (librosa's STFT with centred
frames, mel filter bank, dB with an 80 dB floor, DCT-II, per-utterance normalisation) is written
again in TensorFlow ops (:class:`asr.serving.export_graphs.TFFeatures`), with librosa's own mel
matrix and window as constants, so it matches librosa to float32 rounding. Outputs: ``logits [B, T', V]`` (blank = 0,
padded frames a confident blank) and ``logit_length [B]``.

The SavedModel has two signatures: ``serving_default`` (audio -> logits) and ``transcribe``
(audio -> greedy transcripts, ``tf.string [B]``). TFLite has the logits signature only (TFLite has
no string ops worth shipping); ``--quantize dynamic`` stores weights as int8 (dynamic-range
quantisation), activations stay float. The Keras GRU/LSTM loops (``ProjectedGRU`` included) become
TFLite ``WHILE`` loops with builtin ops only; they are traced without cuDNN even on a GPU machine
(:func:`asr.serving.export_graphs.portable_rnns`), so an export runs anywhere. ONNX (opset 17,
through tf2onnx, an optional dependency) has the logits signature with any batch size; its
spectrum is a DFT as matrix products.

Each export writes ``alphabet.txt`` (CTC label ``i + 1`` is its symbol ``i``) and ``export.json``
(format, input, outputs, sample rate, feature settings, source bundle) next to the model.

This module checks the arguments and writes the folder without TensorFlow; the TensorFlow side
(features in TF ops, the audio model, the converters) is :mod:`asr.serving.export_graphs`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from asr.errors import UserError
from asr.pretrained.registry import resolve_model_path

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZE = ("none", "dynamic")
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"


def check_arguments(fmt: str, out: str | Path, quantize: str) -> Path:
    """The ``asr export`` arguments checked without TensorFlow, so that a mistake answers at once."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
    if quantize != "none" and fmt != "tflite":
        raise UserError("--quantize dynamic applies to --format tflite only")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder: choose a new one")
    return out


def export(model: str, fmt: str, out: str | Path, quantize: str = "none") -> Path:
    """``asr export``: write ``fmt`` of ``model`` (name, bundle, models:/ or runs:/ URI) to the new folder ``out``."""
    out = check_arguments(fmt, out, quantize)
    source = resolve_model_path(model)
    # The one function-level import: TensorFlow starts (about 5 s, lines on stderr) only after the checks
    from asr.serving import export_graphs

    model_file = {"saved_model": ".", "onnx": ONNX_FILE, "tflite": TFLITE_FILE}[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # renamed into place when done
    try:
        written = export_graphs.write_export(source, fmt, quantize, scratch, model_file)
        description = {
            "format": fmt, "quantize": quantize, "model": model_file, "source": str(model),
            "inputs": {"audio": "float32 [B, N] samples at sample_rate, zero-padded",
                       "audio_length": "int32 [B] true sample counts"},
            "outputs": {"logits": "float32 [B, T', V], CTC blank = 0, label i + 1 = alphabet symbol i",
                        "logit_length": "int32 [B] valid logit frames"},
            "signatures": {"saved_model": ["serving_default", "transcribe"], "tflite": ["serving_default"]}.get(fmt, []),
            **written,
        }
        (scratch / "export.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        scratch.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def describe(out: Path) -> str:
    """Size of an export folder, for the command line."""
    size = sum(path.stat().st_size for path in Path(out).rglob("*") if path.is_file())
    return f"{size / 1e6:.2f} MB"
