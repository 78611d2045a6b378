"""The consumer daemon with real processes: exactly-once runs, kill -9, cancel, signals, exit codes."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from expctl.store import actions, claims, jobs
from expctl.specs import compose
from expctl.tracking.hooks import Tracker

from expctl_helpers import Env, pid_alive, wait_for
from test_expctl_cli import assert_error_line

pytestmark = pytest.mark.timeout(300)


def fast_jobs(env: Env, count: int, start: int = 0, max_attempts: int = 3, **config: object) -> list[jobs.Job]:
    """Queue ``count`` jobs of the Hydra-free fast app straight through the API (``config``: sleep, exit_code...)."""
    items = []
    for index in range(start, start + count):
        config_yaml = f"n: {index}\n" + "".join(f"{key}: {value}\n" for key, value in config.items())
        items.append(jobs.NewJob(app="expctl_fastapp", base="config", overrides=(f"n={index}",),
                                 config_yaml=config_yaml, config_hash=compose.config_hash("expctl_fastapp", config_yaml),
                                 name=f"fast {index}", max_attempts=max_attempts))
    return jobs.enqueue(env.engine, items)


def test_app_job(env: Env, *overrides: str, max_attempts: int = 3) -> int:
    """Enqueue one job of the Hydra test app through the CLI; its id."""
    result = env.cli("enqueue", "config", *overrides, f"record={env.record}", "--app", "expctl_testapp",
                     "--max-attempts", str(max_attempts), check=True)
    return int(result.stdout.split("queued job ")[1].split(":")[0])


test_app_job.__test__ = False  # a helper, not a test


def status(env: Env, job_id: int) -> str:
    return jobs.get_job(env.engine, job_id).status


def assert_exactly_once(env: Env, job_ids: list[int]) -> None:
    runs = Counter(int(fields[0]) for fields in env.records())
    assert set(runs) == set(job_ids), env.daemon_logs()[-3000:]
    assert max(runs.values()) == 1, [job for job, count in runs.items() if count > 1]


def test_two_daemons_drain_the_queue_exactly_once(world: Env) -> None:
    created = fast_jobs(world, 20)
    daemons = [world.daemon("--gpus", "none", "--until-empty", "--poll", "0.02") for _ in range(2)]
    for daemon in daemons:
        assert daemon.wait(120) == 0, world.daemon_logs()
    assert_exactly_once(world, [job.id for job in created])
    assert {job.status for job in jobs.list_jobs(world.engine)} == {"succeeded"}
    assert (world.root / "experiments" / jobs.job_folder(created[0]) / "config.yaml").read_text() == "n: 0\n"
    assert os.readlink(world.root / "experiments" / str(created[0].id)) == jobs.job_folder(created[0])  # short name


@pytest.mark.slow
def test_four_daemons_drain_300_jobs_from_one_sqlite_file_exactly_once(world: Env) -> None:
    created = fast_jobs(world, 300)
    daemons = [world.daemon("--gpus", "none", "--until-empty", "--poll", "0.02") for _ in range(4)]
    for daemon in daemons:
        assert daemon.wait(280) == 0, world.daemon_logs()[-3000:]
    assert_exactly_once(world, [job.id for job in created])
    assert all(fields[1] == "1" for fields in world.records())
    assert jobs.counts_by_status(world.engine) == {"succeeded": 300}


@pytest.mark.postgres
def test_daemons_drain_the_queue_exactly_once_on_postgresql(pg_world: Env) -> None:
    created = fast_jobs(pg_world, 20)
    daemons = [pg_world.daemon("--gpus", "none", "--until-empty", "--poll", "0.02") for _ in range(2)]
    for daemon in daemons:
        assert daemon.wait(120) == 0, pg_world.daemon_logs()
    assert_exactly_once(pg_world, [job.id for job in created])
    assert jobs.counts_by_status(pg_world.engine) == {"succeeded": 20}


def test_kill_9_of_a_daemon_kills_its_child_and_another_daemon_resumes_the_job(world: Env) -> None:
    [job] = fast_jobs(world, 1, sleep=60, sleep_on_resume=0)
    victim = world.daemon("--gpus", "none", "--lease", "2", name="victim")
    first = wait_for(lambda: world.records(), 60, "the first attempt to start")[0]
    assert first[:3] == [str(job.id), "1", "0"]
    child_pid = int(first[3])
    assert pid_alive(child_pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    wait_for(lambda: not pid_alive(child_pid), 15, "the orphaned child to die")
    assert status(world, job.id) == "running"  # until its lease expires
    rescuer = world.daemon("--gpus", "none", "--lease", "5", "--until-empty", name="rescuer")
    assert rescuer.wait(120) == 0, world.daemon_logs()
    done = jobs.get_job(world.engine, job.id)
    assert done.status == "succeeded" and done.attempt == 2, world.daemon_logs()
    assert [fields[1:3] for fields in world.records()] == [["1", "0"], ["2", "1"]]  # the rerun is told to resume
    assert any(event["kind"] == "lost" for event in jobs.events(world.engine, job.id))


def test_cancel_kills_the_child_and_its_grandchild(world: Env) -> None:
    pids = world.root / "grandchild.pid"
    job_id = test_app_job(world, "sleep=60", "spawn_grandchild=true", f"grandchild_pid_file={pids}")
    world.daemon("--gpus", "none", "--lease", "3", "--grace", "2")
    child_pid = int(wait_for(lambda: world.records(), 60, "the job to start")[0][3])
    grandchild_pid = int(wait_for(lambda: pids.exists() and pids.read_text().strip(), 30, "the grandchild"))
    assert pid_alive(child_pid) and pid_alive(grandchild_pid)
    result = world.cli("cancel", str(job_id), check=True)
    assert "cancel requested" in result.stdout
    wait_for(lambda: status(world, job_id) == "cancelled", 30, "the job to be cancelled")
    wait_for(lambda: not pid_alive(child_pid) and not pid_alive(grandchild_pid), 10, "child and grandchild to die")
    assert jobs.get_job(world.engine, job_id).end_reason.startswith("cancelled while running")


def test_sigterm_requeues_the_running_job_and_drain_lets_it_finish(world: Env) -> None:
    [job] = fast_jobs(world, 1, sleep=60)
    daemon = world.daemon("--gpus", "none", "--lease", "5", "--grace", "2")
    child_pid = int(wait_for(lambda: world.records(), 60, "the job to start")[0][3])
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert not pid_alive(child_pid)
    requeued = jobs.get_job(world.engine, job.id)
    assert requeued.status == "queued" and requeued.attempts_used == 0  # requeued, attempt not charged
    actions.cancel(world.engine, job.id)
    [drained] = fast_jobs(world, 1, start=1, sleep=1.5, max_attempts=1)
    draining = world.daemon("--gpus", "none", "--drain", "--lease", "5")
    wait_for(lambda: len(world.records()) == 2, 60, "the drained job to start")
    draining.send_signal(signal.SIGTERM)
    assert draining.wait(30) == 0
    assert status(world, drained.id) == "succeeded"


def test_exit_codes_decide_retry_or_failure(world: Env) -> None:
    [never] = fast_jobs(world, 1, exit_code=2)
    [retried] = fast_jobs(world, 1, start=1, exit_code=3, max_attempts=2)
    daemon = world.daemon("--gpus", "none", "--until-empty", "--backoff", "0.1")
    assert daemon.wait(120) == 0, world.daemon_logs()
    runs = Counter(int(fields[0]) for fields in world.records())
    assert runs == {never.id: 1, retried.id: 2}
    assert jobs.get_job(world.engine, never.id).end_reason.startswith("failed: exit code 2")
    assert jobs.get_job(world.engine, retried.id).end_reason == "failed: exit code 3 after 2 attempts"
    log = (world.root / "experiments" / jobs.job_folder(retried) / "job.log").read_text()
    assert log.count(f"job {retried.id} attempt") == 2 and "retry in 0.1 s" in log


def test_child_environment_and_command(world: Env) -> None:
    from expctl.daemon.loop import Daemon, DaemonOptions

    [job] = fast_jobs(world, 1)
    daemon = Daemon(world.engine, DaemonOptions(gpus=[2, 3], workdir=world.root))
    claimed = claims.claim(world.engine, daemon.worker_id, "2,3", 60)
    env = daemon.child_env(claimed)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["EXPCTL_JOB_ID"] == str(job.id) and env["EXPCTL_ATTEMPT"] == "1" and "EXPCTL_RESUME" not in env
    command = daemon.child_command(claimed)
    assert env["EXPCTL_JOB_UUID"] == job.uuid and len(job.uuid) == 32
    assert command[1:3] == ["-m", "expctl_fastapp"]
    assert command[-1] == f"hydra.run.dir=experiments/{job.id}-{job.uuid}"


def test_a_locked_gpu_is_refused(world: Env) -> None:
    holder = world.daemon("--gpus", "0", name="holder")
    wait_for(lambda: (world.root / "locks" / "gpu-0.lock").exists() and jobs.list_workers(world.engine), 30,
             "the first daemon to lock GPU 0")
    result = world.cli("consume", "--gpus", "1,0", "--once")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: GPU 0 is in use by another expctl daemon (lock {world.root}/locks/gpu-0.lock)"
    assert not (world.root / "locks" / "gpu-1.lock").exists() or holder.poll() is None
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(30) == 0
    statuses = {worker["status"] for worker in jobs.list_workers(world.engine)}
    assert statuses == {"stopped"}


def test_until_empty_on_an_empty_queue_exits_at_once(world: Env) -> None:
    started = time.monotonic()
    result = world.cli("consume", "--gpus", "none", "--until-empty")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "queue empty" in result.stderr and os.path.exists(world.root / "queue" / "expctl.db")


class BrokenTracker(Tracker):
    """A tracker whose every hook fails: the queue must not notice."""

    name = "broken"

    def __getattribute__(self, attribute: str):  # noqa: ANN204
        if attribute.startswith(("on_", "child_env")):
            raise RuntimeError(f"tracker down ({attribute})")
        return super().__getattribute__(attribute)


def test_a_failing_tracker_never_stops_the_queue(world: Env, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from expctl.daemon.loop import Daemon, DaemonOptions
    from expctl.tracking.hooks import SafeTracker

    created = fast_jobs(world, 2)
    monkeypatch.setenv("EXPCTL_TEST_RECORD", str(world.record))
    monkeypatch.setenv("EXPCTL_LOCK_DIR", str(world.root / "locks"))
    monkeypatch.setenv("PYTHONPATH", world.vars["PYTHONPATH"])
    with caplog.at_level("WARNING", logger="expctl"):
        daemon = Daemon(world.engine, DaemonOptions(until_empty=True, workdir=world.root, poll_s=0.02,
                                                    apps=("expctl_fastapp",)),
                        SafeTracker(BrokenTracker()))
        assert daemon.run() == 0
    assert {job.status for job in jobs.list_jobs(world.engine)} == {"succeeded"}
    assert_exactly_once(world, [job.id for job in created])
    warnings = [record.getMessage() for record in caplog.records if "tracker broken failed" in record.getMessage()]
    assert len(warnings) == len(set(warnings)) >= 2  # logged once per hook, not once per job


def test_first_use_by_several_processes_migrates_once(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    from expctl_helpers import REPO

    url = f"sqlite:///{tmp_path / 'fresh' / 'expctl.db'}"
    code = f"from expctl.store import db; db.create_engine({url!r})"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    for process in processes:
        _out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    from expctl.store import db

    engine = db.create_engine(url)
    assert db.current_revision(engine) == db.SCHEMA_REVISION
    engine.dispose()


def _stopped(pid: int) -> bool:
    from pathlib import Path

    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")


@pytest.mark.parametrize("path", ["kill -9", "SIGTERM", "child fails"])
def test_a_cancel_sticks_when_the_daemon_dies_stops_or_the_child_fails_first(any_world: Env, path: str) -> None:
    """The daemon is frozen (SIGSTOP) so that it never sees the cancel; then it is killed, stopped, or its
    child fails. Whichever way the job leaves the daemon, it ends cancelled and never runs again."""
    world = any_world
    [job] = fast_jobs(world, 1, sleep=60, sleep_on_resume=0)
    daemon = world.daemon("--gpus", "none", "--lease", "2", "--grace", "2", "--backoff", "0.1", "--until-empty",
                          name="first")
    child_pid = int(wait_for(lambda: world.records(), 60, "the job to start")[0][3])
    daemon.send_signal(signal.SIGSTOP)
    wait_for(lambda: _stopped(daemon.pid), 10, "the daemon to freeze")
    assert actions.cancel(world.engine, job.id) == "cancel requested"
    if path == "kill -9":
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        wait_for(lambda: not pid_alive(child_pid), 15, "the orphaned child to die")
        assert status(world, job.id) == "running"  # until its lease expires
    elif path == "SIGTERM":
        daemon.send_signal(signal.SIGTERM)
        daemon.send_signal(signal.SIGCONT)
        assert daemon.wait(30) == 0, world.daemon_logs()
    else:
        os.kill(child_pid, signal.SIGKILL)  # exit -9 would be retried after 0.1 s
        wait_for(lambda: not pid_alive(child_pid), 15, "the child to die")
        daemon.send_signal(signal.SIGCONT)
        assert daemon.wait(30) == 0, world.daemon_logs()
    rescuer = world.daemon("--gpus", "none", "--lease", "5", "--until-empty", "--backoff", "0.1", name="rescuer")
    assert rescuer.wait(120) == 0, world.daemon_logs()
    done = jobs.get_job(world.engine, job.id)
    assert (done.status, done.attempt, done.cancel_requested) == ("cancelled", 1, True), world.daemon_logs()
    assert done.end_reason.startswith("cancelled") and done.finished_at is not None
    assert len(world.records()) == 1  # it never ran again
    kinds = [event["kind"] for event in jobs.events(world.engine, job.id)]
    assert kinds[-1] == "cancelled" and "requeued" not in kinds and "retry" not in kinds, kinds
    # Only a user's retry runs it again.
    world.run("retry", str(job.id), check=True)
    assert world.daemon("--gpus", "none", "--until-empty", name="after-retry").wait(120) == 0
    assert status(world, job.id) == "succeeded" and len(world.records()) == 2


def test_a_daemon_runs_only_the_apps_it_trusts(any_world: Env) -> None:
    """A job naming an app outside ``--apps`` is never started; it stays queued and list/show say why."""
    world = any_world
    [trusted] = fast_jobs(world, 1)
    untrusted = test_app_job(world, "tag=untrusted")
    # The daemon's default trusts only asr.train: neither test app runs.
    default = world.cli("consume", "--gpus", "none", "--until-empty", timeout=120)
    assert default.returncode == 0 and "not in --apps asr.train" in default.stderr, default.stderr
    assert world.records() == [] and status(world, trusted.id) == "queued"
    daemon = world.daemon("--gpus", "none", "--until-empty", "--apps", "expctl_fastapp", name="fast-only")
    assert daemon.wait(120) == 0, world.daemon_logs()
    assert [int(fields[0]) for fields in world.records()] == [trusted.id]
    waiting = jobs.get_job(world.engine, untrusted)
    assert (waiting.status, waiting.attempt, waiting.started_at) == ("queued", 0, None)
    assert waiting.end_reason.startswith("not started: app 'expctl_testapp' is not trusted by worker")
    assert "untrusted" in [event["kind"] for event in jobs.events(world.engine, untrusted)]
    world.vars["COLUMNS"] = "400"
    assert "not started: app 'expctl_testapp' is not trusted" in world.cli("list", check=True).stdout
    assert "not started: app 'expctl_testapp'" in world.cli("show", str(untrusted), check=True).stdout
    # A daemon that trusts it runs it (the reason is gone once claimed).
    assert world.daemon("--gpus", "none", "--until-empty", "--apps", "expctl_testapp", name="t").wait(120) == 0
    done = jobs.get_job(world.engine, untrusted)
    assert (done.status, done.end_reason) == ("succeeded", "succeeded")
    assert_error_line(world.cli("consume", "--gpus", "none", "--apps", "os;rm"), "bad --app")


@pytest.mark.parametrize("way", ["cancel", "cancel, SIGTERM ignored", "job ends", "daemon kill -9"])
def test_nothing_the_job_started_outlives_it_not_even_setsid_helpers(world: Env, way: str) -> None:
    """Helpers that left the job's process group (setsid, a double-fork daemon) die with the job."""
    pid_file = world.root / "escaped.pids"
    config_yaml = (f"pid_file: {pid_file}\nsleep: {2 if way == 'job ends' else 60}\n"
                   f"ignore_sigterm: {'true' if 'ignored' in way else 'false'}\n")
    [job] = jobs.enqueue(world.engine, [jobs.NewJob(
        app="expctl_escape_app", base="config", overrides=(), config_yaml=config_yaml,
        config_hash=compose.config_hash("expctl_escape_app", config_yaml), name="escape", max_attempts=1)])
    daemon = world.daemon("--gpus", "none", "--grace", "1", "--until-empty", "--apps", "expctl_escape_app")
    escaped = wait_for(lambda: pid_file.exists() and len(pid_file.read_text().split()) == 2 and
                       [int(pid) for pid in pid_file.read_text().split()], 60, "both helpers to start")
    assert all(pid_alive(pid) for pid in escaped)
    from expctl.daemon.child import _children_of

    [shepherd] = _children_of(daemon.pid)  # leads the job's session and process group
    assert os.getsid(shepherd) == shepherd
    assert all(os.getsid(pid) != shepherd and os.getpgid(pid) != shepherd for pid in escaped)  # they left it
    if way == "daemon kill -9":
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        wait_for(lambda: not any(pid_alive(pid) for pid in escaped), 15, "the escaped helpers to die")
        assert status(world, job.id) == "running"  # until its lease expires
        return
    if way != "job ends":
        actions.cancel(world.engine, job.id)
    assert daemon.wait(60) == 0, world.daemon_logs()
    wait_for(lambda: not any(pid_alive(pid) for pid in escaped), 10, "the escaped helpers to die")
    done = jobs.get_job(world.engine, job.id)
    assert done.status == ("succeeded" if way == "job ends" else "cancelled"), world.daemon_logs()
    if "ignored" in way:
        assert done.end_reason == "cancelled while running (killed by signal 9 (SIGKILL))"


@pytest.mark.postgres
def test_the_listen_watcher_reconnects_after_postgresql_drops_it(pg_world: Env) -> None:
    """pg_terminate_backend on the daemon's LISTEN connection: it is rebuilt, and new jobs still wake the daemon."""
    from sqlalchemy import text

    world = pg_world
    daemon = world.daemon("--gpus", "none", "--poll", "1", name="listener")
    worker_id = wait_for(lambda: jobs.list_workers(world.engine) and jobs.list_workers(world.engine)[0]["id"], 60,
                         "the daemon to register")
    name = f"expctl-watch {worker_id}"[:63]

    def listener() -> int | None:
        with world.engine.connect() as connection:
            return connection.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :name AND query LIKE 'LISTEN%'"),
                {"name": name}).scalar()

    first = wait_for(listener, 30, "the LISTEN connection")
    with world.engine.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
    second = wait_for(lambda: (pid := listener()) not in (None, first) and pid, 30, "a new LISTEN connection")
    assert second != first and daemon.poll() is None
    logs = world.daemon_logs()
    assert "change watcher failed" in logs and "change watcher reconnected" in logs, logs
    [job] = fast_jobs(world, 1)
    wait_for(lambda: status(world, job.id) == "succeeded", 30, "the new job to run")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


@pytest.mark.parametrize("change", ["deleted while a job runs", "replaced while idle"])
def test_a_daemon_stops_when_its_sqlite_queue_file_is_deleted_or_replaced(world: Env, change: str) -> None:
    """An open SQLite connection keeps working on a deleted file (split brain): the daemon notices and stops."""
    from expctl.store import db

    path = world.root / "queue" / "expctl.db"
    running = change.startswith("deleted")
    if running:
        fast_jobs(world, 1, sleep=60)
    daemon = world.daemon("--gpus", "none", "--grace", "2", name="watched")
    if running:
        child_pid = int(wait_for(lambda: world.records(), 60, "the job to start")[0][3])
        world.engine.dispose()
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    else:
        wait_for(lambda: jobs.list_workers(world.engine), 60, "the daemon to register")
        other = world.root / "other.db"
        db.create_engine(f"sqlite:///{other}").dispose()
        world.engine.dispose()
        for suffix in ("-wal", "-shm"):  # or SQLite would replay the old log onto the new file
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        os.replace(other, path)
    assert daemon.wait(30) == 3, world.daemon_logs()
    logs = world.daemon_logs()
    assert f"the queue database {path} was {'deleted' if running else 'replaced by another file'}: stopping" in logs
    if running:
        assert not pid_alive(child_pid)
        assert "nothing recorded" in (world.root / "experiments" / "1" / "job.log").read_text()
    else:
        assert jobs.list_jobs(world.engine) == [] and jobs.list_workers(world.engine) == []  # nothing written there


def test_an_exit_the_daemon_could_not_record_is_committed_by_the_reaper_not_rerun(world: Env) -> None:
    """The database is locked when the child exits and its daemon dies before it can record the end:
    the shepherd's exit record (experiments/<id>/exit.json) lets the next daemon commit it."""
    import sqlite3

    [job] = fast_jobs(world, 1, sleep=1.5)
    victim = world.daemon("--gpus", "none", "--lease", "2", name="victim")
    wait_for(lambda: world.records(), 60, "the job to start")
    locker = sqlite3.connect(world.root / "queue" / "expctl.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # an external writer stalls the database
    record = world.root / "experiments" / jobs.job_folder(job) / "exit.json"
    try:
        wait_for(record.exists, 30, "the shepherd's exit record")
        victim.send_signal(signal.SIGKILL)  # it never records the end
        victim.wait(10)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert status(world, job.id) == "running"
    rescuer = world.daemon("--gpus", "none", "--lease", "5", "--until-empty", name="rescuer")
    assert rescuer.wait(120) == 0, world.daemon_logs()
    done = jobs.get_job(world.engine, job.id)
    assert (done.status, done.attempt, done.exit_code) == ("succeeded", 1, 0), world.daemon_logs()
    assert "recorded by its shepherd" in done.end_reason
    assert len(world.records()) == 1  # it did not run again
    assert [event["kind"] for event in jobs.events(world.engine, job.id)][-1] == "recovered"


def test_an_unwritable_work_folder_pauses_the_daemon_and_burns_no_attempt(world: Env) -> None:
    created = fast_jobs(world, 2, max_attempts=1)
    blocker = world.root / "experiments"
    blocker.write_text("a file where the jobs' folders should go\n")
    daemon = world.daemon("--gpus", "none", "--until-empty", "--pause", "1", name="paused")
    wait_for(lambda: "pausing 1 s" in world.daemon_logs(), 60, "the daemon to pause")
    time.sleep(2.5)  # it tries again after each pause, charging nothing
    assert {(job.status, job.attempts_used) for job in jobs.list_jobs(world.engine)} == {("queued", 0)}
    assert "cannot write the work folder" in world.daemon_logs()
    blocker.unlink()
    assert daemon.wait(120) == 0, world.daemon_logs()
    assert {(job.status, job.attempts_used) for job in jobs.list_jobs(world.engine)} == {("succeeded", 1)}
    assert_exactly_once(world, [job.id for job in created])
