"""Benchmark of ``expctl enqueue``: how fast specs of the real training app (asr.train) are queued.

Prints, for each case, the wall time of the whole command as a user runs it (interpreter start,
composition by the app's Hydra in a few child processes, one insert transaction, MLflow runs) and
jobs per second, without tracking and with MLflow tracking into a local SQLite store (the default
``sqlite:///mlflow.db``; the runs of a chunk of jobs are written in one transaction) that holds one
run already (as after a user's first enqueue; ``--new-store`` also times a sweep into a new store,
whose ~60 Alembic migrations MLflow runs first):

  * a sweep of N jobs (``seed=range(0,N)``, default 1,000; aim <= 5 s);
  * a queue file of M lines (default 10,000; aim <= 60 s), each line its own spec.

Each case runs in a fresh temporary folder (its own queue database and MLflow store). Run:
``.venv/bin/python bench/enqueue_throughput.py [--sweep N] [--file-lines M] [--tracking none,mlflow] [--new-store]``
(0 skips a case).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _enqueue(folder: Path, arguments: list[str], tracking: str = "none") -> float:
    env = dict(os.environ, EXPCTL_DB_URL=f"sqlite:///{folder / 'queue' / 'expctl.db'}", EXPCTL_TRACKING=tracking,
               MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", PYTHONPATH=str(REPO))
    started = time.perf_counter()
    # run in the case's folder: a local MLflow store puts its runs' artifacts under ./mlruns
    result = subprocess.run([sys.executable, "-m", "expctl", "enqueue", *arguments], cwd=folder, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0 or "could not track" in result.stderr:
        raise SystemExit(f"expctl enqueue {' '.join(arguments[:3])}... failed:\n{result.stderr[-2000:]}")
    return seconds


def _line(what: str, jobs: int, seconds: float, aim: str) -> None:
    print(f"{what:<50} {jobs:>7,} jobs {seconds:8.2f} s {jobs / seconds:9.1f} jobs/s   ({aim})", flush=True)


def _store_ready(folder: Path, tracking: str) -> None:
    """Enqueue one job first (untimed): a store that exists already, as after a user's first enqueue."""
    if tracking != "none":
        _enqueue(folder, ["config", "seed=-1"], tracking)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=int, default=1000)
    parser.add_argument("--file-lines", type=int, default=10000)
    parser.add_argument("--tracking", default="none,mlflow", help="trackers to measure, comma-separated")
    parser.add_argument("--new-store", action="store_true",
                        help="also time a sweep into a new MLflow store (its tables are created first: seconds)")
    arguments = parser.parse_args()
    print(f"expctl enqueue of asr.train specs on {os.cpu_count()} CPU(s)")
    for tracking in arguments.tracking.split(","):
        what = "no tracking" if tracking == "none" else f"{tracking} (SQLite store)"
        if arguments.sweep and arguments.new_store and tracking != "none":
            with tempfile.TemporaryDirectory() as folder:
                seconds = _enqueue(Path(folder), ["config", f"seed=range(0,{arguments.sweep})"], tracking)
            _line(f"sweep of {arguments.sweep:,}, {what}, new store", arguments.sweep, seconds, "aim: 1,000 in <= 5 s")
        if arguments.sweep:
            with tempfile.TemporaryDirectory() as folder:
                _store_ready(Path(folder), tracking)
                seconds = _enqueue(Path(folder), ["config", f"seed=range(0,{arguments.sweep})"], tracking)
            _line(f"sweep seed=range(0,{arguments.sweep}), {what}", arguments.sweep, seconds, "aim: 1,000 in <= 5 s")
        if arguments.file_lines:
            with tempfile.TemporaryDirectory() as folder:
                _store_ready(Path(folder), tracking)
                queue = Path(folder) / "many.txt"
                queue.write_text("".join(f"config|seed={index}|optimizer.learning_rate={0.001 + index * 1e-7:.7f}\n"
                                         for index in range(arguments.file_lines)))
                seconds = _enqueue(Path(folder), ["--file", str(queue)], tracking)
            _line(f"queue file of {arguments.file_lines:,} lines, {what}", arguments.file_lines, seconds,
                  "aim: 10,000 in <= 60 s")


if __name__ == "__main__":
    main()
