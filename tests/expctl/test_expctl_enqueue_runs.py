"""The MLflow runs that ``expctl enqueue`` writes in one transaction on a database store are the runs
MLflow's client makes one by one: same tags, params, name, user, status and start time; config.yaml
comes when the job starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from expctl.store import jobs
from expctl.tracking.mlflow_runs import MlflowTracker
from expctl_helpers import Env



@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_sweeps_runs_written_in_one_transaction_match_the_clients(world: Env, tmp_path: Path, store: str,
                                                                     request: pytest.FixtureRequest) -> None:
    # the MLflow store: a SQLite file, or a fresh PostgreSQL schema (the queue stays on SQLite)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if store == "sqlite" else request.getfixturevalue("pg_url")
    world.vars.update(EXPCTL_TRACKING="mlflow", MLFLOW_TRACKING_URI=uri, EXPCTL_TRACKER_TIMEOUT="120")
    world.run("enqueue", "--app", "expctl_testapp", "--name", "grid", "config", "tag=a,b,c",
              "+experiment.name=batch", check=True)
    queued = jobs.list_jobs(world.engine)
    assert len(queued) == 3 and all(job.tracking_run_id and job.tracking_uri == uri for job in queued)

    tracker = MlflowTracker(uri)
    client = tracker.client()
    for job in queued:
        batch = client.get_run(job.tracking_run_id)
        reference = client.get_run(tracker.create_run(job))  # the same job's run, made by MLflow's client
        assert batch.info.status == reference.info.status == "SCHEDULED"
        assert batch.info.experiment_id == reference.info.experiment_id
        assert batch.info.run_name == reference.info.run_name == job.name
        assert batch.info.user_id == reference.info.user_id
        assert batch.info.start_time == reference.info.start_time == int(job.created_at * 1000)
        assert batch.info.lifecycle_stage == reference.info.lifecycle_stage == "active"
        assert batch.data.params == reference.data.params and batch.data.params["tag"] in "abc"
        assert batch.data.tags == reference.data.tags
        assert batch.data.tags["expctl.job_id"] == str(job.id)
        assert client.list_artifacts(batch.info.run_id) == client.list_artifacts(reference.info.run_id) == []

    # The runs live on as the client's do: the claim sets the status and logs config.yaml; a search.
    started = dataclasses.replace(queued[0], attempt=1, worker_id="w", gpus=None)
    assert tracker.on_claim(started) is None  # the run exists: none created
    assert client.get_run(queued[0].tracking_run_id).info.status == "RUNNING"
    assert [artifact.path for artifact in client.list_artifacts(queued[0].tracking_run_id)] == ["config.yaml"]
    text = Path(client.download_artifacts(queued[0].tracking_run_id, "config.yaml", str(tmp_path))).read_text()
    assert text == queued[0].config_yaml
    experiment = client.get_experiment_by_name("batch")
    assert len(client.search_runs([experiment.experiment_id], "tags.`expctl.app` = 'expctl_testapp'")) == 6


def test_without_a_tracker_enqueue_warns_of_nothing_to_catch_up(world: Env) -> None:
    queued = world.run("enqueue", "--app", "expctl_fastapp", "config", "tag=a,b", check=True)  # EXPCTL_TRACKING=none
    assert "sweep 1: queued 2 jobs" in queued.stdout and "could not track" not in queued.stderr, queued.stderr


def test_the_queues_and_mlflows_migrations_never_cross_in_one_process(tmp_path: Path) -> None:
    # enqueue opens MLflow's store in a helper thread while a new queue database migrates: Alembic's
    # module-wide context once ran one's scripts on the other ("no such table: jobs" in CI)
    import threading

    import sqlalchemy
    from sqlalchemy import inspect

    from expctl.store import db

    for attempt in range(4):
        queue = db.create_engine(f"sqlite:///{tmp_path / f'queue{attempt}.db'}", migrate=False)
        tracker = MlflowTracker(uri=f"sqlite:///{tmp_path / f'mlflow{attempt}.db'}")
        opened = threading.Thread(target=tracker.client)
        opened.start()
        db.upgrade(queue)
        opened.join()
        assert {"jobs", "sweeps"} <= set(inspect(queue).get_table_names())
        assert "runs" not in inspect(queue).get_table_names()
        mlflow_store = sqlalchemy.create_engine(tracker.uri)
        assert {"runs", "experiments"} <= set(inspect(mlflow_store).get_table_names())
        queue.dispose()
        mlflow_store.dispose()


def test_the_console_script_keeps_exit_codes_and_output_when_it_skips_mlflows_teardown(world: Env,
                                                                                      tmp_path: Path) -> None:
    # once MLflow is imported the script ends with os._exit: runs, rows, messages and codes must all be there
    world.vars.update(EXPCTL_TRACKING="mlflow", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    queued = world.cli("enqueue", "--app", "expctl_testapp", "config", "tag=a,b", check=True)
    assert "sweep 1: queued 2 jobs (1, 2)" in queued.stdout
    runs = [job.tracking_run_id for job in jobs.list_jobs(world.engine)]
    assert all(runs) and {MlflowTracker(world.vars["MLFLOW_TRACKING_URI"]).client().get_run(run).info.status
                          for run in runs} == {"SCHEDULED"}
    refused = world.cli("enqueue", "--app", "expctl_testapp", "no_such_base")
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
    assert len(jobs.list_jobs(world.engine)) == 2
