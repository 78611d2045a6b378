"""Helpers for expctl's tests: an isolated world (folder, database, locks), CLI and daemon runners."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps"
# A daemon runs only the apps it trusts (default: asr.train): test daemons trust the test apps.
TEST_APPS = ("--apps", "expctl_fastapp,expctl_testapp")
if str(REPO) not in sys.path:  # expctl importable even before the editable install knows it
    sys.path.insert(0, str(REPO))


class Env:
    """An isolated expctl world: its own folder, database, GPU lock folder and child environment."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.root = root
        self.db_url = db_url
        self.record = root / "record.txt"
        self.vars = dict(os.environ)
        self.vars.update(
            PYTHONPATH=os.pathsep.join([str(REPO), str(APPS), str(REPO / "tests" / "expctl" / "apps"),
                                        os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            EXPCTL_DB_URL=db_url,
            EXPCTL_LOCK_DIR=str(root / "locks"),
            EXPCTL_WORKDIR=str(root),
            EXPCTL_TEST_RECORD=str(self.record),
            EXPCTL_TRACKING="none",
            HYDRA_FULL_ERROR="0",
        )
        self.vars.pop("CUDA_VISIBLE_DEVICES", None)
        self.daemons: list[subprocess.Popen] = []
        self._engine = None

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``python -m expctl ARGS`` in the world's folder."""
        result = subprocess.run(
            [sys.executable, "-m", "expctl", *args], cwd=self.root, env=self.vars,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"expctl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run the CLI's ``main()`` in this process (same code path as the console script, no
        interpreter start-up), with this world's environment and folder."""
        from expctl import cli

        saved_environ, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
        stdout, stderr = io.StringIO(), io.StringIO()
        code: int = 0
        try:
            os.environ.clear()
            os.environ.update(self.vars)
            os.chdir(self.root)
            sys.argv = ["expctl", *args]
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    cli.main()
                except SystemExit as exit_request:
                    code = exit_request.code if isinstance(exit_request.code, int) else int(exit_request.code is not None)
        finally:
            if cli.state._engine is not None:
                cli.state._engine.dispose()
                cli.state._engine = None
            os.environ.clear()
            os.environ.update(saved_environ)
            os.chdir(saved_cwd)
            sys.argv = saved_argv
        result = subprocess.CompletedProcess(list(args), code, stdout.getvalue(), stderr.getvalue())
        if check and code != 0:
            raise AssertionError(f"expctl {' '.join(args)} exited {code}:\n{result.stderr}")
        return result

    def daemon(self, *args: str, name: str | None = None) -> subprocess.Popen:
        """Start ``expctl consume ARGS`` in the background (killed at teardown if still running); it
        trusts the test apps (``TEST_APPS``) unless ARGS name ``--apps``."""
        log = open(self.root / f"daemon-{name or len(self.daemons)}.log", "ab")
        trust = () if "--apps" in args else TEST_APPS
        process = subprocess.Popen(
            [sys.executable, "-m", "expctl", "consume", *trust, *args], cwd=self.root, env=self.vars,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        self.daemons.append(process)
        return process

    def daemon_logs(self) -> str:
        """Everything the daemons wrote (for assertion messages)."""
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.root.glob("daemon-*.log")))

    @property
    def engine(self):  # noqa: ANN201
        """An engine on the world's database (migrated)."""
        if self._engine is None:
            from expctl.store import db

            self._engine = db.create_engine(self.db_url)
        return self._engine

    def records(self) -> list[list[str]]:
        """Lines the test apps appended: ``job_id attempt resume pid start_time [tag]``."""
        if not self.record.exists():
            return []
        return [line.split() for line in self.record.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        """Kill leftover daemons, dispose the engine."""
        for process in self.daemons:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
        if self._engine is not None:
            self._engine.dispose()


def wait_for(condition: Callable[[], object], timeout: float, message: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")




CONTRACT = REPO / "docs" / "contract.md"


def contract_table(heading: str) -> list[list[str]]:
    """The rows of the table under ``## heading`` in docs/contract.md (the app <-> queue contract), as
    cells with their backticks removed: both sides' contract tests read what they check from there."""
    section = CONTRACT.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    cells = [[cell.strip().replace("`", "") for cell in row] for row in rows]
    return [row for row in cells[1:] if not row[0].startswith("---")]  # without the header and its rule
