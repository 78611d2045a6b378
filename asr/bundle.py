"""The model bundle ``.bin``: a zip archive holding everything needed to transcribe.

Entries: ``model.keras`` (Keras 3 native format, loaded with ``safe_mode=True``),
``configuration.yaml`` (the resolved training configuration), ``alphabet.txt`` (Mozilla
DeepSpeech format), ``metadata.json`` (format, versions, creation time, metrics) and an optional
language model under ``lm/``. No pickle anywhere. Writing is atomic (temporary file + rename);
reading refuses entries outside the archive root and says clearly when a file is truncated,
not a zip, foreign, or missing an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import posixpath
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from asr.errors import UserError
from asr.text import Alphabet

FORMAT = "asr-model-bundle"
FORMAT_VERSION = 1
MODEL_ENTRY = "model.keras"
CONFIGURATION_ENTRY = "configuration.yaml"
ALPHABET_ENTRY = "alphabet.txt"
METADATA_ENTRY = "metadata.json"
LM_FOLDER = "lm/"
REQUIRED_ENTRIES = (MODEL_ENTRY, CONFIGURATION_ENTRY, ALPHABET_ENTRY, METADATA_ENTRY)


@dataclass
class Bundle:
    """What a bundle holds, loaded."""

    model: Any  # keras.Model
    configuration: DictConfig
    alphabet: Alphabet
    metadata: dict = field(default_factory=dict)
    language_model: Path | None = None  # extracted LM file, if the bundle has one


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    import asr

    return {"asr": asr.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}


def save_bundle(path: str | Path, model: Any, configuration: DictConfig, alphabet: Alphabet,
                metrics: dict | None = None, language_model: str | Path | None = None) -> Path:
    """Write the bundle atomically; returns its path. ``language_model`` is copied into ``lm/``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    configuration = OmegaConf.create(OmegaConf.to_container(configuration, resolve=True))
    lm_entry = None
    if language_model:
        language_model = Path(language_model)
        if not language_model.is_file():
            raise UserError(f"language model not found: {language_model}")
        lm_entry = LM_FOLDER + language_model.name
        configuration.decoder.lm_path = lm_entry
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "metrics": metrics or {},
                "model": {"name": configuration.model.name, "parameters": int(model.count_params())}}
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=path.parent) as scratch:
        model_file = Path(scratch) / MODEL_ENTRY
        model.save(model_file)
        temporary = Path(scratch) / (path.name + ".tmp")
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(model_file, MODEL_ENTRY)
            archive.writestr(CONFIGURATION_ENTRY, OmegaConf.to_yaml(configuration))
            archive.writestr(ALPHABET_ENTRY, alphabet.to_string())
            archive.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2, default=str))
            if lm_entry:
                archive.write(language_model, lm_entry)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    return path


def _check_entries(path: Path, archive: zipfile.ZipFile) -> list[str]:
    names = archive.namelist()
    for name in names:
        normalised = posixpath.normpath(name.replace("\\", "/"))
        if (name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or normalised == ".."
                or normalised.startswith("../")):
            raise UserError(f"{path}: refusing entry {name!r} outside the archive root")
    foreign = [name for name in names if name not in REQUIRED_ENTRIES and not name.startswith(LM_FOLDER)]
    missing = [name for name in REQUIRED_ENTRIES if name not in names]
    if missing:
        raise UserError(f"{path}: not a model bundle: missing {', '.join(missing)}"
                        + (f" (found {', '.join(names[:5])})" if names else " (empty archive)"))
    if foreign:
        raise UserError(f"{path}: not a model bundle: unexpected entries {', '.join(foreign[:5])}")
    return names


def _lm_cache_dir() -> Path:
    return Path(os.environ.get("ASR_CACHE_DIR", Path.home() / ".cache" / "asr")) / "lm"


def load_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle; the model is loaded with ``safe_mode=True``."""
    import keras

    import asr.models  # noqa: F401  (registers the custom layers)

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model bundle not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a model bundle (not a zip archive, or truncated)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = _check_entries(path, archive)
            broken = archive.testzip()
            if broken is not None:
                raise UserError(f"{path}: corrupt model bundle (bad checksum in {broken})")
            metadata = json.loads(archive.read(METADATA_ENTRY))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
                raise UserError(f"{path}: not a model bundle (metadata.json has no format {FORMAT!r})")
            if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
                raise UserError(f"{path}: bundle format {metadata['format_version']} is newer than this "
                                f"asr supports ({FORMAT_VERSION}); upgrade asr")
            configuration = OmegaConf.create(archive.read(CONFIGURATION_ENTRY).decode("utf-8"))
            alphabet = Alphabet.from_string(archive.read(ALPHABET_ENTRY).decode("utf-8"), f"{path}:{ALPHABET_ENTRY}")
            language_model = None
            lm_entries = [name for name in names if name.startswith(LM_FOLDER) and not name.endswith("/")]
            if lm_entries:
                data = archive.read(lm_entries[0])
                target = _lm_cache_dir() / hashlib.sha256(data).hexdigest()[:16] / posixpath.basename(lm_entries[0])
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    scratch = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
                    scratch.write_bytes(data)
                    os.replace(scratch, target)
                language_model = target
            with tempfile.TemporaryDirectory(prefix="asr-bundle-") as scratch_dir:
                model_file = Path(scratch_dir) / MODEL_ENTRY
                model_file.write_bytes(archive.read(MODEL_ENTRY))
                try:
                    model = keras.saving.load_model(model_file, compile=False, safe_mode=True)
                except Exception as error:
                    raise UserError(f"{path}: cannot load {MODEL_ENTRY}: {str(error).splitlines()[0]}") from None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
        raise UserError(f"{path}: corrupt or truncated model bundle ({error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: corrupt model bundle ({type(error).__name__})") from None
    from asr.configuration import validate

    return Bundle(model, validate(configuration), alphabet, metadata, language_model)
