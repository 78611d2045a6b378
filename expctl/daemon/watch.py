"""Waiting cheaply for the queue to change: SQLite's ``PRAGMA data_version`` (changes only when another
connection commits) or PostgreSQL's LISTEN/NOTIFY, so that an idle daemon tries a real claim only when
something changed (:mod:`expctl.daemon.loop`)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from sqlalchemy.engine import Engine

from expctl.errors import first_line
from expctl.store import jobs

logger = logging.getLogger("expctl.daemon")
WAKE_SLICE_S = 0.25  # longest uninterrupted idle wait (signals are noticed between slices)


class ChangeWatcher:
    """Tells cheaply whether the queue may have changed since the last look.

    When its connection breaks (PostgreSQL restarted, ``pg_terminate_backend``), the daemon polls
    by claiming meanwhile and the watcher is rebuilt every ``RECONNECT_S`` seconds, so an idle
    daemon does not stay on the costly polling for good.
    """

    RECONNECT_S = 5.0

    def __init__(self, engine: Engine, name: str = "") -> None:
        self.engine = engine
        self.name = name  # PostgreSQL application_name of the LISTEN connection (what pg_stat_activity shows)
        self._raw: Any = None
        self._last: Any = None
        self._listening = False
        self._retry_at: float | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._raw = self.engine.raw_connection()
            if self.engine.dialect.name == "sqlite":
                self._last = self._data_version()
            elif self.engine.dialect.name == "postgresql":
                driver = self._raw.driver_connection
                driver.rollback()
                driver.autocommit = True
                if self.name:
                    driver.execute("SELECT set_config('application_name', %s, false)", (self.name[:63],))
                driver.execute(f"LISTEN {jobs.NOTIFY_CHANNEL}")
                self._listening = True
            if self._retry_at is not None:
                logger.info("change watcher reconnected")
            self._retry_at = None
        except Exception as error:  # noqa: BLE001 - polling still works without a watcher
            logger.warning("change watcher unavailable (%s); polling by claiming, retrying in %.0f s",
                           first_line(error), self.RECONNECT_S)
            self.close()
            self._retry_at = time.monotonic() + self.RECONNECT_S

    def _data_version(self) -> int:
        cursor = self._raw.cursor()
        try:
            cursor.execute("PRAGMA data_version")
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    def wait(self, timeout: float, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait up to ``timeout`` seconds; True if the queue may have changed. Waits in slices of
        at most ``WAKE_SLICE_S`` so that a stop request (a signal) is noticed promptly."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or should_stop():
                return self._changed(0.0)
            if self._changed(min(left, WAKE_SLICE_S)):
                return True

    def _changed(self, timeout: float) -> bool:
        if self._raw is None and self._retry_at is not None and time.monotonic() >= self._retry_at:
            self._open()
            if self._raw is not None:
                return True  # notifications may have been missed meanwhile: look once
        if self._raw is None:
            time.sleep(timeout)
            return True
        try:
            if self._listening:
                driver = self._raw.driver_connection
                return any(True for _ in driver.notifies(timeout=timeout, stop_after=1))
            if timeout > 0:
                time.sleep(timeout)
            version = self._data_version()
            changed = version != self._last
            self._last = version
            return changed
        except Exception as error:  # noqa: BLE001
            logger.warning("change watcher failed (%s); polling by claiming, reconnecting in %.0f s",
                           first_line(error), self.RECONNECT_S)
            self.close()
            self._retry_at = time.monotonic() + self.RECONNECT_S
            return True

    def close(self) -> None:
        """Give the connection back."""
        if self._raw is not None:
            try:
                if self._listening:
                    self._raw.driver_connection.execute(f"UNLISTEN {jobs.NOTIFY_CHANNEL}")
                    self._raw.driver_connection.execute("RESET application_name")
                    self._raw.driver_connection.autocommit = False
                self._raw.close()
            except Exception:  # noqa: BLE001 - a broken connection is dropped, not pooled again
                try:
                    self._raw.invalidate()
                except Exception:  # noqa: BLE001
                    pass
        self._raw = None
        self._listening = False
