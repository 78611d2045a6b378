"""What a queued job is in MLflow, without importing MLflow: the tracking URI, param and metric
names, the metrics a job left in its folder, where to see a run. Shared by the tracker
(:mod:`expctl.tracking.mlflow_runs`), ``expctl show`` and ``expctl sweep promote``."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param's value
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
_INVALID_KEY = re.compile(r"[^\w\-. /]")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or the local SQLite store, made absolute so every process agrees on it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    elif "://" not in uri and not uri.startswith(("databricks", "uc")):
        uri = str(Path(uri).resolve())  # a plain folder (file store)
    return uri


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server's address (http or https)."""
    return uri.startswith(("http://", "https://"))


@functools.lru_cache(maxsize=4096)  # the same keys come back for every job of a sweep
def metric_key(key: str) -> str:
    """A name MLflow accepts (letters, digits, ``_ - . / space``)."""
    return _INVALID_KEY.sub("_", str(key))[:250]


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """``{"model": {"parameters": {"rnn_sizes": [1]}}}`` → ``{"model.parameters.rnn_sizes": "[1]"}``."""
    flat: dict[str, str] = {}
    _flatten_into(flat, config, prefix)
    return flat


def _flatten_into(flat: dict[str, str], config: Any, prefix: str) -> None:
    if isinstance(config, dict):
        for key, value in config.items():
            _flatten_into(flat, value, f"{prefix}{key}.")
        return
    value = json.dumps(config) if isinstance(config, list) else str(config)
    flat[metric_key(prefix.rstrip("."))] = value[:PARAM_VALUE_LIMIT]


def numeric_leaves(value: Any, prefix: str = "") -> dict[str, float]:
    """Numbers in nested dicts, keys joined by ``_`` (``{"test": {"wer": 0.3}}`` → ``{"test_wer": 0.3}``).

    Lists, strings and booleans are left out. ``asr.training.tracking`` logs a training's ``result.json``
    the same way, so both sides agree on the names.
    """
    if isinstance(value, dict):
        found: dict[str, float] = {}
        for key, item in value.items():
            found.update(numeric_leaves(item, f"{prefix}{key}_"))
        return found
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {metric_key(prefix.rstrip("_")): float(value)}
    return {}


def read_metrics_lines(path: Path) -> list[tuple[int, dict[str, float]]]:
    """``metrics.jsonl`` lines ``{"epoch": 3, "loss": 1.2, ...}`` as ``(step, {key: value})``.

    The step is the line's ``epoch`` (or ``step``), else its line number; unreadable lines are skipped.
    """
    rows: list[tuple[int, dict[str, float]]] = []
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        step_value = record.get("epoch", record.get("step", number))
        step = int(step_value) if isinstance(step_value, (int, float)) and not isinstance(step_value, bool) else number
        values = {metric_key(key): float(value) for key, value in record.items()
                  if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if values:
            rows.append((step, values))
    return rows


def run_address(run_id: str, uri: str, timeout_s: float = 3.0) -> str:
    """Where to see a run: its page on a tracking server, or how to open the UI on a local store.

    Does not import MLflow: a server is asked for the run's experiment through its REST API
    (without an answer the UI's experiment-less ``#/runs/<id>`` route is given).
    """
    if is_server(uri):
        base = uri.rstrip("/")
        query = urllib.parse.urlencode({"run_id": run_id})
        try:
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?{query}", timeout=timeout_s) as answer:
                experiment_id = json.load(answer)["run"]["info"]["experiment_id"]
            return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
        except (OSError, ValueError, KeyError):
            return f"{base}/#/runs/{run_id}"
    return (f"mlflow ui --backend-store-uri {uri}   # then open http://127.0.0.1:5000/#/runs/{run_id}")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit checked out in the current folder (asked once per process)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
