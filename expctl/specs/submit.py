"""Enqueue specs: expand sweeps, compose every job with its app, insert all in one transaction."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from expctl.store import jobs
from expctl.specs import compose
from expctl.errors import Interrupted, UserError
from expctl.tracking.hooks import SafeTracker


@dataclass(frozen=True)
class Request:
    """One spec as typed (a CLI call or a queue-file line); ``label`` names it in errors."""

    base: str
    overrides: tuple[str, ...] = ()
    app: str = compose.DEFAULT_APP
    name: str | None = None
    priority: int = 0
    max_attempts: int = 3
    allow_duplicate: bool = False
    label: str = ""


@dataclass(frozen=True)
class Submitted:
    """What one request became: its jobs and, for a sweep, the sweep id."""

    request: Request
    jobs: list[jobs.Job]
    sweep_id: int | None


def _plan(request: Request) -> compose.SweepPlan:
    try:
        # bounds first, so that a bad value is refused before anything is composed
        jobs.check_priority(request.priority)
        if not 1 <= request.max_attempts <= jobs.MAX_ATTEMPTS:
            raise UserError(f"--max-attempts must be between 1 and {jobs.MAX_ATTEMPTS}, not {request.max_attempts}")
        if request.name is not None and len(request.name) > jobs.MAX_NAME_CHARS:
            raise UserError(f"--name is longer than {jobs.MAX_NAME_CHARS} characters")
        compose.check_sizes(request.base, request.overrides)
        compose.base_arguments(request.base)
        return compose.expand(request.app, request.base, list(request.overrides))
    except UserError as error:
        raise UserError(f"{request.label}: {error}") if request.label else error from None


def _own_folders(composed: list[compose.ComposedSpec]) -> list[compose.ComposedSpec]:
    """A sweep whose jobs would share one explicit exp_dir (however it is spelled) gives each job a
    subfolder of it, ``<exp_dir>/<n>_<what differs>``: no two jobs ever write into one folder."""
    groups: dict[str, list[int]] = {}
    for index, done in enumerate(composed):
        folder = compose.explicit_exp_dir(done.config_yaml)
        if folder is not None:
            groups.setdefault(jobs.normalize_exp_dir(folder), []).append(index)
    result = list(composed)
    for indices in groups.values():
        if len(indices) < 2:
            continue
        names = compose.subfolder_names([composed[index].spec.overrides for index in indices])
        for index, name in zip(indices, names):
            typed = os.path.normpath(compose.explicit_exp_dir(composed[index].config_yaml) or ".")
            result[index] = compose.with_exp_dir(composed[index], f"{typed}/{name}")
    return result


def submit(engine: Engine, requests: list[Request], tracker: SafeTracker) -> list[Submitted]:
    """Compose every request's jobs, then enqueue all of them in one transaction (all or none)."""
    try:
        return _submit(engine, requests, tracker)
    except KeyboardInterrupt:
        # Composing runs in children that are killed; the insert is one transaction, rolled back.
        raise Interrupted("interrupted: nothing was queued") from None


def _submit(engine: Engine, requests: list[Request], tracker: SafeTracker) -> list[Submitted]:
    plans = [(request, _plan(request)) for request in requests]
    tracker.warm_up()  # MLflow's import and store set-up, while the specs compose in child processes
    labelled = [(request.label, spec) for request, plan in plans for spec in plan.specs]
    composed = iter(compose.compose_all([spec for _label, spec in labelled], [label for label, _spec in labelled]))
    batches: list[tuple[list[jobs.NewJob], jobs.NewSweep | None]] = []
    configs: list[dict] = []  # each job's config as data, in insert order: the tracker's params
    for request, plan in plans:
        items = []
        for spec, done in zip(plan.specs, _own_folders([next(composed) for _spec in plan.specs])):
            configs.append(done.config)
            folder = compose.explicit_exp_dir(done.config_yaml)
            if request.name and plan.is_sweep:
                name = f"{request.name} {' '.join(spec.overrides)}"[:200]
            else:
                name = request.name or compose.default_name(request.base, spec.overrides)
            items.append(jobs.NewJob(
                app=request.app, base=request.base, overrides=done.spec.overrides, config_yaml=done.config_yaml,
                config_hash=done.config_hash, name=name, priority=request.priority,
                max_attempts=request.max_attempts, allow_duplicate=request.allow_duplicate, label=request.label,
                exp_dir=None if folder is None else jobs.normalize_exp_dir(folder),
            ))
        sweep = None
        if plan.is_sweep:
            sweep = jobs.NewSweep(app=request.app, base=request.base, overrides=request.overrides, name=request.name)
        batches.append((items, sweep))
    created = jobs.enqueue_batches(engine, batches)
    results = [Submitted(request=request, jobs=job_list, sweep_id=sweep_id)
               for (request, _plan_), (job_list, sweep_id) in zip(plans, created)]
    try:
        queued = [job for result in results for job in result.jobs]
        # one batch: the tracker creates the runs side by side; their ids are stored in one transaction
        created = tracker.on_enqueue_many(queued, configs={job.id: config for job, config in zip(queued, configs)})
        jobs.set_tracking_many(engine, {job_id: (run.get("run_id"), run.get("uri"))
                                        for job_id, run in created.items() if run.get("run_id")})
    except KeyboardInterrupt:
        ids = [job.id for result in results for job in result.jobs]
        raise Interrupted(f"interrupted: {len(ids)} job(s) were queued ({ids[0]}-{ids[-1]}) but not all are "
                          "tracked yet; `expctl tracking sync` catches up") from None
    return results
