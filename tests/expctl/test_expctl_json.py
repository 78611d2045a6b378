"""``expctl list / show / workers --json`` for scripts, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from expctl.store import actions, jobs
from expctl.specs import compose

from expctl_helpers import Env
from test_expctl_cli import TESTAPP

pytestmark = pytest.mark.timeout(300)


def test_list_show_and_workers_print_json(any_world: Env) -> None:
    world = any_world
    world.run("enqueue", "config", "tag='[/]'", "lr=0.1,0.2", *TESTAPP, "--name", "grid", check=True)
    config_yaml = "exp_dir: 'runs/own dir'\nexit_code: 3\n"
    [own] = jobs.enqueue(world.engine, [jobs.NewJob(
        app="expctl_fastapp", base="config", overrides=("exp_dir=runs/own",), config_yaml=config_yaml,
        config_hash=compose.config_hash("expctl_fastapp", config_yaml), name="own dir", max_attempts=1, priority=9)])
    jobs.set_tracking(world.engine, own.id, "abc123", "sqlite:///mlflow.db")
    actions.cancel(world.engine, 1)
    daemon = world.daemon("--gpus", "none", "--until-empty", "--once")
    assert daemon.wait(120) == 0, world.daemon_logs()

    listing = json.loads(world.run("list", "--json", check=True).stdout)
    assert [(job["id"], job["status"], job["attempt"], job["sweep"]) for job in listing] == [
        (1, "cancelled", 0, 1), (2, "queued", 0, 1), (3, "failed", 1, None)]
    first, second, third = listing
    assert first["name"] == "grid tag='[/]' lr=0.1" and first["overrides"] == ["tag='[/]'", "lr=0.1"]
    assert first["reason"] == "cancelled before it ran" and first["mlflow_run_id"] is None
    # each job's own folder is experiments/<id>-<uuid>: unique across queue databases
    assert len({job["uuid"] for job in listing}) == 3 and all(len(job["uuid"]) == 32 for job in listing)
    assert second["job_dir"] == str(world.root / "experiments" / f"2-{second['uuid']}") == second["exp_dir"]
    assert third["exp_dir"] == str(world.root / "runs" / "own dir")
    assert third["job_dir"].endswith(f"/experiments/3-{third['uuid']}")
    assert third["log"] == third["job_dir"] + "/job.log"
    assert third["mlflow_run_id"] == "abc123" and third["exit_code"] == 3 and third["priority"] == 9
    assert third["reason"] == "failed: exit code 3 after 1 attempts" and third["max_attempts"] == 1
    assert json.loads(world.run("list", "--json", "--status", "queued", check=True).stdout) == [second]

    shown = json.loads(world.run("show", "3", "--json", check=True).stdout)
    assert {key: shown[key] for key in listing[2]} == third
    assert shown["config_yaml"] == config_yaml
    assert [event["kind"] for event in shown["events"]] == ["enqueued", "claimed", "failed"]

    [worker] = json.loads(world.run("workers", "--all", "--json", check=True).stdout)
    assert worker["status"] == "stopped" and worker["pid"] == daemon.pid and worker["gpus"] == "none"
    assert worker["stopped_at"] >= worker["started_at"] and worker["job"] is None
    assert json.loads(world.run("workers", "--json", check=True).stdout) == []
