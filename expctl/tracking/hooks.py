"""Experiment-tracking hooks (MLflow by default); the queue never depends on them.

The daemon and ``enqueue`` call a :class:`Tracker` at each step of a job's life. Every call goes
through :class:`SafeTracker`, which logs a tracker's first failure per hook and carries on: a
tracker can never stop the queue. It also remembers the jobs whose tracking failed, so that the
daemon (or ``expctl tracking sync``) can bring their runs up to date later. Trackers are
chosen in :mod:`expctl.tracking.trackers`.

A tracker that hangs (a server that accepts connections and never answers) cannot hold the queue
either: each hook runs in a helper thread and is given up after ``EXPCTL_TRACKER_TIMEOUT`` seconds
(default 10; 0 runs hooks inline), while ``while_waiting`` (the daemon: the claimed job's
heartbeat) keeps being called. Until a given-up call returns, further hooks are skipped at once
(their jobs are marked for a later sync), so stuck calls never pile up. A run that a given-up call
creates late is not stored on its job; the sync creates the job's run then.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from expctl.errors import UserError

logger = logging.getLogger("expctl.tracking")

DEFAULT_TIMEOUT_S = 10.0
WAIT_SLICE_S = 0.1  # how often ``while_waiting`` runs while a hook is out


class TrackingPaused(ConnectionError):
    """The tracker failed moments ago and does not try again yet (already reported: not logged)."""


class Tracker:
    """No-op tracker: the interface a tracking backend implements.

    ``job`` is an :class:`expctl.store.jobs.Job` (frozen dataclass of the job's row).
    """

    name = "none"

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        """A job was enqueued; may return ``{"run_id": ..., "uri": ...}`` to store on the job."""
        return None

    def warm_up(self) -> None:
        """Get ready to track (imports, connections); called in a helper thread before a batch of hooks."""

    def on_enqueue_many(self, jobs: list[Any], done: Callable[[Any, dict[str, str]], None],
                        configs: dict[int, dict] | None = None) -> None:
        """Many jobs were enqueued at once: call ``done(job, {"run_id": ..., "uri": ...})`` for each run
        created (from any thread). ``configs``: each job's config as data, by job id, when the caller
        has it (else it is parsed from ``job.config_yaml``). The default calls :meth:`on_enqueue` job by job."""
        for job in jobs:
            created = self.on_enqueue(job)
            if created:
                done(job, created)

    def on_claim(self, job: Any) -> dict[str, str] | None:
        """A daemon claimed the job (``job.attempt`` is the new attempt); the child starts next.
        May return ``{"run_id": ..., "uri": ...}`` when it created the job's run."""
        return None

    def child_env(self, job: Any) -> dict[str, str]:
        """Extra environment variables for the job's child (e.g. ``MLFLOW_RUN_ID``)."""
        return {}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        """The job ended: ``status`` is succeeded, failed or cancelled."""

    def on_requeue(self, job: Any, reason: str) -> None:
        """The job went back to the queue without finishing (retry, lease expired, daemon stopped)."""

    def sync(self, job: Any, folder: Path | None) -> Any:
        """Bring the job's run up to date with the job (``folder``: its ``experiments/<id>``).
        Returns a report with ``run_id``, ``uri``, ``created`` and ``actions``, or None."""
        return None


class SafeTracker(Tracker):
    """Wraps a tracker: exceptions are logged once per hook and swallowed.

    ``unsynced`` holds the ids of jobs whose tracking failed; a successful :meth:`sync` clears one.
    """

    def __init__(self, inner: Any, timeout_s: float | None = None) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.unsynced: set[int] = set()
        self._reported: set[str] = set()
        self.timeout_s = timeout_from_environment() if timeout_s is None else timeout_s
        self.while_waiting: Callable[[], None] | None = None  # called every WAIT_SLICE_S while a hook is out
        self._busy: threading.Thread | None = None  # a given-up call that has not returned yet
        self._warming: threading.Thread | None = None  # warm_up() in progress; the next hook waits for it

    @property
    def busy(self) -> bool:
        """Whether a call that was given up on (timeout) is still out."""
        if self._busy is not None and not self._busy.is_alive():
            self._busy = None
        return self._busy is not None

    @property
    def paused(self) -> bool:
        """Whether the tracker failed moments ago, or still hangs, and would refuse a call now."""
        return self.busy or bool(getattr(self.inner, "paused", False))

    def _call(self, hook: str, default: Any, *args: Any, progress: Callable[[], int] | None = None,
              keywords: dict[str, Any] | None = None) -> Any:
        job_id = getattr(args[0], "id", None) if args else None
        if self.busy:  # the tracker hangs: skip at once, the job's tracking is caught up later
            if isinstance(job_id, int):
                self.unsynced.add(job_id)
            return default
        try:
            return self._run(hook, args, progress, keywords)
        except Exception as error:  # noqa: BLE001 - a tracker must never stop the queue
            if isinstance(job_id, int):
                self.unsynced.add(job_id)
            if not isinstance(error, TrackingPaused) and hook not in self._reported:
                self._reported.add(hook)
                logger.warning("tracker %s failed in %s (further failures of this hook are not logged): %s",
                               self.name, hook, error)
            return default

    def warm_up(self) -> None:
        """Start the tracker's ``warm_up`` in a helper thread (its errors surface in the next hook)."""
        if self.timeout_s <= 0 or self._warming is not None or not hasattr(self.inner, "warm_up"):
            return

        def warm() -> None:
            try:
                self.inner.warm_up()
            except Exception:  # noqa: BLE001 - the next hook meets the same error and reports it
                pass

        self._warming = threading.Thread(target=warm, name="expctl-tracker-warm-up", daemon=True)
        self._warming.start()

    def _run(self, hook: str, args: tuple, progress: Callable[[], int] | None = None,
             keywords: dict[str, Any] | None = None) -> Any:
        """The hook's result; in a helper thread given up on after ``timeout_s`` (TimeoutError); with
        ``progress`` (a count that grows as a batch advances), after ``timeout_s`` without progress."""
        keywords = keywords or {}
        if self.timeout_s <= 0:
            return getattr(self.inner, hook)(*args, **keywords)
        outcome: dict[str, Any] = {}
        warming = self._warming

        def call() -> None:
            try:
                if warming is not None:  # inside the timed call: a warm-up that hangs counts against it
                    warming.join()
                outcome["value"] = getattr(self.inner, hook)(*args, **keywords)
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=call, name=f"expctl-tracker-{hook}", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.timeout_s
        done = progress() if progress is not None else 0
        while True:
            thread.join(max(0.0, min(WAIT_SLICE_S, deadline - time.monotonic())))
            if progress is not None and progress() != done:
                done, deadline = progress(), time.monotonic() + self.timeout_s
            if not thread.is_alive() or time.monotonic() >= deadline:
                break
            if self.while_waiting is not None:
                try:
                    self.while_waiting()
                except Exception as error:  # noqa: BLE001
                    logger.warning("while waiting for tracker %s: %s", self.name, error)
        if thread.is_alive():
            self._busy = thread
            raise TimeoutError(f"{self.name} did not answer within {self.timeout_s:g} s (EXPCTL_TRACKER_TIMEOUT); "
                               "jobs keep running, their tracking is caught up once it answers")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def on_enqueue(self, job: Any) -> dict[str, str] | None:
        return self._call("on_enqueue", None, job)

    def on_claim(self, job: Any) -> dict[str, str] | None:
        return self._call("on_claim", None, job)

    def on_enqueue_many(self, jobs: list[Any], done: Callable[[Any, dict[str, str]], None] | None = None,
                        configs: dict[int, dict] | None = None) -> dict[int, dict[str, str]]:
        """The runs created for ``jobs`` (by job id), in one go; the others are marked unsynced. Given up
        when no run was created for the timeout: what was created by then is kept."""
        created: dict[int, dict[str, str]] = {}
        lock = threading.Lock()

        def record(job: Any, result: dict[str, str]) -> None:
            with lock:
                created[job.id] = result
            if done is not None:
                done(job, result)

        def count() -> int:
            with lock:
                return len(created)

        failed = object()
        outcome = self._call("on_enqueue_many", failed, list(jobs), record, progress=count,
                             keywords={"configs": configs} if configs else None)
        with lock:
            result = dict(created)
        if outcome is failed:  # a tracker that creates no runs (none) leaves nothing to catch up
            self.unsynced.update(job.id for job in jobs if job.id not in result)
        return result

    def child_env(self, job: Any) -> dict[str, str]:
        try:  # local: no network, so no thread (and not skipped while the tracker hangs)
            env = self.inner.child_env(job)
        except Exception as error:  # noqa: BLE001 - a tracker must never stop the queue
            if "child_env" not in self._reported:
                self._reported.add("child_env")
                logger.warning("tracker %s failed in child_env (further failures of this hook are not logged): %s",
                               self.name, error)
            env = {}
        return {str(key): str(value) for key, value in (env or {}).items()}

    def on_finish(self, job: Any, status: str, reason: str, log_path: str | None) -> None:
        self._call("on_finish", None, job, status, reason, log_path)

    def on_requeue(self, job: Any, reason: str) -> None:
        self._call("on_requeue", None, job, reason)

    def sync(self, job: Any, folder: Path | None) -> Any:
        report = self._call("sync", None, job, folder)
        if report is not None:
            self.unsynced.discard(job.id)
        return report


def timeout_from_environment() -> float:
    """``EXPCTL_TRACKER_TIMEOUT`` seconds (default 10; 0: hooks run inline, without a timeout)."""
    text = os.environ.get("EXPCTL_TRACKER_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise UserError(f"EXPCTL_TRACKER_TIMEOUT={text[:40]!r}: expected seconds between 0 and 86400")
    return value
