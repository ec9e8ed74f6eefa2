"""Upgrading in place (issue 8, point 1): a live unsealed job of a store written before submit
leases (PostgreSQL schema 2, SQLite schema 1) gets a submit lease of 10 minutes from the
migration, and once that has expired a worker ends it as abandoned."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import psycopg
import pytest

from bulkpipe import ErrorType, JobOptions, JobStatus, JobStore, Pipeline
from bulkpipe.stores import SQLiteStore
from bulkpipe.stores._sql import load_migrations
from bulkpipe.stores._sqlite_schema import statements
from bulkpipe.stores.postgres import PostgresStore

from .conftest import POSTGRES_URL, drop_prefixed, postgres_or_skip
from .helpers import PATIENCE
from .pg import unique_prefix

pytestmark = pytest.mark.anyio

_OPTIONS = JobOptions().model_dump_json()
_JOBS = "(id, type, status, options, priority, sealed, created_at)"
_ROWS = (
    "('live', 'demo', 'processing', {o}, 0, {f}, 0), ('done', 'demo', 'completed', {o}, 0, {t}, 0)"
)


async def _ends_abandoned(store: JobStore) -> None:
    async with Pipeline(store, processors={"demo": lambda item: item}) as p:
        job = await p.wait("live", timeout=PATIENCE)
        other = await p.get("done")
    assert (job.status, job.sealed) == (JobStatus.FAILED, True)
    assert [e.error_type for e in job.errors] == [ErrorType.SUBMIT_ABANDONED]
    assert other.status is JobStatus.COMPLETED


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    postgres_or_skip()
    name = unique_prefix()
    yield name
    drop_prefixed(name)


def _pg(sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        cursor = conn.execute(sql.encode())
        return cursor.fetchall() if cursor.description is not None else []


def _pg_v2_store(prefix: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.transaction():
        for _, script in load_migrations("postgres", prefix)[:2]:
            conn.execute(script.encode())
        conn.execute(f"UPDATE {prefix}meta SET value = '2' WHERE key = 'schema_version'")
        rows = _ROWS.format(o="%(o)s::jsonb", f="false", t="true")
        conn.execute(f"INSERT INTO {prefix}jobs {_JOBS} VALUES {rows}", {"o": _OPTIONS})


@pytest.mark.postgres
async def test_postgres_v2_live_unsealed_job_gets_a_lease_and_ends_abandoned(prefix: str) -> None:
    await anyio.to_thread.run_sync(_pg_v2_store, prefix)
    store = PostgresStore(POSTGRES_URL, prefix=prefix)
    await store.open()
    try:
        assert store.schema_version == 3
        leases = await anyio.to_thread.run_sync(
            _pg,
            f"SELECT id, extract(epoch FROM submit_expires_at - now()) FROM {prefix}jobs "
            "ORDER BY id",
        )
        assert [job_id for job_id, _ in leases] == ["done", "live"]
        assert leases[0][1] is None
        assert 590 <= float(str(leases[1][1])) <= 600
        assert await store.abandon_expired_submits() == []  # 10 minutes of grace
        sql = f"UPDATE {prefix}jobs SET submit_expires_at = now() - interval '1 second'"
        await anyio.to_thread.run_sync(_pg, sql + " WHERE id = 'live'")
    finally:
        await store.close()
    await _ends_abandoned(PostgresStore(POSTGRES_URL, prefix=prefix))


# -- SQLite -----------------------------------------------------------------------------------


def _sqlite_v1_store(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for statement in statements(load_migrations("sqlite", "bulkpipe_")[0][1]):
            conn.execute(statement)
        conn.execute("INSERT INTO bulkpipe_meta (key, value) VALUES ('schema_version', 1)")
        rows = _ROWS.format(o="?", f="0", t="1")
        conn.execute(f"INSERT INTO bulkpipe_jobs {_JOBS} VALUES {rows}", (_OPTIONS, _OPTIONS))
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_sqlite_v1_live_unsealed_job_gets_a_lease_and_ends_abandoned(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    _sqlite_v1_store(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.schema_version == 2
        assert await store.abandon_expired_submits() == []  # 10 minutes of grace
    finally:
        await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        leases = dict(conn.execute("SELECT id, submit_expires_at FROM bulkpipe_jobs"))
        assert leases["done"] is None
        assert 590 <= leases["live"] - time.time() <= 601
        conn.execute("UPDATE bulkpipe_jobs SET submit_expires_at = 0 WHERE id = 'live'")
    finally:
        conn.close()
    await _ends_abandoned(SQLiteStore(path))
