"""A model bundle as an MLflow Model: a ``pyfunc`` flavour written as "models from code".

    runs:/<run_id>/model  ->  mlflow.pyfunc.load_model(...).predict(pd.DataFrame({"audio": [...]}))
    mlflow models serve -m runs:/<run_id>/model --env-manager local

The MLflow Model holds the bundle (``model.bin``) as its artifact ``bundle`` and the small code
file ``asr/serving/mlflow_model.py``, which builds :class:`AsrPyfuncModel`; nothing is pickled. Loading
it needs the ``asr`` package installed where it is loaded (``--env-manager local``).

Input: a DataFrame with a column ``audio`` (str: a file path, or base64-encoded WAV/FLAC/OGG bytes)
and optionally ``decoder`` (greedy, beam, beam_lm; empty: the bundle's decoder). Output: one
transcript per row. A bad row (missing file, not audio, unknown decoder) fails the whole request
with an ``MlflowException`` (INVALID_PARAMETER_VALUE: HTTP 400 when served) naming the row.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import tempfile
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import soundfile
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from asr.audio.features import file_features, load_audio
from asr.decoding.decoders import Decoder
from asr.errors import UserError
from asr.inference import decode_logits, logits_of_features
from asr.pipeline import Pipeline, load_model

MODEL_NAME = "model"  # the MLflow Model's name in its run: runs:/<run_id>/model
BUNDLE_ARTIFACT = "bundle"
AUDIO_COLUMN = "audio"
DECODER_COLUMN = "decoder"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# Magic numbers of the containers accepted as base64 bytes: WAV (RIFF), FLAC, OGG.
AUDIO_MAGIC = {b"RIFF": ".wav", b"fLaC": ".flac", b"OggS": ".ogg"}
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", AUDIO_COLUMN), ColSpec("string", DECODER_COLUMN, required=False)]),
    outputs=Schema([ColSpec("string")]),
)


def bad_input(message: str) -> MlflowException:
    """A user's mistake in a request: HTTP 400 when served, one line."""
    return MlflowException.invalid_parameter_value(message.splitlines()[0] if message else "bad input")


def _base64_audio(value: str) -> tuple[bytes, str] | None:
    """``(bytes, suffix)`` when ``value`` is base64 of a WAV/FLAC/OGG file, else None (then it is a path)."""
    text = "".join(value.split())
    if len(text) < 16 or len(text) % 4 or not _BASE64.match(text):
        return None  # a path has dots, slashes at odd places or a length base64 never has
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    suffix = AUDIO_MAGIC.get(data[:4])
    return (data, suffix) if suffix else None


def audio_file(value: Any, row: int, scratch: Path) -> Path:
    """The file a row's ``audio`` stands for: its path, or its base64 bytes written into ``scratch``."""
    if isinstance(value, (bytes, bytearray)):  # raw bytes (a binary column), e.g. from a Python caller
        suffix = AUDIO_MAGIC.get(bytes(value[:4]))
        if suffix is None:
            raise bad_input(f"row {row}: audio bytes are not WAV, FLAC or OGG")
        path = scratch / f"row{row}{suffix}"
        path.write_bytes(bytes(value))
        return path
    if not isinstance(value, str) or not value.strip():
        raise bad_input(f"row {row}: audio must be a file path or base64-encoded WAV/FLAC bytes, "
                        f"got {type(value).__name__ if not isinstance(value, str) else 'an empty string'}")
    decoded = _base64_audio(value)
    if decoded is not None:
        data, suffix = decoded
        path = scratch / f"row{row}{suffix}"
        path.write_bytes(data)
        return path
    path = Path(value.strip()).expanduser()
    if not path.is_file():
        shown = value if len(value) <= 200 else value[:200] + "..."
        raise bad_input(f"row {row}: audio file not found: {shown} (give a path on the server or base64 "
                        "WAV/FLAC bytes)")
    return path


def _column(frame: Any, name: str) -> list[Any] | None:
    if name not in frame.columns:
        return None
    return [None if _missing(value) else value for value in frame[name].tolist()]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str)
                                                                               and not value.strip())


def as_frame(model_input: Any) -> pd.DataFrame:
    """A DataFrame from what ``predict`` may be given: a DataFrame, a dict of columns, a list of rows or paths."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame({key: value if isinstance(value, (list, tuple, np.ndarray)) else [value]
                             for key, value in model_input.items()})
    if isinstance(model_input, (list, tuple)):
        if all(isinstance(item, str) for item in model_input):
            return pd.DataFrame({AUDIO_COLUMN: list(model_input)})
        return pd.DataFrame(list(model_input))
    raise bad_input(f"input must be a table with a column {AUDIO_COLUMN!r}, got {type(model_input).__name__}")


class Transcriber:
    """A loaded pipeline answering DataFrames: features per row, then :mod:`asr.inference`; one decoder per name."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._decoders: dict[str | None, Decoder] = {}
        self._lock = threading.Lock()  # the scoring server calls predict from several threads

    def decoder(self, name: str | None, row: int) -> Decoder:
        if name not in self._decoders:
            try:  # no worker processes inside a server; a decoder (and its LM) is built once per name
                self._decoders[name] = self.pipeline.decoder(name, workers=1)
            except UserError as error:  # an unknown name, beam_lm without an LM
                raise bad_input(f"row {row}: {error}") from None
        return self._decoders[name]

    def __call__(self, model_input: Any) -> list[str]:
        frame = as_frame(model_input)
        audio = _column(frame, AUDIO_COLUMN)
        if audio is None:
            raise bad_input(f"input has no column {AUDIO_COLUMN!r} (columns: {', '.join(map(str, frame.columns))})")
        names = _column(frame, DECODER_COLUMN) or [None] * len(audio)
        if not audio:
            return []
        with tempfile.TemporaryDirectory(prefix="asr-serve-") as scratch, self._lock:
            decoders = {name: self.decoder(name, names.index(name)) for name in names}  # bad names fail first
            features = [self._features(value, row, Path(scratch)) for row, value in enumerate(audio)]
            logits = logits_of_features(self.pipeline.model, self.pipeline.configuration.model, features)
            texts: list[str] = [""] * len(audio)
            for name, decoder in decoders.items():
                rows = [row for row, chosen in enumerate(names) if chosen == name]
                for row, text in zip(rows, decode_logits(decoder, [logits[row] for row in rows])):
                    texts[row] = text
        return texts

    def _features(self, value: Any, row: int, scratch: Path) -> np.ndarray:
        path = audio_file(value, row, scratch)
        try:
            return file_features(path, self.pipeline.configuration.features)
        except UserError as error:
            message = str(error).replace(str(path), "the base64 audio") if path.parent == scratch else str(error)
            raise bad_input(f"row {row}: {message}") from None


class AsrPyfuncModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: loads the bundle artifact, transcribes a DataFrame's ``audio`` column."""

    def load_context(self, context: Any) -> None:
        self.transcriber = Transcriber(load_model(context.artifacts[BUNDLE_ARTIFACT]))

    # A DataFrame hint: MLflow infers no schema from it (the signature is explicit) and stops warning
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None):  # noqa: ANN201
        return self.transcriber(model_input)


def input_example(audio: str | Path | None = None) -> Any:
    """A one-row example: ``audio`` (up to 2 s of it) as base64 WAV, so the example travels with the model."""

    rate = 16000
    signal = np.zeros(rate // 2, dtype=np.float32)
    if audio is not None:
        try:
            signal = load_audio(audio, rate)[: 2 * rate]
        except UserError:
            pass  # the silent example still shows the format
    buffer = io.BytesIO()
    soundfile.write(buffer, signal, rate, format="WAV", subtype="PCM_16")
    return pd.DataFrame({AUDIO_COLUMN: [base64.b64encode(buffer.getvalue()).decode("ascii")]})


def pip_requirements() -> list[str]:
    """What loading the model needs besides ``asr`` itself (not on PyPI: serve with ``--env-manager local``)."""

    found = []
    for package in ("mlflow", "tensorflow", "keras", "numpy", "pandas", "librosa", "soundfile", "omegaconf",
                    "pyctcdecode"):
        try:
            found.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pass
    return found


def log_model(bundle: str | Path, run_id: str, example_audio: str | Path | None = None,
              tracking_uri: str | None = None) -> Any:
    """Log ``bundle`` as the MLflow Model ``model`` of the existing run ``run_id``; returns its ``ModelInfo``.

    Uses ``Model.log(run_id=...)`` rather than ``mlflow.pyfunc.log_model`` inside ``start_run``:
    the run belongs to the queue, and leaving a ``start_run`` block would end it.
    """
    bundle = Path(bundle)
    if not bundle.is_file():
        raise UserError(f"model bundle not found: {bundle}")
    previous = mlflow.get_tracking_uri()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        # The logged model must live in the run's experiment (Model.log alone would use the active one)
        experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
        logged = mlflow.initialize_logged_model(name=MODEL_NAME, source_run_id=run_id, experiment_id=experiment_id)
        return Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id,
                         model_id=logged.model_id, python_model=str(MODEL_CODE),
                         artifacts={BUNDLE_ARTIFACT: str(bundle)}, signature=SIGNATURE,
                         input_example=input_example(example_audio), pip_requirements=pip_requirements())
    finally:
        if tracking_uri:
            mlflow.set_tracking_uri(previous)
