"""A tracker that hangs never holds the queue: an MLflow "server" that accepts connections and never
answers (a real local socket) costs enqueue and each claim at most EXPCTL_TRACKER_TIMEOUT, and the
claimed job keeps its heartbeat meanwhile, so a second daemon never finds its lease expired."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from expctl.store import jobs

from expctl_helpers import Env, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """http://127.0.0.1:PORT: accepts every connection, reads what comes, never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _address = listener.accept()
            except OSError:
                continue
            held.append(connection)  # open, silent

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()
    assert held, "nobody connected: the test did not exercise a hanging tracker"


def test_a_silent_tracker_neither_blocks_enqueue_nor_the_heartbeat_of_a_claimed_job(
        any_world: Env, silent_server: str) -> None:
    world = any_world
    world.vars.update(EXPCTL_TRACKING="mlflow", MLFLOW_TRACKING_URI=silent_server, EXPCTL_TRACKER_TIMEOUT="3")
    started = time.monotonic()
    result = world.cli("enqueue", "config", "sleep=1", "tag=a", "--app", "expctl_fastapp", check=True)
    assert time.monotonic() - started < 25, "enqueue waited for the silent tracker"  # MLflow alone: ~35 s
    assert "queued job 1" in result.stdout
    assert "could not track job(s) 1" in result.stderr and "expctl tracking sync 1" in result.stderr

    # the daemon that claims it talks to the silent tracker; a second one (no tracker) would requeue
    # the job as lost the moment its 2 s lease expired without a heartbeat
    hanging = world.daemon("--gpus", "none", "--until-empty", "--lease", "2", name="hanging")
    wait_for(lambda: jobs.get_job(world.engine, 1).status == "running", 60, "the claim")
    world.vars.update(EXPCTL_TRACKING="none")
    watcher = world.daemon("--gpus", "none", "--until-empty", "--lease", "2", name="watcher")
    assert hanging.wait(120) == 0 and watcher.wait(120) == 0, world.daemon_logs()

    job = jobs.get_job(world.engine, 1)
    kinds = [event["kind"] for event in jobs.events(world.engine, 1)]
    assert (job.status, job.attempt) == ("succeeded", 1), world.daemon_logs()
    assert kinds == ["enqueued", "claimed", "succeeded"], world.daemon_logs()
    [run] = world.records()  # it ran once, started soon after its claim (not after MLflow's ~35 s of retries)
    claimed_at = jobs.events(world.engine, 1)[1]["time"]
    assert float(run[4]) - claimed_at < 15, world.daemon_logs()
    logs = world.daemon_logs()
    assert "did not answer within 3 s" in logs and "expctl tracking sync 1" in logs


def test_a_big_sweep_waits_for_a_silent_tracker_once(world: Env, silent_server: str) -> None:
    """The runs of a sweep are created as one batch, given up after the timeout without progress."""
    # 10 s, not 3: on a loaded machine MLflow's import alone can outlast 3 s, and the tracker would give up
    # before it ever connected (the fixture checks that it did). Job by job would still take 400 s.
    world.vars.update(EXPCTL_TRACKING="mlflow", MLFLOW_TRACKING_URI=silent_server, EXPCTL_TRACKER_TIMEOUT="10")
    started = time.monotonic()
    result = world.cli("enqueue", "config", "tag=x", "n=range(0,40)", "--app", "expctl_fastapp", check=True)
    assert time.monotonic() - started < 60, "enqueue waited for the silent tracker job by job"
    assert "sweep 1: queued 40 jobs (1-40)" in result.stdout
    assert "expctl tracking sync 1 2 3" in result.stderr
    assert [job.tracking_run_id for job in jobs.list_jobs(world.engine)] == [None] * 40
