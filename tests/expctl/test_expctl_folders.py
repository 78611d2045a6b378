"""Each job owns its folder: experiments/<id>-<uuid> (unique across queue databases), and an explicit
exp_dir belongs to one queued, running or succeeded job (refused at enqueue otherwise; a sweep's
jobs get subfolders of it). Real databases, real CLI runs, real daemons."""

from __future__ import annotations

import json
import os

import pytest

from expctl.store import jobs
from expctl.specs import compose

from expctl_helpers import Env
from test_expctl_cli import assert_error_line

pytestmark = pytest.mark.timeout(300)

FAST = ("--app", "expctl_fastapp")


def _ids(result) -> list[int]:  # noqa: ANN001
    text = result.stdout
    if "jobs (" in text:
        return [int(part) for part in text.split("jobs (")[1].split(")")[0].split(", ")]
    return [int(text.split("queued job ")[1].split(":")[0])]


def test_job_folders_are_unique_across_queue_databases(tmp_path, any_db_url: str) -> None:
    """A queue reset (or moved to PostgreSQL) starts its ids at 1 again: its job 1 still gets a folder of
    its own, next to the old queue's job 1, and each job runs from its own frozen config."""
    old = Env(tmp_path, f"sqlite:///{tmp_path / 'old' / 'expctl.db'}")
    new = Env(tmp_path, any_db_url)
    try:
        for world, tag in ((old, "old"), (new, "new")):
            assert _ids(world.run("enqueue", "config", f"tag={tag}", *FAST, check=True)) == [1]
            daemon = world.daemon("--gpus", "none", "--until-empty", name=tag)
            assert daemon.wait(120) == 0, world.daemon_logs()
        first, second = jobs.get_job(old.engine, 1), jobs.get_job(new.engine, 1)
        assert first.status == second.status == "succeeded" and first.uuid != second.uuid
        folders = {world: tmp_path / "experiments" / jobs.job_folder(job) for world, job in ((old, first), (new, second))}
        assert folders[old] != folders[new]
        assert "tag: old" in (folders[old] / "config.yaml").read_text()
        assert "tag: new" in (folders[new] / "config.yaml").read_text()
        assert "job 1 attempt 1" in (folders[old] / "job.log").read_text()
        # experiments/1 is a convenience link to the newest job 1; scripts read job_dir
        assert os.readlink(tmp_path / "experiments" / "1") == folders[new].name
        shown = json.loads(new.run("show", "1", "--json", check=True).stdout)
        assert shown["job_dir"] == str(folders[new]) and shown["uuid"] == second.uuid
        assert "job folder" in new.run("show", "1", check=True).stdout
    finally:
        old.close()
        new.close()


def absolute(world: Env, folder: str) -> str:
    """How the queue stores an exp_dir: absolute, against the daemon's work folder (EXPCTL_WORKDIR)."""
    return os.path.realpath(world.root / folder)


def test_an_explicit_exp_dir_belongs_to_one_job(any_world: Env) -> None:
    world = any_world
    [first] = _ids(world.run("enqueue", "config", "exp_dir=runs/a", "lr=1", *FAST, check=True))
    assert jobs.get_job(world.engine, first).exp_dir == absolute(world, "runs/a")
    # another config in the same folder, however it is spelled: refused with one line, nothing written
    for spelling in ("runs/./a/", "runs/a/", "runs//a", "runs/b/../a", absolute(world, "runs/a"),
                     f"{world.root}/runs/a/."):
        refused = world.run("enqueue", "config", f"exp_dir={spelling}", "lr=2", *FAST)
        assert_error_line(refused, f"exp_dir '{absolute(world, 'runs/a')}' is the folder of job 1 (queued)",
                          "leave exp_dir unset")
    assert [job.id for job in jobs.list_jobs(world.engine)] == [first]
    # two lines of one queue file naming one folder by two spellings: refused as a whole
    queue = world.root / "two.txt"
    queue.write_text(f"config|exp_dir=runs/b|lr=1\nconfig|exp_dir={world.root}/runs/./b/|lr=2\n")
    assert_error_line(world.run("enqueue", "--file", str(queue), *FAST), "line 2",
                      f"same exp_dir '{absolute(world, 'runs/b')}'", "line 1")
    assert len(jobs.list_jobs(world.engine)) == 1
    # a succeeded job keeps its folder; a failed or cancelled one gives it up
    daemon = world.daemon("--gpus", "none", "--until-empty")
    assert daemon.wait(120) == 0, world.daemon_logs()
    assert jobs.get_job(world.engine, first).status == "succeeded"
    assert_error_line(world.run("enqueue", "config", "exp_dir=runs/a", "lr=3", *FAST), "job 1 (succeeded)")
    [failing] = _ids(world.run("enqueue", "config", "exp_dir=runs/c", "exit_code=2", *FAST, check=True))
    daemon = world.daemon("--gpus", "none", "--until-empty")
    assert daemon.wait(120) == 0, world.daemon_logs()
    assert jobs.get_job(world.engine, failing).status == "failed"
    [again] = _ids(world.run("enqueue", "config", "exp_dir=runs/c", "lr=4", *FAST, check=True))
    # ... and cannot take it back while the new owner holds it
    assert_error_line(world.run("retry", str(failing)),
                      f"job {failing}: its exp_dir '{absolute(world, 'runs/c')}' now belongs to job {again}")
    assert jobs.get_job(world.engine, failing).status == "failed"
    world.run("cancel", str(again), check=True)
    world.run("retry", str(failing), check=True)
    assert jobs.get_job(world.engine, failing).status == "queued"


def test_a_sweep_with_one_exp_dir_gives_each_job_a_subfolder(any_world: Env) -> None:
    world = any_world
    result = world.run("enqueue", "config", "exp_dir=runs/grid", "lr=0.1,0.2", "depth=2", *FAST, check=True)
    members = [jobs.get_job(world.engine, job_id) for job_id in _ids(result)]
    assert [job.exp_dir for job in members] == [absolute(world, "runs/grid/1_lr=0.1"),
                                                absolute(world, "runs/grid/2_lr=0.2")]
    assert "exp_dir: runs/grid/1_lr=0.1\n" in members[0].config_yaml and "lr: 0.1\n" in members[0].config_yaml
    assert members[0].override_list[-1] == "exp_dir='runs/grid/1_lr=0.1'"
    assert members[0].name == "config exp_dir=runs/grid lr=0.1 depth=2"  # the names stay as typed
    assert members[0].config_hash == compose.config_hash("expctl_fastapp", members[0].config_yaml)
    # the subfolders are owned like any exp_dir: the same sweep again is refused
    assert_error_line(world.run("enqueue", "config", "exp_dir=runs/grid", "lr=0.1,0.2", "depth=3", *FAST),
                      f"exp_dir '{absolute(world, 'runs/grid/1_lr=0.1')}' is the folder of job")
    # a swept exp_dir needs no subfolders
    swept = world.run("enqueue", "config", "exp_dir=runs/x,runs/y", *FAST, check=True)
    assert [jobs.get_job(world.engine, job_id).exp_dir for job_id in _ids(swept)] == [absolute(world, "runs/x"),
                                                                                      absolute(world, "runs/y")]
    # one folder swept under two spellings is one folder: subfolders again
    spelled = world.run("enqueue", "config", f"exp_dir=runs/z,{world.root}/runs/z/", *FAST, check=True)
    folders = [jobs.get_job(world.engine, job_id).exp_dir for job_id in _ids(spelled)]
    assert [os.path.dirname(folder) for folder in folders] == [absolute(world, "runs/z")] * 2
    assert [os.path.basename(folder)[:2] for folder in folders] == ["1_", "2_"]


def test_the_training_app_default_exp_dir_is_the_job_folder_and_a_sweep_splits_an_explicit_one(world: Env) -> None:
    """With the real app (asr.train): its default exp_dir (Hydra's run dir) is the job's own folder."""
    [plain] = _ids(world.run("enqueue", "config", "trainer.epochs=1", check=True))
    assert jobs.get_job(world.engine, plain).exp_dir is None
    result = world.run("enqueue", "config", "optimizer.learning_rate=0.001,0.002", "exp_dir=runs/lr", check=True)
    members = [jobs.get_job(world.engine, job_id) for job_id in _ids(result)]
    assert [job.exp_dir for job in members] == [absolute(world, "runs/lr/1_learning_rate=0.001"),
                                                absolute(world, "runs/lr/2_learning_rate=0.002")]
    listing = {job["id"]: job for job in json.loads(world.run("list", "--json", check=True).stdout)}
    assert listing[plain]["exp_dir"] == listing[plain]["job_dir"]
    assert listing[members[1].id]["exp_dir"] == str(world.root / "runs" / "lr" / "2_learning_rate=0.002")


def test_jobs_queued_before_the_migration_keep_their_folder(tmp_path, any_db_url: str) -> None:
    """A queue at the first schema revision is upgraded in place; its jobs keep experiments/<id> (where a
    running one's checkpoints are), new ones get experiments/<id>-<uuid>."""
    from alembic import command
    from sqlalchemy import text

    from expctl.store import db

    engine = db.create_engine(any_db_url, migrate=False)
    try:
        with engine.begin() as connection:
            command.upgrade(db._alembic_config(connection), "0001_initial")
            connection.execute(text(
                "INSERT INTO jobs (name, app, base, overrides, config_yaml, config_hash, status, created_at, "
                "updated_at) VALUES ('old', 'expctl_fastapp', 'config', '[]', 'n: 1\n', 'h', 'queued', 0, 0)"))
        assert db.current_revision(engine) == "0001_initial"
        assert db.upgrade(engine) == db.SCHEMA_REVISION == "0002_job_folders"
        [old] = jobs.list_jobs(engine)
        assert old.uuid is None and jobs.job_folder(old) == "1"
        config_yaml = "n: 2\nexp_dir: runs/new\n"
        [new] = jobs.enqueue(engine, [jobs.NewJob(app="expctl_fastapp", base="config", overrides=(),
                                                  config_yaml=config_yaml, name="new", exp_dir="runs/new",
                                                  config_hash=compose.config_hash("expctl_fastapp", config_yaml))])
        assert jobs.job_folder(new) == f"2-{new.uuid}"
        assert new.exp_dir == os.path.realpath("runs/new")  # stored absolute
    finally:
        engine.dispose()
