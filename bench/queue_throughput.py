"""Benchmark of expctl's queue: claim throughput and claim-to-child-start latency.

Prints:
  * claims/s with 4 concurrent claimer processes through expctl's API (``expctl.store.claims.claim``:
    BEGIN IMMEDIATE, UPDATE ... RETURNING, a claim event, the worker row);
  * claims/s of a raw ``sqlite3`` loop (one UPDATE ... RETURNING per BEGIN IMMEDIATE transaction)
    with 4 processes, on the same schema and durability (WAL, synchronous=NORMAL);
  * their ratio (aim >= 0.3);
  * the median latency from a job becoming claimable (its enqueue committed) to its child's first
    line of Python, with an idle daemon (``expctl consume --poll``), and separately the
    interpreter's own start-up (spawn to first line of the same trivial app); aim: latency
    <= 50 ms + interpreter start.

Run: ``.venv/bin/python bench/queue.py`` (options: --jobs, --samples, --poll, --postgres URL).
"""

from __future__ import annotations

import sys
from pathlib import Path

import argparse
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]
APPS = REPO / "tests" / "apps"
sys.path.insert(0, str(REPO))

from expctl.store import claims, db, jobs
from expctl.specs import compose

CLAIMERS = 4


def _new_jobs(count: int, prefix: str = "") -> list[jobs.NewJob]:
    items = []
    for index in range(count):
        config_yaml = f"bench: {prefix}{index}\n"
        items.append(jobs.NewJob(app="expctl_fastapp", base="config", overrides=(), config_yaml=config_yaml,
                                 config_hash=compose.config_hash("expctl_fastapp", config_yaml), name=f"bench {index}"))
    return items


def _api_claimer(url: str, name: str, start: "multiprocessing.synchronize.Event", results: "multiprocessing.Queue") -> None:
    engine = db.create_engine(url)
    claims.register_worker(engine, name, "bench", os.getpid(), "none")
    start.wait()
    count = 0
    began = time.perf_counter()
    while claims.claim(engine, name, "", 3600) is not None:
        count += 1
    results.put((count, began, time.perf_counter()))
    engine.dispose()


def _raw_claimer(path: str, name: str, start: "multiprocessing.synchronize.Event", results: "multiprocessing.Queue") -> None:
    connection = sqlite3.connect(path, isolation_level=None, timeout=60)
    connection.execute("PRAGMA busy_timeout = 60000")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    statement = (
        "UPDATE jobs SET status = 'running', worker_id = ?, attempt = attempt + 1, lease_expires_at = ?, "
        "started_at = ?, updated_at = ? WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND not_before <= ? "
        "ORDER BY priority DESC, id LIMIT 1) RETURNING id"
    )
    start.wait()
    count = 0
    began = time.perf_counter()
    while True:
        now = time.time()
        connection.execute("BEGIN IMMEDIATE")
        row = connection.execute(statement, (name, now + 3600, now, now, now)).fetchone()
        connection.execute("COMMIT")
        if row is None:
            break
        count += 1
    results.put((count, began, time.perf_counter()))
    connection.close()


def _throughput(target, argument: str, total: int) -> float:  # noqa: ANN001
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    processes = [context.Process(target=target, args=(argument, f"claimer-{index}", start, results))
                 for index in range(CLAIMERS)]
    for process in processes:
        process.start()
    time.sleep(3.0)  # let every claimer import and connect before the clock starts
    start.set()
    outcomes = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(60)
    claimed = sum(count for count, _began, _ended in outcomes)
    if claimed != total:
        raise SystemExit(f"claimed {claimed} of {total} jobs: the claim is broken")
    elapsed = max(ended for _c, _b, ended in outcomes) - min(began for _c, began, _e in outcomes)
    return claimed / elapsed


def claim_throughput(folder: Path, total: int, postgres_url: str | None) -> None:
    api_url = f"sqlite:///{folder / 'api.db'}"
    raw_path = folder / "raw.db"
    for url in (api_url, f"sqlite:///{raw_path}"):
        engine = db.create_engine(url)
        jobs.enqueue(engine, _new_jobs(total))
        engine.dispose()
    api = _throughput(_api_claimer, api_url, total)
    raw = _throughput(_raw_claimer, str(raw_path), total)
    print(f"claim throughput, {CLAIMERS} processes, {total} jobs, SQLite WAL synchronous=NORMAL:")
    print(f"  expctl API (UPDATE..RETURNING + event):  {api:8.0f} claims/s")
    print(f"  raw sqlite3 UPDATE ... RETURNING loop:   {raw:8.0f} claims/s")
    print(f"  ratio API / raw:                          {api / raw:8.2f}   (aim >= 0.3)")
    if postgres_url:
        engine = db.create_engine(postgres_url)
        with engine.begin() as connection:
            from sqlalchemy import text

            connection.execute(text("UPDATE jobs SET status = 'cancelled' WHERE status IN ('queued', 'running')"))
        jobs.enqueue(engine, _new_jobs(total, prefix=f"{time.time()}-"))
        engine.dispose()
        pg = _throughput(_api_claimer, postgres_url, total)
        print(f"  expctl API on PostgreSQL (SKIP LOCKED):   {pg:8.0f} claims/s")


def _child_env(record: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(APPS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["EXPCTL_TEST_RECORD"] = str(record)
    env["EXPCTL_TRACKING"] = "none"  # measure the queue, not MLflow
    return env


def _wait_lines(record: Path, count: int, timeout: float = 60.0) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.exists():
            lines = [line.split() for line in record.read_text().splitlines() if line.strip()]
            if len(lines) >= count:
                return lines
        time.sleep(0.02)  # the app stamps its own start time: polling slowly costs no accuracy
    raise SystemExit(f"timed out waiting for {count} runs in {record}")


def _interpreter_start_once(record: Path, env: dict[str, str]) -> float:
    """Seconds from spawning ``python -m expctl_fastapp`` to its first line."""
    count = len(_wait_lines(record, 0)) if record.exists() else 0
    began = time.time()
    subprocess.run([sys.executable, "-m", "expctl_fastapp"], env=env, check=True)
    return float(_wait_lines(record, count + 1)[count][4]) - began


def latency(folder: Path, samples: int, poll: float) -> tuple[list[float], list[float], list[float]]:
    """Per sample, with one idle daemon: enqueue commit -> child's first line, enqueue commit ->
    claim, and (measured right before, under the same machine load) the interpreter's start-up."""
    url = f"sqlite:///{folder / 'latency.db'}"
    record = folder / "latency.txt"
    startup_record = folder / "startup.txt"
    engine = db.create_engine(url)
    env = _child_env(record)
    env.update(EXPCTL_DB_URL=url, EXPCTL_LOCK_DIR=str(folder / "locks"), EXPCTL_WORKDIR=str(folder))
    startup_env = _child_env(startup_record)
    daemon = subprocess.Popen([sys.executable, "-m", "expctl", "consume", "--gpus", "none", "--poll", str(poll),
                               "--apps", "expctl_fastapp"],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delays, to_claim, startups = [], [], []
    try:
        time.sleep(3.0)  # the daemon is up and idle
        for index in range(samples):
            startups.append(_interpreter_start_once(startup_record, startup_env))
            time.sleep(0.05 + (index % 7) * 0.013)  # sample different phases of the daemon's poll
            [item] = _new_jobs(1, prefix=f"latency-{index}-")
            [job] = jobs.enqueue(engine, [item])
            committed = time.time()
            started = float(_wait_lines(record, index + 1)[index][4])
            delays.append(started - committed)
            to_claim.append((jobs.get_job(engine, job.id).started_at or committed) - committed)
            while jobs.counts_by_status(engine).get("running"):
                time.sleep(0.01)
    finally:
        daemon.terminate()
        daemon.wait(30)
        engine.dispose()
    return delays, to_claim, startups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs claimed per throughput run")
    parser.add_argument("--samples", type=int, default=40, help="latency samples")
    parser.add_argument("--poll", type=float, default=0.05, help="the daemon's --poll for the latency run")
    parser.add_argument("--postgres", default=None, help="also measure API claims on this PostgreSQL URL "
                        "(its jobs table is used: give a scratch database or search_path)")
    options = parser.parse_args()
    print(f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="expctl-bench-") as name:
        folder = Path(name)
        claim_throughput(folder, options.jobs, options.postgres)
        delays, to_claim, startups = latency(folder, options.samples, options.poll)
    median = statistics.median(delays)
    startup = statistics.median(startups)
    print(f"claim-to-child-start latency, idle daemon, --poll {options.poll:g} s, {len(delays)} jobs:")
    print(f"  median {median * 1000:6.1f} ms   (p90 {sorted(delays)[int(len(delays) * 0.9) - 1] * 1000:.1f} ms,"
          f" max {max(delays) * 1000:.1f} ms)")
    print(f"    enqueue commit -> claimed (polling):  median {statistics.median(to_claim) * 1000:6.1f} ms")
    print(f"    claimed -> child's first line:        median "
          f"{statistics.median(d - c for d, c in zip(delays, to_claim)) * 1000:6.1f} ms")
    print(f"  interpreter start (spawn to first line of the same app, interleaved): median {startup * 1000:6.1f} ms")
    overhead = statistics.median(d - s for d, s in zip(delays, startups))
    print(f"  latency minus interpreter start (median of pairs): {overhead * 1000:6.1f} ms   (aim <= 50 ms)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine inflates every figure)")


if __name__ == "__main__":
    main()
