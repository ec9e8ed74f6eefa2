"""Shared fixtures: every async test runs on asyncio and on trio; SQL store URLs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# In CI the property tests draw the same examples on every run, so a submission's CI result
# does not depend on luck; locally they explore new examples each run (and keep failures in
# .hypothesis/ to replay).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")

#: Where the PostgreSQL tests connect; `.ci/run` sets it.
POSTGRES_URL = os.environ.get(
    "BULKPIPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


def postgres_or_skip() -> None:
    """Skip when PostgreSQL is unreachable, except in CI (``CI=true``), where that fails."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")


def drop_prefixed(prefix: str) -> None:
    """Drop every table and sequence whose name starts with ``prefix``."""
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'S') "
            "AND c.relname LIKE %s",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
        for name, kind in rows:
            what = "TABLE" if kind == "r" else "SEQUENCE"
            conn.execute(f'DROP {what} IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQL store URL: a SQLite file, or PostgreSQL with a unique table prefix."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    postgres_or_skip()
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}prefix={prefix}"
    finally:
        drop_prefixed(prefix)
