"""Compose many specs of one app in ONE process: ``python -m expctl.compose_child`` (run by expctl).

Reads ``{"app": ..., "specs": [[index, [base argument, ...], [override, ...]], ...]}`` as JSON on stdin and runs the app
once per spec exactly as ``python -m APP ARGUMENTS --cfg job`` would (``runpy``, ``__main__``), so
Hydra composes and validates each config with the app's own schema; the app's imports are paid
once instead of once per job. Writes one JSON line per spec, ``{"index", "code", "stdout",
"stderr", "path", "config"}`` (path: ``full`` or ``fast``, below; config: the printed YAML parsed, null
when it is not YAML, so that the parent reads JSON instead of parsing YAML), in order, and stops after the
first refusal (the parent reports the first one).
expctl itself never imports the app: this child does, as the app's own ``--cfg job`` run did.

Fast path (a 1,000-job sweep composes in seconds, not minutes): specs that differ from one already
composed only in plain value overrides (``key=value``, no ``+``/``~``/``@``, the key no config
group) reuse its composition. The first spec of each base and group selection runs as above; the
Hydra object that composed it (captured from its ``show_cfg``) composes that base once more without
the value overrides, and every such spec then gets a copy of that config with its value overrides
applied by Hydra's own ``_apply_overrides_to_config``, the step a full composition ends with, so
the printed config is the same. The first spec's two results are compared: if they differ (an app
doing something unusual), every spec of that base takes the full path. A refusal on the fast path
is replayed on the full path, so the user sees Hydra's own message.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import runpy
import sys
from typing import Any


_CAPTURED: dict[str, Any] = {}


def _capture_hydra() -> None:
    """Remember the Hydra object (and config name) of each ``--cfg job`` run of the app."""
    try:
        from hydra._internal.hydra import Hydra
    except ImportError:  # not a Hydra app: only the full path
        return
    if getattr(Hydra.show_cfg, "_expctl_spy", False):
        return
    original = Hydra.show_cfg

    def show_cfg(self: Any, config_name: Any, overrides: Any, cfg_type: Any, package: Any, resolve: bool = False) -> Any:
        _CAPTURED["hydra"], _CAPTURED["config_name"] = self, config_name
        _CAPTURED["plain"] = cfg_type == "job" and package is None and not resolve
        return original(self, config_name, overrides, cfg_type, package, resolve)

    show_cfg._expctl_spy = True  # type: ignore[attr-defined]
    Hydra.show_cfg = show_cfg  # type: ignore[method-assign]


class _FastPath:
    """Compositions reused across specs that differ only in value overrides (see the module docstring)."""

    def __init__(self) -> None:
        self.bases: dict[tuple, Any] = {}  # (base arguments, structural overrides) -> (hydra, job config) or None
        self.last_config: dict | None = None  # the last printed config as data, when known without parsing it
        self.groups: dict[int, tuple[Any, dict[str, bool]]] = {}  # per config repository: key -> is a group

    def _is_group(self, hydra: Any, key: str) -> bool:
        """Whether ``key`` names a config group (asked once per key: each question reads the disk)."""
        repository = hydra.config_loader.repository
        _kept, known = self.groups.setdefault(id(repository), (repository, {}))  # kept: its id stays its own
        if key not in known:
            known[key] = repository.group_exists(key) or repository.group_exists(key.replace(".", "/"))
        return known[key]

    def split(self, hydra: Any, overrides: list[str]) -> tuple[tuple[str, ...], list[Any]] | None:
        """(structural overrides as typed, parsed value overrides), or None when they cannot be parsed."""
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.core.override_parser.types import Override, OverrideType, ValueType

        from expctl.specs.compose import plain_value

        try:
            # plain key=value overrides are read without Hydra's (slow) parser, exactly as it reads them
            plains = {line: plain_value(line) for line in overrides}
            others = iter(OverridesParser.create().parse_overrides(
                overrides=[line for line in overrides if plains[line] is None]))
            parsed = [Override(type=OverrideType.CHANGE, key_or_group=plains[line][0], value_type=ValueType.ELEMENT,
                               _value=plains[line][1], input_line=line) if plains[line] is not None else next(others)
                      for line in overrides]
        except Exception:  # noqa: BLE001 - the full path reports it
            return None
        structural, values = [], []
        for override in parsed:
            key = override.key_or_group
            plain = (override.type == OverrideType.CHANGE and override.package is None and not override.is_sweep_override()
                     and not override.is_hydra_override() and "/" not in key and not self._is_group(hydra, key))
            (values if plain else structural).append(override)
        touched = {override.key_or_group for override in structural}
        for override in values:  # a key also set structurally: order matters, keep it on the full path
            key = override.key_or_group
            if any(key == other or key.startswith(other + ".") or other.startswith(key + ".") for other in touched):
                structural.append(override)
        values = [override for override in values if override not in structural]
        structural_lines = tuple(override.input_line for override in parsed if override in structural)
        return structural_lines, values

    def compose(self, base: tuple[str, ...], overrides: list[str]) -> str | None:
        """The printed config, or None when this spec needs the full path."""
        hydra = _CAPTURED.get("hydra")
        if hydra is None:
            return None
        split = self.split(hydra, overrides)
        if split is None:
            return None
        structural, values = split
        entry = self.bases.get((base, structural))
        if entry is None:
            return None
        printed = self._apply(entry, values)
        self.last_config = entry.last_config if isinstance(entry, _Composition) and printed is not None else None
        return printed

    @staticmethod
    def _apply(entry: Any, values: list[Any]) -> str | None:
        """The printed config of ``entry``'s composition with ``values`` applied (None: refused)."""
        if isinstance(entry, _Composition):
            return entry.apply(values)
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from omegaconf import OmegaConf

        config = copy.deepcopy(entry)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, config)
        except Exception:  # noqa: BLE001 - refused: the full path says why, in Hydra's words
            return None
        return OmegaConf.to_yaml(config)

    def learn(self, base: tuple[str, ...], overrides: list[str], printed: str) -> None:
        """After a full-path composition: prepare (and check) the reuse of its base's composition."""
        hydra, config_name = _CAPTURED.get("hydra"), _CAPTURED.get("config_name")
        if hydra is None or not _CAPTURED.get("plain"):
            return
        split = self.split(hydra, overrides)
        if split is None:
            return
        structural, values = split
        if (base, structural) in self.bases:
            return
        entry = None
        try:
            from hydra.types import RunMode

            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                composed = hydra.compose_config(config_name=config_name, overrides=list(structural),
                                                run_mode=RunMode.RUN, with_log_configuration=False)
                composed = hydra.get_sanitized_cfg(composed, "job")
            if self._apply(composed, values) == printed:  # the same as the full path, or no reuse
                entry = _Composition.build(composed) or composed
        except Exception:  # noqa: BLE001 - no reuse for this base
            entry = None
        self.bases[(base, structural)] = entry


_MISSING = object()


class _Composition:
    """One composed job config reused for many specs without a deep copy each: a spec's value overrides
    are applied to a working copy, the touched top-level sections are printed (the others' text is
    cached, and so are they as data: only touched sections are parsed), and the old values are put back.
    The restored values are read back and compared, type and all, with the old ones; any difference (or an
    override this cannot put back: dicts, interpolations, new keys) makes that spec use a fresh deep copy
    of the pristine config instead."""

    def __init__(self, master: Any, sections: dict[str, str]) -> None:
        self.master = master
        self.work = copy.deepcopy(master)
        self.sections = sections
        self.parsed: dict[str, Any] = {}  # untouched sections as data, parsed once
        self.last_config: dict | None = None  # what apply() printed, as data (parsing only touched sections)

    @classmethod
    def build(cls, master: Any) -> "_Composition | None":
        from omegaconf import OmegaConf

        sections = {str(key): cls.section(master, str(key)) for key in master.keys()}
        if "".join(sections.values()) != OmegaConf.to_yaml(master):
            return None  # printing by section is not the same text here: deep copies only
        return cls(master, sections)

    @staticmethod
    def section(config: Any, key: str) -> str:
        """``key``'s part of ``OmegaConf.to_yaml(config)`` (the same dumper and options)."""
        import yaml
        from enum import Enum

        from omegaconf import Container, OmegaConf
        from omegaconf._utils import get_omega_conf_dumper

        node = config._get_node(key)
        if isinstance(node, Container):
            value = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
        else:
            value = node._value()
            if isinstance(value, Enum):
                value = value.name
        return yaml.dump({key: value}, default_flow_style=False, allow_unicode=True, sort_keys=False,
                         Dumper=get_omega_conf_dumper())

    @staticmethod
    def _parse(key: str, text: str) -> Any:
        import yaml

        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))[key]

    def _untouched(self, key: str) -> Any:
        if key not in self.parsed:
            self.parsed[key] = self._parse(key, self.sections[key])
        return self.parsed[key]

    def _old_value(self, key: str) -> Any:
        """The value to put back at ``key`` (scalars and lists of them only), or _MISSING."""
        from omegaconf import DictConfig, ListConfig, OmegaConf

        parent_key, _dot, leaf = key.rpartition(".")
        parent = OmegaConf.select(self.work, parent_key) if parent_key else self.work
        if not isinstance(parent, DictConfig) or leaf not in parent:
            return _MISSING
        node = parent._get_node(leaf)
        if node is None or node._is_interpolation():
            return _MISSING
        if isinstance(node, ListConfig):
            if node._is_none() or node._is_missing():
                return _MISSING
            items = [node._get_node(index) for index in range(len(node))]
            if any(not hasattr(item, "_value") or isinstance(item, (DictConfig, ListConfig))
                   or item._is_interpolation() for item in items):
                return _MISSING
            return [item._value() for item in items]
        if isinstance(node, DictConfig):
            return _MISSING
        return node._value()

    def apply(self, values: list[Any]) -> str | None:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from omegaconf import OmegaConf

        tops = list(dict.fromkeys(override.key_or_group.split(".")[0] for override in values))
        saved = [(override.key_or_group, self._old_value(override.key_or_group)) for override in values]
        if any(top not in self.sections for top in tops) or any(old is _MISSING for _key, old in saved):
            return _FastPath._apply(self.master, values)  # a fresh deep copy
        self.last_config = None
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, self.work)
            texts = {key: self.section(self.work, key) if key in tops else text for key, text in self.sections.items()}
            printed = "".join(texts.values())
            self.last_config = {key: self._parse(key, text) if key in tops else self._untouched(key)
                                for key, text in texts.items()}
        except Exception:  # noqa: BLE001 - refused: the full path says why, in Hydra's words
            printed = None
        try:
            for key, old in reversed(saved):
                OmegaConf.update(self.work, key, old, merge=False)
            # the same values, of the same types, are back (repr: 1 and 1.0 print differently)
            intact = all(repr(self._old_value(key)) == repr(old) for key, old in saved)
        except Exception:  # noqa: BLE001
            intact = False
        if not intact:
            self.work = copy.deepcopy(self.master)
        return printed


def _run(app: str, arguments: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = [app, *arguments, "--cfg", "job"]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_module(app, run_name="__main__", alter_sys=True)
            except SystemExit as exit_request:
                code = exit_request.code if isinstance(exit_request.code, int) else int(exit_request.code is not None)
                if not isinstance(exit_request.code, (int, type(None))):
                    stderr.write(f"{exit_request.code}\n")
            except Exception as error:  # noqa: BLE001 - a crash of the app is its refusal of this spec
                code = 1
                stderr.write(f"Traceback (most recent call last):\n{type(error).__name__}: {error}\n")
    finally:
        sys.argv = saved_argv
    return code, stdout.getvalue(), stderr.getvalue()


def _parsed(printed: str) -> Any:
    """The printed config as data (None when it is not YAML): parsed here, in the composing children,
    rather than in the parent, where it would add ~1.5 ms a job to the command's critical path."""
    import yaml

    try:
        return yaml.load(printed, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None


def main() -> None:
    """Serve one batch from stdin (see the module docstring)."""
    request = json.load(sys.stdin)
    # Results go to a private copy of stdout; anything written straight to file descriptor 1
    # (a C library, a subprocess of the app) goes to stderr, never into the results.
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    app = request["app"]
    _capture_hydra()
    fast = _FastPath()
    for item in request["specs"]:
        index, base, overrides = item if len(item) == 3 else (item[0], item[1], [])
        printed = fast.compose(tuple(base), list(overrides))
        path = "fast" if printed is not None else "full"
        config = fast.last_config if printed is not None else None
        if printed is not None:
            code, stdout, stderr = 0, printed, ""
        else:
            _CAPTURED.pop("hydra", None)
            code, stdout, stderr = _run(app, [*base, *overrides])
            if code == 0:
                fast.learn(tuple(base), list(overrides), stdout)
        results.write(json.dumps({"index": index, "code": code, "stdout": stdout, "stderr": stderr, "path": path,
                                  "config": (config if config is not None else _parsed(stdout)) if code == 0 else None},
                                 default=str) + "\n")
        results.flush()
        if code != 0:
            break
    results.close()


if __name__ == "__main__":
    main()
