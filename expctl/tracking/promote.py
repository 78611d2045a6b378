"""Sweeps: list them, and promote a sweep's best run to a version of a registered MLflow model.

``expctl sweep promote SWEEP --metric val_wer --name asr-en`` looks at the sweep's jobs that
succeeded and have an MLflow run holding ``--metric`` (the run's latest value of it, as the MLflow
UI shows), picks the lowest (``--max``: the highest; ties go to the oldest job), and registers the
run's MLflow Model ``model`` (``runs:/<run_id>/model``) as a new version of the registered model
NAME in the run's tracking store, with an optional alias. The version's ``run_id`` is the job's
run and ``source`` its logged model (``models:/<model_id>``, MLflow 3), or for a model logged as
run artifacts (MLflow 2) the run's ``model`` folder, as ``mlflow.register_model`` does.

Every mistake (no such sweep, no finished run with the metric, a best run without a model,
tracking off, a bad name or alias) is a :class:`~expctl.errors.UserError` raised before anything
is registered. MLflow is imported only here, when a promotion asks for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from expctl.store import jobs as jobs_module
from expctl.store.db import read_connection
from expctl.errors import UserError, first_line
from expctl.store.schema import jobs as jobs_table
from expctl.store.schema import sweeps as sweeps_table
from expctl.tracking.mlflow_data import tracking_uri
from expctl.tracking.mlflow_runs import REQUEST_ERROR_CODES, MlflowTracker
from expctl.tracking.trackers import TRACKERS

MODEL_ARTIFACT = "model"  # the name every tracked training run logs its MLflow Model under
SEARCH_CHUNK = 100  # run ids per search_runs request
_RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # what mlflow.register_model sets on the logged model


class TrackerUnavailable(Exception):
    """MLflow did not answer (or failed) while promoting: not the user's mistake (exit 1)."""


# ------------------------------------------------------------------ list


@dataclass(frozen=True)
class SweepSummary:
    """A sweep as typed, and how many of its jobs are in each status."""

    id: int
    name: str | None
    app: str
    base: str
    overrides: list[str]
    created_at: float
    counts: dict[str, int]

    @property
    def jobs(self) -> int:
        return sum(self.counts.values())

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "app": self.app, "base": self.base,
                "overrides": self.overrides, "created_at": self.created_at, "jobs": self.jobs,
                "counts": self.counts}


def list_sweeps(engine: Engine, limit: int | None = None) -> list[SweepSummary]:
    """Sweeps, oldest first (``limit``: only the newest N), with their jobs counted by status."""
    query = select(sweeps_table).order_by(sweeps_table.c.id.desc())
    if limit is not None:
        if not 0 <= limit <= jobs_module.INT64_MAX:
            raise UserError(f"--limit must be between 0 and {jobs_module.INT64_MAX}, not {limit}")
        query = query.limit(limit)
    with read_connection(engine) as connection:
        rows = connection.execute(query).all()
        counts: dict[int, dict[str, int]] = {}
        if rows:
            wanted = [row.id for row in rows]
            counted = connection.execute(
                select(jobs_table.c.sweep_id, jobs_table.c.status, func.count())
                .where(jobs_table.c.sweep_id.in_(wanted))
                .group_by(jobs_table.c.sweep_id, jobs_table.c.status)
            ).all()
            for sweep_id, status, count in counted:
                counts.setdefault(sweep_id, {})[status] = int(count)
    found = []
    for row in reversed(rows):
        try:
            overrides = [str(item) for item in json.loads(row.overrides)]
        except (TypeError, ValueError):
            overrides = [str(row.overrides)]
        by_status = counts.get(row.id, {})
        ordered = {status: by_status[status] for status in jobs_module.STATUSES if status in by_status}
        found.append(SweepSummary(row.id, row.name, row.app, row.base, overrides, row.created_at, ordered))
    return found


def describe_counts(counts: dict[str, int]) -> str:
    """``2 succeeded, 1 failed`` (``no jobs`` when empty)."""
    return ", ".join(f"{count} {status}" for status, count in counts.items()) or "no jobs"


# --------------------------------------------------------------- promote


@dataclass
class Promotion:
    """What :func:`promote` registered."""

    sweep_id: int
    job_id: int
    run_id: str
    uri: str
    metric: str
    value: float
    higher_is_better: bool
    name: str
    version: str
    source: str
    model_id: str | None
    alias: str | None
    ranked: int  # succeeded runs that hold the metric
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def as_json(self) -> dict[str, Any]:
        return {"sweep": self.sweep_id, "job": self.job_id, "mlflow_run_id": self.run_id, "tracking_uri": self.uri,
                "metric": self.metric, "value": self.value,
                "direction": "max" if self.higher_is_better else "min", "name": self.name,
                "version": self.version, "alias": self.alias, "source": self.source, "model_id": self.model_id,
                "model_uri": self.model_uri, "alias_uri": f"models:/{self.name}@{self.alias}" if self.alias else None,
                "run_uri": f"runs:/{self.run_id}/{MODEL_ARTIFACT}", "ranked": self.ranked}


def check_tracking(tracking: str | None) -> None:
    """Refuse a promotion when tracking is off (``--tracking none``) or MLflow is not installed."""


    explicit = tracking or os.environ.get("EXPCTL_TRACKING")
    choice = (explicit or "mlflow").strip().lower()
    if choice == "none":
        where = "--tracking none" if tracking else "EXPCTL_TRACKING=none"
        raise UserError(f"tracking is disabled ({where}): a sweep's runs and the model registry live in MLflow; "
                        "use --tracking mlflow")
    if choice not in TRACKERS:
        raise UserError(f"unknown tracker {choice!r}: choose one of {', '.join(TRACKERS)}")
    if importlib.util.find_spec("mlflow") is None:
        raise UserError("promoting needs the mlflow package (pip install mlflow)")


def _check_names(name: str, alias: str | None, metric: str) -> None:
    """The registry's own rules, checked before anything is registered."""
    from mlflow.exceptions import MlflowException

    if not metric.strip():
        raise UserError("--metric is empty")
    if len(name) > 256:  # MLflow's column; longer names fail only after the version was made
        raise UserError(f"--name {name[:40]!r}...: longer than 256 characters")
    if alias is not None and len(alias) > 256:
        raise UserError(f"--alias {alias[:40]!r}...: longer than 256 characters")
    try:
        from mlflow.utils import validation
    except ImportError:  # pragma: no cover - private module moved: the registry refuses instead
        return
    checks = [("--name", getattr(validation, "_validate_model_name", None), name)]
    if alias is not None:
        checks += [("--alias", getattr(validation, "_validate_model_alias_name", None), alias),
                   ("--alias", getattr(validation, "_validate_model_alias_name_reserved", None), alias)]
    for option, check, value in checks:
        if check is None:
            continue
        try:
            check(value)
        except MlflowException as error:
            raise UserError(f"{option} {value!r}: {first_line(error)}") from None


def _client(uri: str) -> Any:

    return MlflowTracker(uri).client(uri)


def _is_request_error(error: BaseException) -> bool:

    return getattr(error, "error_code", None) in REQUEST_ERROR_CODES


def _runs(client: Any, run_ids: list[str]) -> dict[str, Any]:
    """The runs (deleted ones too) with these ids, by id: a few searches, not one request per run."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    found: dict[str, Any] = {}
    searchable = [run_id for run_id in run_ids if _RUN_ID.match(run_id)]
    experiment_ids: list[str] = []
    token = None
    while searchable:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        experiment_ids.extend(experiment.experiment_id for experiment in page)
        token = page.token
        if not token:
            break
    for start in range(0, len(searchable) if experiment_ids else 0, SEARCH_CHUNK):
        chunk = searchable[start:start + SEARCH_CHUNK]
        quoted = ", ".join(f"'{run_id}'" for run_id in chunk)
        for first in range(0, len(experiment_ids), 100):  # search_runs takes at most 100 experiments
            token = None
            while True:
                page = client.search_runs(experiment_ids[first:first + 100],
                                          filter_string=f"attributes.run_id IN ({quoted})",
                                          run_view_type=ViewType.ALL, max_results=SEARCH_CHUNK, page_token=token)
                found.update((run.info.run_id, run) for run in page)
                token = page.token
                if not token:
                    break
    for run_id in run_ids:  # ids a search cannot express, or runs it did not return
        if run_id not in found:
            try:
                found[run_id] = client.get_run(run_id)
            except MlflowException as error:
                if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
    return found


def _logged_model(client: Any, run: Any) -> tuple[str, str | None] | None:
    """``(source, model_id)`` of the run's MLflow Model ``model``, or None when it has none.

    MLflow 3 keeps it as a logged model whose source run is this run (the newest step wins, as in
    ``mlflow.register_model``); MLflow 2 kept ``model/MLmodel`` among the run's artifacts.
    """
    from mlflow.entities import LoggedModelStatus

    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    by_name = f"name = '{MODEL_ARTIFACT}'"
    # The run's own models only (not every model of its experiment); stores that cannot filter
    # on the source run are asked by name alone, as mlflow.register_model does.
    filters = [f"{by_name} AND source_run_id = '{run_id}'", by_name] if _RUN_ID.match(run_id) else [by_name]
    models: list[Any] = []
    for filter_string in filters:
        try:
            token = None
            while True:
                page = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                   filter_string=filter_string, page_token=token)
                models.extend(model for model in page if model.source_run_id == run_id)
                token = page.token
                if not token:
                    break
            break
        except MlflowException as error:
            if filter_string == filters[-1] or getattr(error, "error_code", None) != "INVALID_PARAMETER_VALUE":
                raise
            models = []
    ready = [model for model in models if model.status in (LoggedModelStatus.READY, LoggedModelStatus.UNSPECIFIED)]
    if ready:
        outputs = getattr(run, "outputs", None)
        steps = {output.model_id: output.step for output in (getattr(outputs, "model_outputs", None) or [])}
        best = max(ready, key=lambda model: (steps.get(model.model_id, -1), model.creation_timestamp or 0))
        return f"models:/{best.model_id}", best.model_id
    artifacts = client.list_artifacts(run_id, MODEL_ARTIFACT)
    if any(info.path.rstrip("/") == f"{MODEL_ARTIFACT}/MLmodel" for info in artifacts):
        return f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}", None
    if models:
        states = ", ".join(sorted({str(model.status) for model in models}))
        raise UserError(f"run {run_id}'s MLflow Model '{MODEL_ARTIFACT}' is not ready ({states}): its upload did "
                        "not finish; log it again or promote another run")
    return None


def promote(engine: Engine, sweep_id: int, metric: str, name: str, higher_is_better: bool = False,
            alias: str | None = None, tracking: str | None = None) -> Promotion:
    """Register the best succeeded run of sweep ``sweep_id`` (by ``metric``) as a new version of ``name``."""

    sweep_jobs = jobs_module.list_jobs(engine, sweep_id=sweep_id)  # UserError: no sweep with id N
    check_tracking(tracking)
    _check_names(name, alias, metric)
    default_uri = tracking_uri()
    succeeded = [job for job in sweep_jobs if job.status == jobs_module.SUCCEEDED]
    skipped: dict[str, int] = {}
    by_uri: dict[str, list[Any]] = {}
    for job in succeeded:
        if job.tracking_run_id:
            by_uri.setdefault(job.tracking_uri or default_uri, []).append(job)
        else:
            skipped["no MLflow run"] = skipped.get("no MLflow run", 0) + 1
    ranked: list[tuple[float, int, Any, str, Any]] = []  # (sort key, job id, job, uri, run)
    metrics_seen: set[str] = set()
    for uri, members in by_uri.items():
        try:
            runs = _runs(_client(uri), [job.tracking_run_id for job in members])
        except Exception as error:  # noqa: BLE001 - MLflow down or refusing: one line
            raise _unavailable(uri, error) from None
        for job in members:
            run = runs.get(job.tracking_run_id)
            if run is None or run.info.lifecycle_stage == "deleted":
                reason = "run deleted" if run is not None else "run not found"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            metrics_seen.update(run.data.metrics)
            value = run.data.metrics.get(metric)
            if value is None or math.isnan(value):
                reason = f"no {metric}" if value is None else f"{metric} is NaN"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            ranked.append((-value if higher_is_better else value, job.id, job, uri, run))
    if not ranked:
        counts = describe_counts({status: sum(job.status == status for job in sweep_jobs)
                                  for status in jobs_module.STATUSES
                                  if any(job.status == status for job in sweep_jobs)})
        why = "; ".join(f"{count} {reason}" for reason, count in skipped.items())
        near = sorted(key for key in metrics_seen if key != metric)[:8]
        hint = f"; their runs have: {', '.join(near)}" if near else ""
        raise UserError(f"sweep {sweep_id}: no succeeded job has an MLflow run with metric {metric!r} "
                        f"({counts}{'; ' + why if why else ''}){hint}")
    ranked.sort(key=lambda item: (item[0], item[1]))
    _key, _job_id, best, uri, run = ranked[0]
    value = float(run.data.metrics[metric])
    client = _client(uri)
    try:
        found = _logged_model(client, run)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001
        raise _unavailable(uri, error) from None
    if found is None:
        raise UserError(f"sweep {sweep_id}: the best run by {metric} (job {best.id}, run {run.info.run_id}, "
                        f"{metric}={value:.6g}) has no logged MLflow Model '{MODEL_ARTIFACT}' "
                        f"(runs:/{run.info.run_id}/{MODEL_ARTIFACT} does not resolve); nothing registered")
    source, model_id = found
    try:
        version = _register(client, name, source, run.info.run_id, model_id, alias, {
            "expctl.sweep_id": str(sweep_id), "expctl.job_id": str(best.id),
            "expctl.job_uuid": best.uuid or "", "expctl.metric": metric, "expctl.metric_value": repr(value),
            "expctl.direction": "max" if higher_is_better else "min",
        })
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001
        if _is_request_error(error):
            raise UserError(f"the registry at {uri} refused: {first_line(error)}") from None
        raise _unavailable(uri, error) from None
    return Promotion(sweep_id=sweep_id, job_id=best.id, run_id=run.info.run_id, uri=uri, metric=metric, value=value,
                     higher_is_better=higher_is_better, name=name, version=str(version.version), source=source,
                     model_id=model_id, alias=alias, ranked=len(ranked), skipped=skipped)


def _register(client: Any, name: str, source: str, run_id: str, model_id: str | None, alias: str | None,
              tags: dict[str, str]) -> Any:
    """Create the registered model if needed, then the version (and its alias), as ``mlflow.register_model``."""
    with process_tracking_uri(client.tracking_uri):  # the registry looks the logged model up there
        return _register_in(client, name, source, run_id, model_id, alias, tags)


@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` meanwhile (a registry store resolves a
    ``models:/<model_id>`` source through it, not through the client it was called from)."""
    from mlflow.tracking._tracking_service import utils

    previous, variable = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    utils.set_tracking_uri(uri)  # sets MLFLOW_TRACKING_URI too (and None unsets it): both are put back
    try:
        yield
    finally:
        utils.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def _register_in(client: Any, name: str, source: str, run_id: str, model_id: str | None, alias: str | None,
                 tags: dict[str, str]) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if getattr(error, "error_code", None) not in _ALREADY_EXISTS:
            raise
    version = client.create_model_version(name=name, source=source, run_id=run_id, model_id=model_id,
                                          tags={key: value for key, value in tags.items() if value})
    if model_id:  # the logged model's page links to its registered versions (what register_model does)
        try:
            existing = client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG)
            links = json.loads(existing) if existing else []
            links.append({"name": version.name, "version": version.version})
            client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(links)})
        except (MlflowException, ValueError, TypeError, AttributeError):
            pass  # only a UI link: the version exists
    if alias:
        client.set_registered_model_alias(name, alias, str(version.version))
    return version


def _unavailable(uri: str, error: BaseException) -> Exception:
    if _is_request_error(error):
        return UserError(f"MLflow at {uri} refused: {first_line(error)}")
    return TrackerUnavailable(f"MLflow at {uri} failed: {first_line(error)}")
