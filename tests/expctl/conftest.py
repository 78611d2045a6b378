"""Fixtures for expctl's tests: isolated folders, CLI/daemon runners, SQLite and PostgreSQL URLs.

PostgreSQL: the URL comes from EXPCTL_TEST_PG_URL (default: the project's local server); each
test gets a fresh schema (search_path) that is dropped afterwards. Where no server answers the
test is skipped with the reason, or fails when EXPCTL_REQUIRE_PG=1 (as in .ci/run).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from expctl_helpers import Env

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_base_url() -> str:
    return os.environ.get("EXPCTL_TEST_PG_URL") or DEFAULT_PG_URL


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("EXPCTL_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL required (EXPCTL_REQUIRE_PG=1) but {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL whose search_path is a fresh schema, dropped after the test."""
    try:
        import psycopg
        from sqlalchemy.engine import make_url
    except ImportError as error:
        _pg_unavailable(f"cannot import psycopg ({error})")
    base = _pg_base_url()
    libpq = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = psycopg.connect(libpq, connect_timeout=3, autocommit=True)
    except Exception as error:  # noqa: BLE001
        _pg_unavailable(f"no server answers at {make_url(base)!r} ({str(error).strip().splitlines()[0]})")
    schema = f"expctl_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in the test's folder."""
    return f"sqlite:///{tmp_path / 'queue' / 'expctl.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each claim test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue' / 'expctl.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> Iterator[Env]:
    """An isolated expctl world on SQLite."""
    env = Env(tmp_path, sqlite_url)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def pg_world(tmp_path: Path, pg_url: str) -> Iterator[Env]:
    """An isolated expctl world on PostgreSQL."""
    env = Env(tmp_path, pg_url)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def any_world(tmp_path: Path, any_db_url: str) -> Iterator[Env]:
    """An isolated expctl world, on SQLite and on PostgreSQL."""
    env = Env(tmp_path, any_db_url)
    try:
        yield env
    finally:
        env.close()
