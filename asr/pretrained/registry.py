"""Model names: where a name such as ``en`` is looked for, and which models are installed.

A bare name resolves, in this order, to the first bundle found:

1. ``asr/pretrained/<name>.bin``, shipped in the package (installed with the wheel);
2. ``~/.cache/asr/models/<name>.bin``;
3. ``$ASR_MODELS_DIR/<name>.bin`` when the variable is set;
4. ``<name>`` as a path relative to the current folder.

An MLflow URI (``models:/asr-en/3``, ``models:/asr-en@champion``, ``runs:/<run_id>/model``) is
downloaded from the tracking store into ``~/.cache/asr/mlflow/`` first (:mod:`asr.serving.mlflow_uri`).
A value with a folder in it (``experiments/1/model.bin``, ``~/m.bin``, ``/abs/m.bin``) is only
ever a path. :func:`resolve_model_path` is the one resolver: ``load_model``, ``asr transcribe``,
``asr evaluate``, ``asr lm tune`` and ``trainer.init_from`` all go through it.

Listing reads each bundle's ``metadata.json`` and ``configuration.yaml`` straight from the zip,
so ``asr models list`` needs no TensorFlow unless a bundle's metadata lacks its parameter count.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asr.bundle import ALPHABET_ENTRY, CONFIGURATION_ENTRY, FORMAT, LM_FOLDER, METADATA_ENTRY, load_bundle
from asr.errors import UserError
from asr.serving.mlflow_uri import fetch_bundle
from asr.text import Alphabet

MODELS_DIR_VARIABLE = "ASR_MODELS_DIR"
PACKAGE_FOLDER = Path(__file__).resolve().parent
BUNDLE_SUFFIX = ".bin"


@dataclass(frozen=True)
class ModelFolder:
    """A folder searched for ``<name>.bin``; ``where`` is its short label in listings."""

    where: str
    path: Path


def cache_folder() -> Path:
    return Path.home() / ".cache" / "asr" / "models"


def model_folders() -> list[ModelFolder]:
    """The folders searched for a bare name, in resolution order."""
    folders = [ModelFolder("package", PACKAGE_FOLDER), ModelFolder("cache", cache_folder())]
    if os.environ.get(MODELS_DIR_VARIABLE):
        folders.append(ModelFolder(f"${MODELS_DIR_VARIABLE}", Path(os.environ[MODELS_DIR_VARIABLE]).expanduser()))
    return folders


def bundle_filename(name: str) -> str:
    return name if name.endswith(BUNDLE_SUFFIX) else name + BUNDLE_SUFFIX


def search_paths(name: str) -> list[Path]:
    """Where the bare name ``name`` is looked for in the model folders, in order (the path itself comes last)."""
    return [folder.path / bundle_filename(name) for folder in model_folders()]


def is_bare_name(value: str) -> bool:
    """``en`` or ``model.bin`` is a name (looked up in the folders first); anything with a folder is a path."""
    return len(Path(value).parts) == 1 and not value.startswith(("~", "/", "\\")) and value not in (".", "..")


def resolve_model_path(path_or_name: str | Path) -> Path:
    """The bundle that a model name or path stands for; a ``UserError`` listing where it looked otherwise."""
    text = str(path_or_name)
    if not text.strip():
        raise UserError("empty model name: give a name (see `asr models list`) or a bundle path")
    if text.startswith(("models:/", "runs:/")):  # MLflow's registry or a run: downloaded into a cache
        return fetch_bundle(text)
    if not is_bare_name(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f"model bundle not found: {path}")
        return path
    candidates = [*search_paths(text), Path(text)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(candidate) for candidate in candidates[:-1]) + f", ./{text}"
    hint = "" if os.environ.get(MODELS_DIR_VARIABLE) else f"; set {MODELS_DIR_VARIABLE} to add a folder"
    raise UserError(f"no model named {text!r}; looked in {looked} (`asr models list` shows what is installed{hint})")


# ----- what a bundle says about itself, read without TensorFlow --------------------------------------
@dataclass
class BundleHeader:
    """The small entries of a bundle: enough to list it or to check it fits a configuration."""

    metadata: dict
    configuration: Any  # DictConfig
    alphabet: Alphabet
    entries: list[str]


def read_bundle_header(path: Path) -> BundleHeader:
    """``metadata.json``, ``configuration.yaml`` and ``alphabet.txt`` of a bundle, straight from the zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(METADATA_ENTRY))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
                raise UserError(f"{path}: not a model bundle (metadata.json has no format {FORMAT!r})")
            configuration = OmegaConf.create(archive.read(CONFIGURATION_ENTRY).decode("utf-8"))
            alphabet = Alphabet.from_string(archive.read(ALPHABET_ENTRY).decode("utf-8"), f"{path}:{ALPHABET_ENTRY}")
            return BundleHeader(metadata, configuration, alphabet, archive.namelist())
    except (zipfile.BadZipFile, KeyError, EOFError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError,
            OSError) as error:
        detail = str(error).splitlines()[0] if str(error) else ""
        raise UserError(f"{path}: not a readable model bundle ({type(error).__name__}"
                        f"{': ' + detail if detail else ''})") from None


def _symbols(symbols: list[str]) -> str:
    return "".join("␣" if symbol == " " else symbol for symbol in symbols) or "none"


def check_same_alphabet(model_alphabet: Alphabet, model_source: str, configured: Alphabet,
                        configured_source: str) -> None:
    """A model's outputs are its alphabet's symbols: training it on another alphabet's labels is refused."""
    if model_alphabet == configured:
        return
    only_model = [symbol for symbol in model_alphabet.symbols if symbol not in configured.symbols]
    only_configured = [symbol for symbol in configured.symbols if symbol not in model_alphabet.symbols]
    difference = (f"only in the model: {_symbols(only_model)}; only in the configuration: {_symbols(only_configured)}"
                  if only_model or only_configured else "the same symbols in another order")
    raise UserError(f"{model_source} has a {len(model_alphabet)}-symbol alphabet but {configured_source} has "
                    f"{len(configured)} ({difference}): train with the model's alphabet (its alphabet.txt)")


def check_same_features(model_features: Any, model_source: str, configured: Any) -> None:
    """Pre-trained weights only make sense on the features they were trained on."""
    theirs = OmegaConf.to_container(model_features, resolve=True) if model_features is not None else {}
    ours = OmegaConf.to_container(configured, resolve=True)
    different = [f"features.{key}={theirs[key]!r} there, {ours[key]!r} here" for key in sorted(theirs)
                 if key in ours and theirs[key] != ours[key]]
    if different:
        raise UserError(f"{model_source} was trained on other features ({'; '.join(different)}): "
                        f"set the configuration's features to the model's")


def check_init_from(config: Any, alphabet: Alphabet | None = None) -> Path:
    """The bundle ``trainer.init_from`` names, checked for alphabet (default: the configured one) and features.

    The weights are checked when they are loaded (that needs TensorFlow): ``asr.training.loop.load_pretrained``.
    """
    init_from = str(config.trainer.init_from)
    if alphabet is None:
        alphabet = Alphabet.from_file(config.data.alphabet) if config.data.alphabet else Alphabet.default()
    try:
        path = resolve_model_path(init_from)
        header = read_bundle_header(path)
    except UserError as error:
        raise UserError(f"trainer.init_from={init_from!r}: {error}") from None
    label = f"trainer.init_from={init_from!r} ({path})"
    configured = f"data.alphabet={config.data.alphabet}" if config.data.alphabet else "the built-in alphabet"
    check_same_alphabet(header.alphabet, label, alphabet, f"the configuration ({configured})")
    check_same_features(header.configuration.get("features"), label, config.features)
    return path


# ----- listing ---------------------------------------------------------------------------------------
@dataclass
class InstalledModel:
    """One bundle found in a model folder, described from its metadata."""

    name: str
    where: str
    path: str
    size_mb: float
    parameters: int | None = None
    architecture: str | None = None
    decoder: str | None = None
    language_model: bool = False
    created: str | None = None
    metrics: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)  # how the test metrics were measured: decoder, manifest
    card: str | None = None  # a model card ``<name>.md`` next to the bundle
    shadowed_by: str | None = None  # an earlier folder holds the same name: load_model(name) takes that one
    error: str | None = None  # not a readable bundle: why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count_parameters(path: Path) -> int:
    """Parameters of a bundle whose metadata does not record them: load its Keras model."""
    return int(load_bundle(path).model.count_params())


def describe_bundle(path: Path, where: str) -> InstalledModel:
    """What ``asr models list`` shows of one bundle; an unreadable file is described by ``error``."""
    card = path.with_suffix(".md")
    entry = InstalledModel(name=path.stem, where=where, path=str(path), size_mb=round(path.stat().st_size / 1e6, 2),
                           card=str(card) if card.is_file() else None)
    try:
        header = read_bundle_header(path)
    except UserError as error:
        entry.error = str(error).removeprefix(f"{path}: ")
        return entry
    metadata, configuration, names = header.metadata, header.configuration, header.entries
    model = metadata.get("model") if isinstance(metadata.get("model"), dict) else {}
    entry.architecture = model.get("name") or OmegaConf.select(configuration, "model.name")
    entry.parameters = model.get("parameters")
    entry.decoder = OmegaConf.select(configuration, "decoder.name")
    entry.language_model = any(name.startswith(LM_FOLDER) and not name.endswith("/") for name in names)
    entry.created = metadata.get("created")
    entry.metrics = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
    entry.test = metadata.get("test") if isinstance(metadata.get("test"), dict) else {}
    if entry.parameters is None:  # older bundles: count them the slow way
        try:
            entry.parameters = _count_parameters(path)
        except UserError as error:
            entry.error = str(error)
    return entry


def installed_models() -> list[InstalledModel]:
    """Every ``*.bin`` in the model folders, in resolution order; later copies of a name are marked shadowed."""
    found: list[InstalledModel] = []
    first_of: dict[str, str] = {}
    seen_folders: set[Path] = set()
    for folder in model_folders():
        resolved = folder.path.resolve()
        if resolved in seen_folders or not folder.path.is_dir():
            continue  # $ASR_MODELS_DIR may be the cache folder itself
        seen_folders.add(resolved)
        for path in sorted(folder.path.glob("*" + BUNDLE_SUFFIX)):
            if not path.is_file():
                continue
            entry = describe_bundle(path, folder.where)
            if entry.name in first_of:
                entry.shadowed_by = first_of[entry.name]
            else:
                first_of[entry.name] = entry.path
            found.append(entry)
    return found


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else ""


def print_models(models: list[InstalledModel], folders: list[ModelFolder]) -> None:
    """A rich table of ``models``, the folders as its caption; text from files and names is escaped."""
    caption = "; ".join(f"{escape(folder.where)}: {escape(str(folder.path))}" for folder in folders)
    # the figures: the bundle's test split, from its training run or a later `asr evaluate --record`
    table = Table(title="installed models (WER, CER: the bundle's test figures, decoded as 'tested' says; load one "
                        "as asr.load_model(NAME), --model NAME, trainer.init_from=NAME)",
                  caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column, justify in (("name", "left"), ("where", "left"), ("MB", "right"), ("params", "right"),
                            ("model", "left"), ("decoder", "left"), ("WER", "right"), ("CER", "right"),
                            ("tested", "left")):
        table.add_column(column, justify=justify, overflow="fold", no_wrap=column in ("MB", "params", "WER", "CER"))
    for entry in models:
        name = escape(entry.name) + (" [dim](shadowed)[/dim]" if entry.shadowed_by else "")
        size = f"{entry.size_mb:.2f}" if entry.size_mb < 10 else f"{entry.size_mb:.0f}"
        if entry.error:
            table.add_row(name, escape(entry.where), size, "", "[red]" + escape(entry.error) + "[/red]", "", "", "", "")
            continue
        decoder = (entry.decoder or "") + (" + LM" if entry.language_model and entry.decoder != "beam_lm" else "")
        table.add_row(name, escape(entry.where), size,
                      f"{entry.parameters:,}" if entry.parameters is not None else "?",
                      escape(entry.architecture or ""), escape(decoder),
                      _percent(entry.metrics.get("test_wer")), _percent(entry.metrics.get("test_cer")),
                      escape(str(entry.test.get("decoder", "?"))) if entry.metrics.get("test_wer") is not None else "")
    Console(soft_wrap=False).print(table)


def list_main(as_json: bool = False) -> list[InstalledModel]:
    """``asr models list``: the table (or JSON) of installed models, and where they were looked for."""
    models = installed_models()
    folders = model_folders()
    if as_json:
        document = {"folders": [{"where": folder.where, "path": str(folder.path)} for folder in folders],
                    "models": [entry.to_dict() for entry in models]}
        print(json.dumps(document, indent=2, default=str))
        return models
    if not models:
        print("no models installed; looked in " + ", ".join(f"{folder.path} ({folder.where})" for folder in folders)
              + f" (copy a bundle to {cache_folder()}/NAME.bin, or set {MODELS_DIR_VARIABLE})")
        return models
    print_models(models, folders)
    return models
