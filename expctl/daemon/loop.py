"""The consumer daemon: lock GPUs, claim one job at a time, run it, record how it ended.

Single-threaded on purpose: the heartbeat runs in the main loop while the child runs, so the
shepherd is always forked from the main thread (``PR_SET_PDEATHSIG`` follows the forking thread).
The one exception: a tracker call runs in a helper thread (``expctl.tracking.hooks.SafeTracker``), so a
tracker that hangs is given up after ``EXPCTL_TRACKER_TIMEOUT`` while the claimed job keeps its
heartbeat; such a thread may still be blocked in a socket read when the shepherd is forked (the
shepherd only makes plain system calls, so it takes none of that thread's locks). Idle polling is cheap: SQLite's
``PRAGMA data_version`` (changes only when another connection commits) or PostgreSQL's
LISTEN/NOTIFY; a real claim is tried only when something changed, or every ``SAFETY_CLAIM_S``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from expctl.daemon import child as child_process
from expctl.daemon.watch import WAKE_SLICE_S, ChangeWatcher
from expctl.daemon.gpus import GpuLocks, format_gpus
from expctl.errors import UserError, first_line
from expctl.files import atomic_path, write_atomically
from expctl.specs.compose import DEFAULT_APP
from expctl.store import claims, jobs
from expctl.store.db import DatabaseFileWatch
from expctl.tracking.hooks import SafeTracker
from expctl.tracking.trackers import get_tracker

logger = logging.getLogger("expctl.daemon")

SAFETY_CLAIM_S = 1.0  # try a claim at least this often even when nothing seems to change
TRACKING_SYNC_S = 30.0  # how often an idle daemon retries the tracking of jobs whose tracking failed
MAX_HEARTBEAT_S = 2.0
DATABASE_CHECK_S = 1.0  # how often the SQLite queue file is checked (a stat)
EXIT_DATABASE_LOST = 3


@dataclass
class DaemonOptions:
    """What ``expctl consume`` was asked to do."""

    gpus: list[int] = field(default_factory=list)
    until_empty: bool = False
    once: bool = False
    lease_s: float = 60.0
    poll_s: float = 0.05
    drain: bool = False
    workdir: Path = field(default_factory=Path.cwd)
    grace_s: float = 10.0
    backoff_s: float = claims.DEFAULT_BACKOFF_S
    pause_s: float = 30.0  # no claims for this long after the work folder could not be written
    # The apps (python -m modules) this daemon runs: anyone who can write to the queue names the
    # module, so a daemon must not run every installed module on its GPUs.
    apps: tuple[str, ...] = (DEFAULT_APP,)

    def validate(self) -> None:
        """Refuse nonsense values."""

        if self.lease_s < 1.0:
            raise UserError(f"--lease must be at least 1 second, not {self.lease_s:g}")
        if not 0.001 <= self.poll_s <= 60:
            raise UserError(f"--poll must be between 0.001 and 60 seconds, not {self.poll_s:g}")
        if self.grace_s < 0 or self.backoff_s < 0 or self.pause_s < 0:
            raise UserError("--grace, --backoff and --pause must not be negative")
        if not self.apps:
            raise UserError("--apps names no app: give e.g. --apps asr.train")


class Daemon:
    """One consumer: ``run()`` returns when stopped, or when the queue is empty with --until-empty."""

    def __init__(self, engine: Engine, options: DaemonOptions, tracker: SafeTracker | None = None) -> None:
        options.validate()
        self.engine = engine
        self.options = options
        self.tracker = tracker or get_tracker("none")
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.gpu_text = format_gpus(options.gpus)
        self.locks = GpuLocks(options.gpus)
        self.signals_received = 0
        self.jobs_run = 0
        self._next_reap = 0.0
        self._next_touch = 0.0
        self._next_tracking_sync = 0.0
        self._tracking_refused: set[int] = set()
        self.database = DatabaseFileWatch(engine)
        self.fatal: str | None = None  # why the daemon must stop (its queue database is gone)
        self._next_database_check = 0.0
        self._paused_until = 0.0  # no claims before this (monotonic): the work folder could not be written

    # -------------------------------------------------------------- signals

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals_received += 1
        logger.info("got %s: %s", signal.Signals(signum).name,
                    "stopping" if self.signals_received == 1 else "stopping now")

    @property
    def stopping(self) -> bool:
        """Asked to stop claiming."""
        return self.signals_received > 0 or self.fatal is not None

    @property
    def stop_child(self) -> bool:
        """Asked to stop the running child too (at once, or on a second signal with --drain)."""
        return self.signals_received > (1 if self.options.drain else 0) or self.fatal is not None

    def _check_database(self) -> None:
        """Stop (child included) when the SQLite queue file was deleted, replaced or made read-only:
        the job's state could no longer be recorded where other processes look for it."""
        current = time.monotonic()
        if self.fatal is not None or current < self._next_database_check:
            return
        self._next_database_check = current + DATABASE_CHECK_S
        problem = self.database.problem()
        if problem is not None:
            self.fatal = problem
            logger.error("%s: stopping (a running job is stopped too; restore the database, or enqueue again "
                         "and its checkpoints let it resume)", problem)

    # -------------------------------------------------------------- main loop

    def run(self) -> int:
        """Consume jobs; the exit status for the CLI."""
        self.locks.acquire()
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        watcher: ChangeWatcher | None = None
        try:
            claims.register_worker(self.engine, self.worker_id, self.host, os.getpid(), self.gpu_text or "none")
            logger.info("worker %s started (GPUs %s, apps %s)", self.worker_id, self.gpu_text or "none",
                    ",".join(self.options.apps))
            watcher = ChangeWatcher(self.engine, name=f"expctl-watch {self.worker_id}")
            try_claim = True
            last_claim_try = 0.0
            while not self.stopping:
                self._check_database()
                if self.fatal is not None:
                    break
                self._periodic()
                current = time.monotonic()
                if current < self._paused_until:
                    watcher.wait(min(WAKE_SLICE_S, self._paused_until - current), lambda: self.stopping)
                    try_claim = True  # look again once the pause is over
                    continue
                if try_claim or current - last_claim_try >= SAFETY_CLAIM_S:
                    last_claim_try = current
                    job = self._claim()
                    if job is not None:
                        self._run_job(job)
                        self.jobs_run += 1
                        if self.options.once:
                            break
                        continue
                    if self.options.until_empty and not claims.has_unfinished(self.engine, self.options.apps):
                        self._mark_untrusted()
                        logger.info("queue empty: exiting%s", " (jobs of untrusted apps left queued)"
                                    if claims.has_unfinished(self.engine) else "")
                        break
                try_claim = watcher.wait(self.options.poll_s, lambda: self.stopping)
        finally:
            if watcher is not None:
                watcher.close()
            if self.fatal is None:  # not into a deleted or foreign queue
                self._sync_tracking(final=True)
                try:
                    claims.stop_worker(self.engine, self.worker_id)
                except SQLAlchemyError as error:
                    logger.warning("could not record the worker's exit: %s", error)
            self.locks.release()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        logger.info("worker %s stopped after %d job(s)", self.worker_id, self.jobs_run)
        return EXIT_DATABASE_LOST if self.fatal is not None else 0

    def _claim(self) -> jobs.Job | None:
        try:
            return claims.claim(self.engine, self.worker_id, self.gpu_text, self.options.lease_s, self.options.apps)
        except SQLAlchemyError as error:
            logger.warning("claim failed (will retry): %s", first_line(error))
            return None

    def _periodic(self) -> None:
        current = time.monotonic()
        if current >= self._next_reap:
            self._next_reap = current + max(0.5, min(self.options.lease_s / 2, 10.0))
            try:
                for job, outcome in claims.requeue_expired(self.engine, self.worker_id, self._recorded_exit,
                                                         self.options.backoff_s):
                    logger.info("job %d: %s", job.id, outcome.reason)
                    self._track_end(job, outcome, self.job_dir(job) / "job.log")
            except SQLAlchemyError as error:
                logger.warning("requeueing expired jobs failed: %s", first_line(error))
            self._mark_untrusted()
        if self.tracker.unsynced and current >= self._next_tracking_sync:
            self._next_tracking_sync = current + TRACKING_SYNC_S
            self._sync_tracking()
        if current >= self._next_touch:
            self._next_touch = current + 10.0
            try:
                claims.touch_worker(self.engine, self.worker_id)
            except SQLAlchemyError as error:
                logger.warning("worker heartbeat failed: %s", first_line(error))

    def _mark_untrusted(self) -> None:
        """Say (once per job) why queued jobs of apps this daemon does not trust are not started."""
        try:
            for job_id, app in claims.mark_untrusted(self.engine, self.worker_id, self.options.apps):
                logger.warning("job %d: not started: app %r is not in --apps %s", job_id, app,
                               ",".join(self.options.apps))
        except SQLAlchemyError as error:
            logger.warning("marking jobs of untrusted apps failed: %s", first_line(error))

    # -------------------------------------------------------------- one job

    def job_dir(self, job: jobs.Job) -> Path:
        """``<workdir>/experiments/<job id>-<job uuid>``: the job's own folder, whatever the queue database."""
        return self.options.workdir / "experiments" / jobs.job_folder(job)

    def child_command(self, job: jobs.Job) -> list[str]:
        """The app's command line: its frozen config, Hydra's run dir set to the job's folder."""
        folder = self.job_dir(job)
        return [
            sys.executable, "-m", job.app,
            "--config-path", str(folder.resolve()), "--config-name", "config",
            f"hydra.run.dir=experiments/{jobs.job_folder(job)}",
        ]

    def _link_short_name(self, job: jobs.Job) -> None:
        """``experiments/<id>`` -> ``<id>-<uuid>``, a convenience for people (scripts use ``job_dir`` of
        ``expctl show --json``): it names the newest job with that id of any queue; a real folder of that
        name (a job queued before uuids) is never touched."""
        if not job.uuid:
            return
        link = self.options.workdir / "experiments" / str(job.id)
        target = jobs.job_folder(job)
        try:
            if link.is_symlink():
                if os.readlink(link) == target:
                    return
            elif link.exists():
                return
            with atomic_path(link) as temporary:
                os.symlink(target, temporary)
        except OSError as error:
            logger.debug("job %d: no %s link: %s", job.id, link, error)

    def child_env(self, job: jobs.Job) -> dict[str, str]:
        """The daemon's environment plus the job's GPUs and identity (docs/contract.md)."""
        env = dict(os.environ)
        env.update(
            CUDA_VISIBLE_DEVICES=self.gpu_text,
            CUDA_DEVICE_ORDER="PCI_BUS_ID",
            EXPCTL_JOB_ID=str(job.id),
            EXPCTL_JOB_UUID=job.uuid or "",  # the job's identity across queue databases (its checkpoints record it)
            EXPCTL_ATTEMPT=str(job.attempt),
            EXPCTL_WORKER_ID=self.worker_id,
        )
        env.update(self.tracker.child_env(job))
        return env

    def exit_record(self, job: jobs.Job) -> Path:
        """Where the shepherd writes the app's exit code (``experiments/<job>/exit.json``)."""
        return self.job_dir(job) / "exit.json"

    def _recorded_exit(self, job: jobs.Job) -> int | None:
        """The exit code that this attempt's shepherd recorded in the job's folder, if any (for the reaper).
        Only this machine's folder is looked at: daemons on other machines have their own."""

        try:
            record = json.loads(self.exit_record(job).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("job") != job.id or record.get("attempt") != job.attempt \
                or record.get("worker") != job.worker_id or not isinstance(record.get("returncode"), int):
            return None
        return record["returncode"]

    def _write_log(self, path: Path, line: str) -> None:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"=== expctl {time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def _run_job(self, job: jobs.Job) -> None:
        folder = self.job_dir(job)
        log_path = folder / "job.log"
        logger.info("job %d (%s): attempt %d", job.id, job.name, job.attempt)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / "config.yaml", job.config_yaml)
            self.exit_record(job).unlink(missing_ok=True)
            self._write_log(log_path, f"job {job.id} attempt {job.attempt} on {self.worker_id}, "
                                      f"GPUs {self.gpu_text or 'none'}")
            self._link_short_name(job)
        except OSError as error:
            # The folder's fault, not the job's: no attempt is burnt; the daemon pauses instead.
            reason = f"cannot write the work folder {folder}: {error.strerror or error}"
            logger.error("job %d: %s; back to the queue (attempt not charged); pausing %g s", job.id, reason,
                         self.options.pause_s)
            outcome = self._guarded(lambda: claims.requeue_own(self.engine, job, self.worker_id, reason))
            if outcome is not None:
                self._track_end(job, outcome, None)
            self._paused_until = time.monotonic() + self.options.pause_s
            return
        job = self._claim_tracking(job)
        child = child_process.start(
            self.child_command(job), env=self.child_env(job), cwd=self.options.workdir,
            log_path=log_path, death_grace_s=min(self.options.grace_s, 5.0),
            exit_record=self.exit_record(job).resolve(),
            record_fields={"job": job.id, "attempt": job.attempt, "worker": self.worker_id},
        )
        self._supervise(job, child, log_path)

    def _supervise(self, job: jobs.Job, child: child_process.Child, log_path: Path) -> None:
        beat_s = max(0.2, min(self.options.lease_s / 3, MAX_HEARTBEAT_S))
        next_beat = time.monotonic() + beat_s
        cancelled = False
        while True:
            code = child.wait(max(0.0, min(0.2, next_beat - time.monotonic())))
            if code is not None:
                break
            self._check_database()
            if self.fatal is not None:
                code = child.terminate(self.options.grace_s)
                self._write_log(log_path, f"{self.fatal}: child stopped ({claims.describe_exit(code)}); "
                                          "nothing recorded")
                return
            if self.stop_child:
                code = child.terminate(self.options.grace_s)
                reason = f"daemon {self.worker_id} stopped ({claims.describe_exit(code)})"
                self._write_log(log_path, reason)
                outcome = self._guarded(lambda: claims.requeue_own(self.engine, job, self.worker_id, reason))
                if outcome is not None:
                    logger.info("job %d: %s", job.id, "requeued" if outcome.status == jobs.QUEUED else outcome.reason)
                    if outcome.status != jobs.QUEUED:
                        self._write_log(log_path, outcome.reason)
                    self._track_end(job, outcome, log_path)
                return
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + beat_s
                beat = self._guarded(lambda: claims.heartbeat(self.engine, job, self.worker_id, self.options.lease_s))
                if beat is None:
                    continue  # the database is unreachable: keep the child, try again
                if not beat.won:
                    code = child.terminate(self.options.grace_s)
                    logger.warning("job %d: lease lost to another worker; child stopped", job.id)
                    self._write_log(log_path, f"lease lost; child stopped ({claims.describe_exit(code)})")
                    return
                if beat.cancel_requested:
                    cancelled = True
                    code = child.terminate(self.options.grace_s)
                    break
        self._finish(job, code, cancelled=cancelled, log_path=log_path)

    def _finish(self, job: jobs.Job, code: int, *, cancelled: bool, log_path: Path | None) -> None:
        outcome = None
        for _ in range(30):  # a finish must not be lost to a busy database
            try:
                outcome = claims.finish(self.engine, job, self.worker_id, code, cancelled=cancelled,
                                      backoff_base_s=self.options.backoff_s)
                break
            except SQLAlchemyError as error:
                logger.warning("job %d: recording its end failed (retrying): %s", job.id, first_line(error))
                time.sleep(1.0)
        if outcome is None:
            logger.warning("job %d: no longer ours (lease lost); its end was not recorded", job.id)
            return
        logger.info("job %d: %s", job.id, outcome.reason)
        if log_path is not None:
            self._write_log(log_path, outcome.reason)
        self._track_end(job, outcome, log_path)
        if self.tracker.unsynced and not self.tracker.paused:
            self._sync_tracking()

    # -------------------------------------------------------------- tracking

    def _claim_tracking(self, job: jobs.Job) -> jobs.Job:
        """Tell the tracker the job starts; store a run it had to create now (it was down at enqueue).
        The job's lease is kept alive while the tracker answers (it is given up after its timeout)."""
        beat_s = max(0.2, min(self.options.lease_s / 3, MAX_HEARTBEAT_S))
        next_beat = time.monotonic() + beat_s

        def keep_lease() -> None:
            nonlocal next_beat
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + beat_s
                self._guarded(lambda: claims.heartbeat(self.engine, job, self.worker_id, self.options.lease_s))
                self._check_database()

        self.tracker.while_waiting = keep_lease
        try:
            created = self.tracker.on_claim(job)
        finally:
            self.tracker.while_waiting = None
        if created and created.get("run_id"):
            run_id, uri = created["run_id"], created.get("uri")
            self._guarded(lambda: jobs.set_tracking(self.engine, job.id, run_id, uri))
            job = dataclasses.replace(job, tracking_run_id=run_id, tracking_uri=uri)
        return job

    def _with_current_tracking(self, job: jobs.Job) -> jobs.Job:
        """The job with the run id stored now (``expctl tracking sync`` may have created it meanwhile)."""
        current = self._guarded(lambda: jobs.get_job(self.engine, job.id))
        if current is None or current.tracking_run_id == job.tracking_run_id:
            return job
        return dataclasses.replace(job, tracking_run_id=current.tracking_run_id, tracking_uri=current.tracking_uri)

    def _track_end(self, job: jobs.Job, outcome: claims.Outcome, log_path: Path | None) -> None:
        """The run follows the job: SCHEDULED again when it was requeued, else ended like the job."""
        job = self._with_current_tracking(job)
        if outcome.status == jobs.QUEUED:
            self.tracker.on_requeue(job, outcome.reason)
        else:
            log = str(log_path) if log_path is not None and log_path.is_file() else None
            self.tracker.on_finish(job, outcome.status, outcome.reason, log)

    def _sync_tracking(self, final: bool = False) -> None:
        """Retry the tracking of jobs whose tracking failed (MLflow was down); say what is left."""
        for job_id in sorted(self.tracker.unsynced):
            if self.tracker.paused:
                break
            job = self._guarded(lambda: jobs.get_job(self.engine, job_id))
            if job is None:
                break
            report = self.tracker.sync(job, self.job_dir(job))
            if report is None:
                if self.tracker.paused:
                    break  # down again: later
                self.tracker.unsynced.discard(job_id)  # refused for this job: retrying will not help
                self._tracking_refused.add(job_id)
                continue
            if report.run_id and report.run_id != job.tracking_run_id:
                self._guarded(lambda: jobs.set_tracking(self.engine, job.id, report.run_id, report.uri))
            logger.info("job %d: tracking caught up (%s)", job.id, "; ".join(report.actions) or "in sync")
        left = self.tracker.unsynced | self._tracking_refused
        if final and left:
            ids = " ".join(str(job_id) for job_id in sorted(left))
            logger.warning("the %s runs of job(s) %s are out of date: run `expctl tracking sync %s` once %s "
                           "is reachable", self.tracker.name, ids, ids, self.tracker.name)

    def _guarded(self, action: Any) -> Any:
        try:
            return action()
        except SQLAlchemyError as error:
            logger.warning("database error (will retry): %s", first_line(error))
            return None

