"""The model bundle ``.bin``: a zip archive holding everything needed to transcribe.

Entries: ``model.keras`` (Keras 3 native format, loaded with ``safe_mode=True``),
``configuration.yaml`` (the resolved training configuration), ``alphabet.txt`` (Mozilla
DeepSpeech format), ``metadata.json`` (format, versions, creation time, metrics) and an optional
language model under ``lm/``. No pickle anywhere. Writing and updating are atomic (``asr.files``);
reading refuses entries outside the archive root and says clearly when a file is truncated,
not a zip, foreign, or missing an entry.

Zip bombs: before anything is inflated, each member's declared size and compression ratio are
checked (limits below, configurable by environment variables); members are then streamed, with
the byte count enforced while inflating, into a temporary folder that is removed whatever
happens. The cache of extracted language models keeps only the most recently used ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import posixpath
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import asr
from asr.configuration import validate
from asr.errors import UserError, first_line
from asr.files import atomic_path
from asr.text import Alphabet

FORMAT = "asr-model-bundle"
FORMAT_VERSION = 1
MODEL_ENTRY = "model.keras"
CONFIGURATION_ENTRY = "configuration.yaml"
ALPHABET_ENTRY = "alphabet.txt"
METADATA_ENTRY = "metadata.json"
LM_FOLDER = "lm/"
REQUIRED_ENTRIES = (MODEL_ENTRY, CONFIGURATION_ENTRY, ALPHABET_ENTRY, METADATA_ENTRY)
TEXT_ENTRIES = (CONFIGURATION_ENTRY, ALPHABET_ENTRY, METADATA_ENTRY)

MIB = 1024 * 1024
# Defaults of the limits; each can be changed by the environment variable in its comment.
MAX_MEMBER_MB = 200  # ASR_BUNDLE_MAX_MEMBER_MB: inflated size of one member (model.keras, an LM file)
MAX_TOTAL_MB = 1024  # ASR_BUNDLE_MAX_TOTAL_MB: inflated size of all members together
MAX_TEXT_MB = 10  # configuration.yaml, alphabet.txt, metadata.json are read into memory
MAX_RATIO = 200  # ASR_BUNDLE_MAX_RATIO: inflated / compressed size of a member ...
RATIO_MIN_BYTES = MIB  # ... checked for members over 1 MiB (tiny text files compress well, harmlessly)
LM_CACHE_KEEP = 4  # ASR_LM_CACHE_KEEP: extracted language models kept in the cache (most recently used)
_CHUNK = MIB


@dataclass
class Bundle:
    """What a bundle holds, loaded."""

    model: Any  # keras.Model
    configuration: DictConfig
    alphabet: Alphabet
    metadata: dict = field(default_factory=dict)
    language_model: Path | None = None  # extracted LM file, if the bundle has one


def _versions() -> dict[str, str]:
    import keras  # here and in _load_keras_model: reading or refusing a bundle's text never pays for TensorFlow
    import tensorflow as tf

    return {"asr": asr.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}


def save_bundle(path: str | Path, model: Any, configuration: DictConfig, alphabet: Alphabet,
                metrics: dict | None = None, language_model: str | Path | None = None,
                test: dict | None = None) -> Path:
    """Write the bundle atomically; returns its path. ``language_model`` is copied into ``lm/``; ``test``
    says how the test ``metrics`` were measured (``decoder``, ``manifest``)."""
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
                "model": {"name": configuration.model.name, "parameters": int(model.count_params())},
                **({"test": test} if test else {})}
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=path.parent) as scratch, atomic_path(path) as temporary:
        model_file = Path(scratch) / MODEL_ENTRY
        model.save(model_file)
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(model_file, MODEL_ENTRY)
            archive.writestr(CONFIGURATION_ENTRY, OmegaConf.to_yaml(configuration))
            archive.writestr(ALPHABET_ENTRY, alphabet.to_string())
            archive.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2, default=str))
            if lm_entry:
                archive.write(language_model, lm_entry)
    return path


def update_bundle(path: str | Path, decoder: dict | None = None, language_model: str | Path | None = None,
                  metadata: dict | None = None) -> None:
    """Rewrite a bundle atomically with new ``decoder`` settings, optionally ``language_model`` under ``lm/``
    (replacing the one there; ``decoder.lm_path`` then names its entry) and ``metadata``'s keys replacing
    those of ``metadata.json``. Other entries are copied
    unchanged, streamed, after the same checks as :func:`load_bundle` (entries, sizes)."""
    path = Path(path)
    if language_model is not None:
        language_model = Path(language_model)
        if not language_model.is_file():
            raise UserError(f"language model not found: {language_model}")
    _check_archive(path)
    with zipfile.ZipFile(path) as source:
        _check_entries(path, source)
        check_sizes(path, source)  # a bomb is refused before anything is inflated
        configuration = OmegaConf.create(_read_text_entry(source, CONFIGURATION_ENTRY).decode("utf-8"))
        configuration = OmegaConf.merge(configuration, {"decoder": decoder or {}})
        if language_model is not None:
            configuration.decoder.lm_path = LM_FOLDER + language_model.name
        rewritten = {CONFIGURATION_ENTRY: OmegaConf.to_yaml(configuration)}
        if metadata:
            merged = {**json.loads(_read_text_entry(source, METADATA_ENTRY)), **metadata}
            rewritten[METADATA_ENTRY] = json.dumps(merged, indent=2, default=str)
        mode = os.stat(path).st_mode & 0o777
        with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if language_model is not None and info.filename.startswith(LM_FOLDER):
                    continue
                if info.filename in rewritten:
                    target.writestr(info, rewritten[info.filename], compress_type=info.compress_type)
                    continue
                with source.open(info) as member, target.open(info, "w") as copy:
                    shutil.copyfileobj(member, copy, _CHUNK)
            if language_model is not None:
                target.write(language_model, LM_FOLDER + language_model.name)
            target.close()
            os.chmod(temporary, mode)


def _check_archive(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"model bundle not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a model bundle (not a zip archive, or truncated)")


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


def _limit(variable: str, default: int) -> int:
    value = os.environ.get(variable)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{variable}={value!r} is not a whole number") from None
    if number < 1:
        raise UserError(f"{variable}={value!r} must be at least 1")
    return number


def check_sizes(path: str | Path, archive: zipfile.ZipFile) -> None:
    """Refuse a bomb from the central directory alone, before a byte is inflated (call it before
    reading any member of a bundle: ``load_bundle`` does, and so must anything else that reads one)."""
    member_limit = _limit("ASR_BUNDLE_MAX_MEMBER_MB", MAX_MEMBER_MB) * MIB
    total_limit = _limit("ASR_BUNDLE_MAX_TOTAL_MB", MAX_TOTAL_MB) * MIB
    ratio_limit = _limit("ASR_BUNDLE_MAX_RATIO", MAX_RATIO)
    total = 0
    for info in archive.infolist():
        limit = MAX_TEXT_MB * MIB if info.filename in TEXT_ENTRIES else member_limit
        if info.file_size > limit:
            raise UserError(f"{path}: refusing {info.filename}: it inflates to {info.file_size / MIB:,.0f} MiB, "
                            f"over the limit of {limit // MIB:,} MiB (ASR_BUNDLE_MAX_MEMBER_MB)")
        if info.file_size > RATIO_MIN_BYTES and info.file_size > ratio_limit * max(info.compress_size, 1):
            raise UserError(f"{path}: refusing {info.filename}: compression ratio "
                            f"{info.file_size / max(info.compress_size, 1):,.0f} is over {ratio_limit} "
                            "(a zip bomb? ASR_BUNDLE_MAX_RATIO)")
        total += info.file_size
    if total > total_limit:
        raise UserError(f"{path}: refusing the bundle: it inflates to {total / MIB:,.0f} MiB, over the limit of "
                        f"{total_limit // MIB:,} MiB (ASR_BUNDLE_MAX_TOTAL_MB)")


def _read_text_entry(archive: zipfile.ZipFile, name: str) -> bytes:
    """A small entry, read with its size enforced while inflating (a header may lie)."""
    with archive.open(name) as member:
        data = member.read(MAX_TEXT_MB * MIB + 1)
    if len(data) > MAX_TEXT_MB * MIB:
        raise UserError(f"{archive.filename}: refusing {name}: larger than {MAX_TEXT_MB} MiB")
    return data


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, digest: Any = None) -> None:
    """Stream one member to ``target``, never writing more than it declared (zipfile checks the CRC at its end)."""
    written = 0
    with archive.open(info) as member, open(target, "xb") as out:
        while chunk := member.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise UserError(f"{archive.filename}: refusing {info.filename}: it inflates past its declared size")
            out.write(chunk)
            if digest is not None:
                digest.update(chunk)


def _cached_language_model(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Path:
    """Extract the LM into the cache (keyed by content), through a scratch folder removed on failure."""
    root = _lm_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))  # same filesystem: the rename is atomic
    try:
        digest = hashlib.sha256()
        extracted = scratch / posixpath.basename(info.filename)
        _extract(archive, info, extracted, digest)
        target = root / digest.hexdigest()[:16] / extracted.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(extracted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    os.utime(target.parent)  # most recently used
    _prune_lm_cache(root, keep=_limit("ASR_LM_CACHE_KEEP", LM_CACHE_KEEP), current=target.parent)
    return target


def _prune_lm_cache(root: Path, keep: int, current: Path) -> None:
    """Keep the ``keep`` most recently used language models; remove older ones and stale scratch folders."""
    entries = []
    for entry in root.iterdir():
        try:
            modified = entry.stat().st_mtime
        except OSError:
            continue
        if entry.name.startswith(".extract-"):
            if modified < time.time() - 3600:  # left by a killed process; a live extraction is younger
                shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry.is_dir() and entry != current:
            entries.append((modified, entry))
    for _modified, entry in sorted(entries, reverse=True)[max(0, keep - 1):]:
        shutil.rmtree(entry, ignore_errors=True)


def load_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle; the model is loaded with ``safe_mode=True``."""
    path = Path(path)
    _check_archive(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = _check_entries(path, archive)
            check_sizes(path, archive)  # before anything is inflated; CRCs are checked while reading
            metadata = json.loads(_read_text_entry(archive, METADATA_ENTRY))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
                raise UserError(f"{path}: not a model bundle (metadata.json has no format {FORMAT!r})")
            if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
                raise UserError(f"{path}: bundle format {metadata['format_version']} is newer than this "
                                f"asr supports ({FORMAT_VERSION}); upgrade asr")
            try:
                configuration = OmegaConf.create(_read_text_entry(archive, CONFIGURATION_ENTRY).decode("utf-8"))
            except (yaml.YAMLError, OmegaConfBaseException, ValueError) as error:
                raise UserError(f"{path}: corrupt {CONFIGURATION_ENTRY} ({first_line(error)})") from None
            alphabet = Alphabet.from_string(_read_text_entry(archive, ALPHABET_ENTRY).decode("utf-8"),
                                            f"{path}:{ALPHABET_ENTRY}")
            language_model = None
            lm_entries = [name for name in names if name.startswith(LM_FOLDER) and not name.endswith("/")]
            if lm_entries:
                language_model = _cached_language_model(path, archive, archive.getinfo(lm_entries[0]))
            with tempfile.TemporaryDirectory(prefix="asr-bundle-") as scratch_dir:  # removed on any failure
                model_file = Path(scratch_dir) / MODEL_ENTRY
                _extract(archive, archive.getinfo(MODEL_ENTRY), model_file)
                model = _load_keras_model(path, model_file)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, zlib.error) as error:
        raise UserError(f"{path}: corrupt or truncated model bundle ({error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: corrupt model bundle ({type(error).__name__})") from None
    except OSError as error:
        raise UserError(f"{path}: cannot extract the model bundle: {error.strerror or error}") from None
    return Bundle(model, validate(configuration), alphabet, metadata, language_model)


def _load_keras_model(path: Path, model_file: Path) -> Any:
    # Imported here: a bundle that is refused never pays for TensorFlow's start-up.
    import keras

    import asr.models.architectures  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(model_file, compile=False, safe_mode=True)
    except Exception as error:
        raise UserError(f"{path}: cannot load {MODEL_ENTRY}: {first_line(error)}") from None
