"""Experiment specs: a base config plus Hydra overrides, composed by the job's own Hydra app.

expctl never imports the app: child processes (``expctl.specs.compose_child``, a few per command, each
composing many specs) run the app as ``python -m APP ... OVERRIDES --cfg job`` would, which prints
the composed job config (validated by the app's typed schema) without running the task. Sweep overrides (``a=1,2``, ``b=[256],[512]``, ``range(...)``) are expanded
with Hydra's own override parser and BasicSweeper into one spec per combination.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from expctl.errors import UserError

DEFAULT_APP = "asr.train"
COMPOSE_TIMEOUT_S = 600
COMPOSE_TIMEOUT_PER_SPEC_S = 10
SPECS_PER_COMPOSER = 8  # fewer specs than this per child are not worth another app start-up
# Overrides travel on the app's command line, where Linux caps one argument at 128 KiB and all of
# them at ~2 MB ("Argument list too long"): refuse bigger ones at enqueue with a clear line.
MAX_OVERRIDE_BYTES = 100_000
MAX_SPEC_BYTES = 1_000_000
MAX_APP_CHARS = 200
_YAML_SUFFIXES = (".yaml", ".yml")
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Spec:
    """One job's spec: which app, which base config, which (non-sweep) overrides."""

    app: str
    base: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComposedSpec:
    """A spec with its frozen config and the config's hash."""

    spec: Spec
    config_yaml: str
    config_hash: str
    config: dict = field(default_factory=dict, compare=False, repr=False)  # config_yaml as data


@dataclass
class SweepPlan:
    """What a user's spec expands into: the specs, and whether it was a sweep."""

    app: str
    base: str
    overrides: list[str]
    specs: list[Spec] = field(default_factory=list)
    is_sweep: bool = False


def config_hash(app: str, config_yaml: str) -> str:
    """sha256 of the app name and the frozen config (what makes two jobs duplicates)."""
    return hashlib.sha256(f"{app}\n{config_yaml}".encode()).hexdigest()


def validate_app(app: str) -> str:
    """A module path such as ``asr.train`` (dotted identifiers only: it goes on a command line)."""
    parts = app.split(".")
    if len(app) > MAX_APP_CHARS:
        raise UserError(f"bad --app {app[:40]!r}...: longer than {MAX_APP_CHARS} characters")
    if not app or not all(part.isidentifier() for part in parts):
        raise UserError(f"bad --app {app!r}: expected a Python module path such as asr.train")
    return app


def base_arguments(base: str) -> list[str]:
    """Hydra arguments that select the base config: a config name, or a YAML file's folder and stem."""
    if not base.strip():
        raise UserError("the base config is empty: give a config name (e.g. config) or a YAML file")
    looks_like_path = base.endswith(_YAML_SUFFIXES) or os.sep in base
    if not looks_like_path:
        return ["--config-name", base]
    path = Path(base)
    if not path.is_file():
        raise UserError(f"base config {base!r}: no such YAML file")
    if not os.access(path, os.R_OK):
        raise UserError(f"base config {base!r}: file is not readable")
    stem = path.name
    for suffix in _YAML_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    # --config-path (not --config-dir): the file's folder replaces the app's own config folder, so
    # a file named like the app's primary config (config.yaml) cannot be shadowed by it; groups
    # are looked up next to the file (conf/config.yaml sees conf/model/..., as Hydra would).
    return ["--config-path", str(path.resolve().parent), "--config-name", stem]


def check_sizes(base: str, overrides: list[str] | tuple[str, ...]) -> None:
    """Refuse a base or override too long for a command line (UTF-8 bytes, as the kernel counts)."""
    total = 0
    for text in (base, *overrides):
        size = len(text.encode("utf-8", errors="surrogatepass"))
        total += size
        if size > MAX_OVERRIDE_BYTES:
            key = text.split("=", 1)[0][:40] if "=" in text[:200] else text[:40] + "..."
            raise UserError(f"{key!r} is {size:,} bytes long: a base or override may have at most "
                            f"{MAX_OVERRIDE_BYTES:,} (put big values in a file and pass its path)")
    if total > MAX_SPEC_BYTES:
        raise UserError(f"the spec is {total:,} bytes long: at most {MAX_SPEC_BYTES:,} fit on a command line")


# key=value with a dotted key and a value of letters, digits and ``_.-`` only, which Hydra would write back
# as typed (no keyword such as true/null/inf, numbers as Python prints them): Hydra reads such a value as
# one plain value (never a sweep, a function, a quote or a list), so its parser (~0.3 ms an override, the
# larger part of expanding and composing a 10,000-line queue file) is not needed. tests/expctl/
# test_expctl_cli.py checks the values and plans against Hydra's parser.
_PLAIN_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*=[A-Za-z0-9_.\-]*")
_NUMBER_LIKE = re.compile(r"-?[0-9_]*\.?[0-9_]*(?:[eE]-?[0-9_]+)?")
_KEYWORDS = frozenset({"true", "false", "null", "nan", "inf"})


def plain_value(override: str) -> tuple[str, Any] | None:
    """``(key, value)`` as Hydra's parser reads a plain ``key=value`` override (see above), else None."""
    if not _PLAIN_OVERRIDE.fullmatch(override):
        return None
    key, text = override.split("=", 1)
    if key.split(".", 1)[0] == "hydra" or text.lower().lstrip("-") in _KEYWORDS:
        return None
    value: Any = text
    if _NUMBER_LIKE.fullmatch(text):
        if re.fullmatch(r"0|-?[1-9][0-9]*", text):
            value = int(text)
        elif re.fullmatch(r"-?0[0-9]+", text):
            value = text  # 007: Hydra's grammar has no leading zeros, it is a string
        else:
            try:
                value = float(text)
            except ValueError:
                return None
            if str(value) != text:  # 1e-3, 1.10, .5, -0 are written back otherwise
                return None
    return key, value


def expand(app: str, base: str, overrides: list[str]) -> SweepPlan:
    """Expand sweep overrides into one Spec per combination (Hydra's parser and BasicSweeper)."""
    if all(plain_value(override) is not None for override in overrides):
        validate_app(app)
        check_sizes(base, overrides)
        plan = SweepPlan(app=app, base=base, overrides=list(overrides), is_sweep=False)
        plan.specs = [Spec(app=app, base=base, overrides=tuple(overrides))]
        return plan
    return expand_with_hydra(app, base, overrides)


def expand_with_hydra(app: str, base: str, overrides: list[str]) -> SweepPlan:
    """:func:`expand` through Hydra's override parser, whatever the overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    validate_app(app)
    check_sizes(base, overrides)
    for override in overrides:
        if override.startswith("-"):
            raise UserError(f"bad override {override!r}: Hydra flags are not overrides (expected key=value)")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
        is_sweep = any(override.is_sweep_override() for override in parsed)
        if any(override.value_type == ValueType.GLOB_CHOICE_SWEEP for override in parsed):
            raise UserError("glob() sweeps are not supported by expctl: list the choices (a=x,y)")
        for override in parsed:
            # --cfg job prints the job's config only: a hydra.* setting would vanish from the frozen
            # config without a word, so it is refused (the daemon sets Hydra's run dir itself).
            if override.is_hydra_override():
                raise UserError(f"bad override {override.input_line!r}: hydra.* settings are not part of the "
                                "job's frozen config, so they would be lost; set them in the app's config")
        batches = BasicSweeper.split_arguments(parsed, None)[0]
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(f"bad override: {_one_line(str(error))}") from None
    plan = SweepPlan(app=app, base=base, overrides=list(overrides), is_sweep=is_sweep)
    plan.specs = [Spec(app=app, base=base, overrides=tuple(batch)) for batch in batches]
    return plan


def compose(spec: Spec, *, cwd: str | None = None) -> ComposedSpec:
    """Compose ``spec`` with its app's Hydra (``--cfg job``); a refusal is a UserError with Hydra's message."""
    return compose_all([spec], cwd=cwd)[0]


def _composed(spec: Spec, code: int, stdout: str, stderr: str, loaded: Any = None) -> ComposedSpec:
    """The composed spec; ``loaded``: ``stdout`` as data when the child parsed it already."""
    if code != 0:
        raise UserError(f"{describe(spec)} refused: {_hydra_message(stderr or stdout)}")
    if loaded is None:
        try:
            loaded = yaml.load(stdout, Loader=_SAFE_LOADER)  # libyaml's when built in: ~10x faster
        except yaml.YAMLError as error:
            raise UserError(f"{describe(spec)}: the app printed no YAML config ({_one_line(str(error))})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{describe(spec)}: the app printed no config mapping (is {spec.app} a Hydra app?)")
    return ComposedSpec(spec=spec, config_yaml=stdout, config_hash=config_hash(spec.app, stdout), config=loaded)


class _Composer:
    """One ``python -m expctl.specs.compose_child`` process composing a chunk of specs of one app."""

    def __init__(self, app: str, chunk: list[tuple[int, Spec]], cwd: str | None) -> None:
        self.chunk = chunk
        self.request = json.dumps({"app": app, "specs": [
            [index, base_arguments(spec.base), list(spec.overrides)] for index, spec in chunk]})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "expctl.specs.compose_child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=cwd,
        )
        self.stdout = ""
        self.stderr = ""
        self.thread = threading.Thread(target=self._talk, daemon=True)
        self.thread.start()

    def _talk(self) -> None:
        try:
            self.stdout, self.stderr = self.process.communicate(self.request)
        except (OSError, ValueError):  # killed (Ctrl-C, timeout) while talking
            pass

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def results(self) -> dict[int, tuple[int, str, str, Any]]:
        found = {}
        for line in self.stdout.splitlines():
            try:
                item = json.loads(line)
                found[int(item["index"])] = (int(item["code"]), str(item["stdout"]), str(item["stderr"]),
                                             item.get("config"))
            except (ValueError, KeyError, TypeError):
                continue
        return found


def compose_all(specs: list[Spec], labels: list[str] | None = None,
                max_workers: int | None = None, cwd: str | None = None) -> list[ComposedSpec]:
    """Compose every spec, a few child processes per command (one per CPU at most, each composing many
    specs: the app's start-up is paid once per child, not once per job); the first refusal, in order,
    is raised, prefixed with its label (e.g. ``line 3``) when one is given. Ctrl-C stops the children."""
    labels = labels or [""] * len(specs)
    if not specs:
        return []
    by_app: dict[str, list[tuple[int, Spec]]] = {}
    for index, spec in enumerate(specs):
        by_app.setdefault(spec.app, []).append((index, spec))
    workers = max_workers or max(1, min(os.cpu_count() or 1, len(specs) // SPECS_PER_COMPOSER or 1))
    composers: list[_Composer] = []
    try:
        for app, items in by_app.items():
            count = max(1, min(workers, len(items) // SPECS_PER_COMPOSER or 1))
            for start in range(count):  # round robin: each child goes through its indices in order
                composers.append(_Composer(app, items[start::count], cwd))
        deadline = time.monotonic() + COMPOSE_TIMEOUT_S + COMPOSE_TIMEOUT_PER_SPEC_S * len(specs)
        for composer in composers:
            while composer.thread.is_alive():  # short joins, so that Ctrl-C is noticed at once
                composer.thread.join(0.1)
                if time.monotonic() > deadline:
                    raise UserError(f"composing {len(specs)} spec(s) took over "
                                    f"{COMPOSE_TIMEOUT_S + COMPOSE_TIMEOUT_PER_SPEC_S * len(specs):.0f} s")
    finally:
        for composer in composers:
            composer.kill()
    results: dict[int, tuple[int, str, str, Any]] = {}
    for composer in composers:
        found = composer.results()
        results.update(found)
        refused = [index for index, (code, *_rest) in found.items() if code != 0]
        missing = [index for index, _spec in composer.chunk if index not in found]
        if missing and not refused:  # the child died without a word for these (a crash)
            message = _hydra_message(composer.stderr) if composer.stderr.strip() else (
                f"the composer exited with {composer.process.returncode}")
            results[missing[0]] = (1, "", message, None)
    composed: list[ComposedSpec] = []
    for index, spec in enumerate(specs):
        if index not in results:
            continue  # after an earlier refusal in its child; a refusal before it is raised first
        try:
            composed.append(_composed(spec, *results[index]))
        except UserError as error:
            raise UserError(f"{labels[index]}: {error}" if labels[index] else str(error)) from None
    if len(composed) != len(specs):
        raise UserError("composing the specs failed: a composer stopped early")  # not reached: a refusal is raised
    return composed


_EXP_DIR_LINE = re.compile(r"^exp_dir:[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def explicit_exp_dir(config_yaml: str) -> str | None:
    """The frozen config's top-level ``exp_dir`` when it names a folder, else None (unset, or derived
    from Hydra's run dir, which the daemon points at the job's own folder).

    Only the top-level line is parsed (a full YAML parse per job would slow big sweeps down); an
    interpolation other than ``${hydra:...}`` is resolved against the whole config when it can be.
    """
    line = _EXP_DIR_LINE.search(config_yaml)
    if line is None:
        return None
    value = _scalar(line.group(1))
    if not isinstance(value, str) or not value.strip():
        return None
    if "${" in value:
        if "${hydra:" in value.replace(" ", ""):
            return None
        try:
            from omegaconf import OmegaConf

            value = OmegaConf.create(yaml.safe_load(config_yaml)).exp_dir
        except Exception:  # noqa: BLE001 - unresolvable here (a resolver of the app): not checked
            return None
        if not isinstance(value, str) or not value.strip() or "${" in value:
            return None
    return value


@functools.lru_cache(maxsize=1024)
def _scalar(text: str) -> object:
    """One YAML scalar (the same few exp_dir lines come back for every job of a sweep)."""
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError:
        return None


def with_exp_dir(composed: ComposedSpec, folder: str) -> ComposedSpec:
    """``composed`` with its top-level ``exp_dir`` set to ``folder`` (the override list says so too)."""
    line = yaml.safe_dump({"exp_dir": folder}, default_flow_style=False, allow_unicode=True, width=1 << 20).rstrip("\n")
    config_yaml, count = _EXP_DIR_LINE.subn(lambda _match: line, composed.config_yaml, count=1)
    if count != 1:
        raise UserError(f"{describe(composed.spec)}: the app's config has no top-level exp_dir to set")
    quoted = folder.replace("\\", "\\\\").replace("'", "\\'")
    overrides = tuple(override for override in composed.spec.overrides
                      if override.split("=", 1)[0].lstrip("+~") != "exp_dir") + (f"exp_dir='{quoted}'",)
    spec = Spec(app=composed.spec.app, base=composed.spec.base, overrides=overrides)
    return ComposedSpec(spec=spec, config_yaml=config_yaml, config_hash=config_hash(spec.app, config_yaml),
                        config={**composed.config, "exp_dir": folder})


def subfolder_names(override_lists: list[tuple[str, ...]]) -> list[str]:
    """Readable, distinct subfolder names for sweep jobs that share one exp_dir: ``<n>_<what differs>``,
    e.g. ``1_rnn_sizes=256`` (n counts from 1; the part after it only helps the eye)."""
    width = max((len(overrides) for overrides in override_lists), default=0)
    varying = [position for position in range(width)
               if len({overrides[position] if position < len(overrides) else None
                       for overrides in override_lists}) > 1]
    names = []
    for number, overrides in enumerate(override_lists, start=1):
        parts = []
        for position in varying:
            if position < len(overrides):
                key, _, value = overrides[position].partition("=")
                parts.append(f"{key.split('.')[-1].lstrip('+~')}={value}")
        slug = re.sub(r"[^A-Za-z0-9._=,-]+", "_", "_".join(parts).replace("[", "").replace("]", "")).strip("_.")
        names.append(f"{number}_{slug[:60]}" if slug else str(number))
    return names


def describe(spec: Spec) -> str:
    """``app base override...`` for messages."""
    return " ".join([spec.app, spec.base, *spec.overrides])


def default_name(base: str, overrides: tuple[str, ...] | list[str]) -> str:
    """A readable job name: the base's stem and the overrides."""
    stem = Path(base).name
    for suffix in _YAML_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    name = " ".join([stem, *overrides])
    return name if len(name) <= 200 else name[:197] + "..."


def _hydra_message(stderr: str) -> str:
    """Hydra's error in one line: drop the HYDRA_FULL_ERROR hint; for a crash, keep the last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    lines = [line for line in lines if "HYDRA_FULL_ERROR" not in line]
    if not lines:
        return "the app exited with an error and printed nothing"
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return _one_line(" ".join(lines))


def _one_line(message: str) -> str:
    text = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    return text if len(text) <= 600 else text[:597] + "..."
