"""Engine creation and schema migration for the queue database (SQLite or PostgreSQL).

SQLite: WAL, a busy timeout, ``synchronous=NORMAL``, and every transaction opened with
``BEGIN IMMEDIATE`` through SQLAlchemy's documented pysqlite event hooks (pysqlite would defer
BEGIN, and deferred read-then-write transactions fail with "database is locked" under load).
PostgreSQL: psycopg 3. Migrations (Alembic, inside this package) run automatically on first use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from expctl.errors import UserError, first_line

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 60_000
# Any constant: PostgreSQL advisory lock key that serializes concurrent migrations.
PG_MIGRATION_LOCK_KEY = 0x657870_63746C
# The newest migration (tests check it against Alembic's head), so that a plain
# start-up need not import Alembic to see the schema is current.
SCHEMA_REVISION = "0002_job_folders"
# Execution option marking a connection that only reads (plain deferred BEGIN on SQLite).
READ_ONLY_OPTION = "expctl_read_only"
# Alembic's ``context`` and ``op`` are module-wide proxies: two migrations at once in one process (the
# queue's, and an MLflow store's opened by a helper thread) would run each other's scripts. Both hold this.
ALEMBIC_LOCK = threading.Lock()


def default_url() -> str:
    """``EXPCTL_DB_URL`` or SQLite at ``queue/expctl.db`` under the current directory."""
    url = os.environ.get("EXPCTL_DB_URL")
    if url:
        return url
    return f"sqlite:///{Path.cwd() / 'queue' / 'expctl.db'}"


def is_sqlite(engine: Engine) -> bool:
    """Whether the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def _configure_sqlite(engine: Engine) -> None:
    """WAL + busy timeout + synchronous=NORMAL, and BEGIN IMMEDIATE for every transaction."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from pysqlite; the "begin" hook below emits our own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")  # a reader: no write lock needed
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str | None = None, *, migrate: bool = True) -> Engine:
    """An engine for ``url`` (default: :func:`default_url`), migrated to the newest schema."""
    url = url or default_url()
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise UserError(f"bad database URL {url!r}: {error}") from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"cannot create the folder of {path}: {error.strerror}") from None
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = sqlalchemy.create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as error:
        raise UserError(f"cannot use database URL {url!r}: {error}") from None
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    if migrate:
        upgrade(engine, only_if_needed=True)
    return engine


def sqlite_path(engine: Engine) -> Path | None:
    """The SQLite database file of ``engine`` (None for PostgreSQL, memory or URI databases)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


class DatabaseFileWatch:
    """Notices that a SQLite queue file was deleted, replaced (another inode), or made unwritable.

    An open SQLite connection keeps working on a deleted file, so a daemon would go on alone
    while every other process uses a new, empty queue; the daemon checks this and stops.
    """

    def __init__(self, engine: Engine) -> None:
        self.path = sqlite_path(engine)
        self.identity = self._identity() if self.path is not None else None

    def _identity(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self.path)  # type: ignore[arg-type]
        except FileNotFoundError:
            return None
        return status.st_dev, status.st_ino

    def problem(self) -> str | None:
        """What is wrong with the file now, or None (always None for PostgreSQL)."""
        if self.path is None:
            return None
        identity = self._identity()
        if identity is None:
            return f"the queue database {self.path} was deleted"
        if self.identity is not None and identity != self.identity:
            return f"the queue database {self.path} was replaced by another file"
        if not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK):
            return f"the queue database {self.path} (or its folder) is no longer writable"
        return None


def read_connection(engine: Engine) -> Connection:
    """A connection for reads only (SQLite: deferred BEGIN, so it never waits for the write lock)."""
    return engine.connect().execution_options(**{READ_ONLY_OPTION: True})


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration's revision id."""
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise RuntimeError("expctl ships no migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (None for an empty database)."""
    with read_connection(engine) as connection:
        if not sqlalchemy.inspect(connection).has_table("alembic_version"):
            return None
        revisions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        connection.rollback()
    return revisions[0] if len(revisions) == 1 else None


def upgrade(engine: Engine, *, only_if_needed: bool = False) -> str:
    """Apply pending migrations in one transaction (serialized across processes); return the head."""
    try:
        if only_if_needed and current_revision(engine) == SCHEMA_REVISION:
            return SCHEMA_REVISION
        from alembic import command

        head = head_revision()
        with engine.begin() as connection:  # BEGIN IMMEDIATE on SQLite: one migrator at a time
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY})
            with ALEMBIC_LOCK:
                command.upgrade(_alembic_config(connection), "head")
    except OperationalError as error:
        raise UserError(f"cannot open the queue database {engine.url!r}: {first_line(error)}") from None
    except SQLAlchemyError as error:
        raise UserError(f"cannot migrate the queue database {engine.url!r}: {first_line(error)}") from None
    return head
