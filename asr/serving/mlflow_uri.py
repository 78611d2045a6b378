"""Model bundles named by MLflow URIs: ``models:/asr-en/3``, ``models:/asr-en@champion``,
``models:/asr-en/latest``, ``runs:/<run_id>/model`` (an MLflow Model of :mod:`asr.serving.pyfunc`) or
``runs:/<run_id>/model.bin`` (a plain bundle artifact).

The tracking store is MLflow's usual one (``MLFLOW_TRACKING_URI``, or ``mlflow.set_tracking_uri``).
An alias or ``latest`` is first resolved to a version number, so the download cache
(``~/.cache/asr/mlflow/``, one folder per tracking store and immutable URI) never serves a stale
model when an alias moves. The bundle is then loaded like any other.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from asr.errors import UserError

SCHEMES = ("models:/", "runs:/")
BUNDLE_SUFFIX = ".bin"


def is_mlflow_uri(value: str) -> bool:
    return str(value).startswith(SCHEMES)


def cache_root() -> Path:
    return Path.home() / ".cache" / "asr" / "mlflow"


def _one_line(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message.strip().splitlines()[0]


def pinned_uri(uri: str) -> str:
    """``uri`` with an alias or ``latest`` replaced by the version number it points at now."""
    from mlflow import MlflowClient

    if not uri.startswith("models:/"):
        return uri
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/([^/]+))(/.*)?", uri)
    if not match:
        raise UserError(f"{uri}: expected models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest")
    name, alias, version, rest = match.groups()
    client = MlflowClient()
    if alias:
        version = client.get_model_version_by_alias(name, alias).version
    elif version == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise UserError(f"{uri}: registered model {name!r} has no versions")
        version = max(int(item.version) for item in versions)
    elif not version.isdigit():  # a stage (Production, Staging): deprecated in MLflow, but still answered
        latest = client.get_latest_versions(name, stages=[version])
        if not latest:
            raise UserError(f"{uri}: registered model {name!r} has no version in stage {version!r}")
        version = latest[0].version
    else:
        client.get_model_version(name, version)  # fails clearly when it does not exist
    return f"models:/{name}/{version}{rest or ''}"


def fetch_bundle(uri: str) -> Path:
    """The local path of the bundle ``uri`` stands for, downloaded into the cache on first use."""
    # An unreachable tracking server fails in seconds, not after MLflow's minutes of retries
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        os.environ.setdefault(key, {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}.get(key, "1"))
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        pinned = pinned_uri(uri)
        tracking = mlflow.get_tracking_uri()
        key = hashlib.sha256(f"{tracking}\n{pinned}".encode()).hexdigest()[:20]
        folder = cache_root() / key
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            # download beside the cache, then rename: a half-finished download is never found
            scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(scratch))
                try:
                    os.replace(scratch, folder)
                except OSError:  # another process finished first
                    pass
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except MlflowException as error:
        raise UserError(f"{uri}: {_one_line(error)}") from None
    except OSError as error:
        raise UserError(f"{uri}: cannot download it: {_one_line(error)}") from None
    return _bundle_in(folder, uri)


def _bundle_in(folder: Path, uri: str) -> Path:
    """The bundle in a downloaded MLflow Model (its ``bundle`` artifact) or a downloaded ``.bin``."""
    import yaml

    found = [path for path in folder.rglob("*") if path.is_file()]
    mlmodel = [path for path in found if path.name == "MLmodel"]
    if mlmodel:
        flavor = (yaml.safe_load(mlmodel[0].read_text()) or {}).get("flavors", {}).get("python_function", {})
        entry = (flavor.get("artifacts") or {}).get("bundle", {})
        relative = entry.get("path") if isinstance(entry, dict) else None
        if relative and (mlmodel[0].parent / relative).is_file():
            return mlmodel[0].parent / relative
        raise UserError(f"{uri}: an MLflow Model without an asr bundle artifact (not logged by asr)")
    bundles = [path for path in found if path.suffix == BUNDLE_SUFFIX]
    if len(bundles) == 1:
        return bundles[0]
    raise UserError(f"{uri}: holds {len(bundles)} model bundles (.bin); name one, e.g. runs:/RUN_ID/model.bin")
