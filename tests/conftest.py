"""Shared fixtures: every async test runs on asyncio and on trio; SQL store URLs; markers.

The markers ``postgres``, ``subprocess`` and ``slow`` (registered in pyproject.toml) let a run
leave out parts: ``-m "not slow"`` for a fast local run, ``-m "not postgres"`` without a server.
``postgres`` is set here, on every test of a ``test_postgres*`` module and every test run with a
fixture or parameter whose value is ``"postgres"`` (the ``store_url`` fixture below, the store
fixtures of other modules); ``subprocess`` and ``slow`` are set in the test files. Two guards
keep the marks true: a test that reaches :func:`postgres_or_skip` without ``postgres``, or starts
a process without ``subprocess``, fails and says which mark it lacks.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from bulkpipe.store import JobStore
from bulkpipe.stores import open_store

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


#: The test being set up, run or torn down (None between tests), for the two guards.
_current: pytest.Item | None = None


def _needs_postgres(item: pytest.Item) -> bool:
    if item.path.name.startswith("test_postgres"):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "postgres" in callspec.params.values()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the PostgreSQL server ``postgres``."""
    for item in items:
        if _needs_postgres(item):
            item.add_marker(pytest.mark.postgres)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    global _current
    _current = item
    try:
        return (yield)
    finally:
        _current = None


def _require_mark(name: str, needs: str) -> None:
    """Fail the current test when it lacks marker ``name`` although it ``needs`` what it marks."""
    item = _current
    if item is not None and item.get_closest_marker(name) is None:
        pytest.fail(
            f"{item.nodeid} {needs} but is not marked {name!r}: add @pytest.mark.{name} "
            f"(or a pytestmark in its module) so that -m 'not {name}' leaves it out",
            pytrace=False,
        )


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        _require_mark("subprocess", "starts a process")


sys.addaudithook(_audit)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


def postgres_or_skip() -> None:
    """Skip when PostgreSQL is unreachable, except in CI (``CI=true``), where that fails."""
    import psycopg

    _require_mark("postgres", "uses the PostgreSQL server")

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


@contextmanager
def fresh_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL of ``kind`` (memory, sqlite, postgres): PostgreSQL gets a unique table
    prefix, dropped afterwards."""
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        postgres_or_skip()
        prefix = f"t{uuid.uuid4().hex[:10]}_"
        sep = "&" if "?" in POSTGRES_URL else "?"
        try:
            yield f"{POSTGRES_URL}{sep}prefix={prefix}"
        finally:
            drop_prefixed(prefix)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQL store URL: a SQLite file, or PostgreSQL with a unique table prefix."""
    with fresh_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL of every kind."""
    with fresh_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def any_store(any_url: str) -> JobStore:
    """A fresh, unopened store of every kind (from :func:`any_url`)."""
    return open_store(any_url)
