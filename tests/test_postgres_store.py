"""PostgresStore: the store contract, its schema, concurrent claims, and surviving faults.

Needs the PostgreSQL server of ``BULKPIPE_TEST_POSTGRES_URL`` (see ``tests/conftest.py``):
the tests skip when it is unreachable, except with ``CI=true``, where they fail. Each module
run uses its own random table prefix and drops its tables at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import hypothesis
import psycopg
import pytest

from bulkpipe import JobStatus, Pipeline, StoreError
from bulkpipe.store import JobStore
from bulkpipe.stores import open_store
from bulkpipe.stores._sql import load_migrations, schema_script
from bulkpipe.stores.postgres import PostgresStore
from bulkpipe.testing import (
    LONG_LEASE,
    StoreContract,
    add_job,
    claim,
    encoded,
    job_error,
    make_job,
    ok_row,
    read_all_outcomes,
    report,
    store_state_machine,
)

from .conftest import POSTGRES_URL, drop_prefixed, postgres_or_skip
from .helpers import PATIENCE, QUICK, make_items, outcome_map, quick
from .pg import empty_store, unique_prefix, with_params

#: One prefix for this module's contract and stateful tests (emptied before each test).
PREFIX = unique_prefix()


@pytest.fixture(scope="module", autouse=True)
def _drop_module_tables() -> Iterator[None]:
    postgres_or_skip()
    yield
    drop_prefixed(PREFIX)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix of the test's own, dropped after it."""
    name = unique_prefix()
    yield name
    drop_prefixed(name)


# -- the contract -------------------------------------------------------------------------------


class TestPostgresStore(StoreContract):
    """Every contract test, on a store emptied before each test."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[JobStore]:
        async with empty_store(PREFIX) as store:
            yield store


#: Asyncio only, and fewer examples than the default: every step is a database round trip,
#: and the contract tests above already run every call on trio.
TestPostgresStateful = store_state_machine(
    lambda: empty_store(PREFIX),
    backend="asyncio",
    settings=hypothesis.settings(
        max_examples=20,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[hypothesis.HealthCheck.too_slow],
    ),
)


# -- schema ------------------------------------------------------------------------------------

_CATALOG = {
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, is_nullable,
            column_default, collation_name, is_identity
        FROM information_schema.columns WHERE table_schema = %(schema)s""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = %(schema)s""",
    "sequences": """
        SELECT sequence_name, data_type, start_value, increment
        FROM information_schema.sequences WHERE sequence_schema = %(schema)s""",
}


def _catalog(conn: psycopg.Connection[Any], schema: str) -> dict[str, set[tuple[Any, ...]]]:
    conn.execute(f"SET search_path = {schema}")
    return {
        name: {
            tuple(str(v).replace(f"{schema}.", "") if isinstance(v, str) else v for v in row)
            for row in conn.execute(query, {"schema": schema})
        }
        for name, query in _CATALOG.items()
    }


@pytest.mark.anyio
async def test_migrations_build_exactly_schema_sql(prefix: str) -> None:
    migrated, scripted = f"{prefix}m", f"{prefix}s"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {migrated}; CREATE SCHEMA {scripted}")
        try:
            # The store migrates its own schema; schema.sql is applied by hand beside it.
            url = with_params(POSTGRES_URL, options=f"-csearch_path%3D{migrated}")
            store = PostgresStore(url, prefix=prefix)
            await store.open()
            await store.close()
            conn.execute(f"SET search_path = {scripted}")
            conn.execute(schema_script("postgres", prefix).encode())
            got, want = _catalog(conn, migrated), _catalog(conn, scripted)
            assert got["columns"], "the migrations created nothing"
            for part in _CATALOG:
                assert got[part] == want[part], f"{part} differ"
        finally:
            conn.execute(f"DROP SCHEMA {migrated} CASCADE; DROP SCHEMA {scripted} CASCADE")


def test_migrations_are_numbered_from_one() -> None:
    assert [number for number, _ in load_migrations("postgres", "x_")] == [1, 2, 3]


@pytest.mark.anyio
async def test_open_is_idempotent_and_reopens(prefix: str) -> None:
    first, second = (
        PostgresStore(POSTGRES_URL, prefix=prefix),
        PostgresStore(POSTGRES_URL, prefix=prefix),
    )
    async with anyio.create_task_group() as tg:  # two processes opening at once
        tg.start_soon(first.open)
        tg.start_soon(second.open)
    await first.open()
    job = await add_job(first, encoded(2))
    assert (await second.get_job(job.id)).total_items == 2
    await first.close()
    await first.close()
    await second.close()
    with pytest.raises(StoreError, match="not open"):
        await first.get_job(job.id)


@pytest.mark.anyio
async def test_a_newer_schema_is_refused(prefix: str) -> None:
    store = PostgresStore(POSTGRES_URL, prefix=prefix)
    await store.open()
    await store.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"UPDATE {prefix}meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer bulkpipe"):
        await PostgresStore(POSTGRES_URL, prefix=prefix).open()


@pytest.mark.anyio
async def test_foreign_tables_are_refused(prefix: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {prefix}jobs (name text)")
    with pytest.raises(StoreError, match="did not create"):
        await PostgresStore(POSTGRES_URL, prefix=prefix).open()


# -- several workers ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_two_stores_claiming_at_once_never_share_a_batch(prefix: str) -> None:
    batches = 60
    stores = [PostgresStore(POSTGRES_URL, prefix=prefix) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        job = await add_job(stores[0], *(encoded(1, i) for i in range(batches)), seal=True)
        claimed: list[tuple[str, int]] = []

        async def worker(store: PostgresStore, name: str) -> None:
            while (got := await store.claim_batch(worker_id=name, lease_seconds=60)) is not None:
                claimed.append((got.lease.job_id, got.lease.batch_no))

        async with anyio.create_task_group() as tg:
            for i, store in enumerate(stores):
                for k in range(4):  # four claimers per store, each in its own thread
                    tg.start_soon(worker, store, f"w{i}.{k}")
        assert sorted(no for _, no in claimed) == list(range(batches))
        assert {job_id for job_id, _ in claimed} == {job.id}
    finally:
        for store in stores:
            await store.close()


# -- faults ------------------------------------------------------------------------------------


def _terminate(application_name: str) -> int:
    """Kill every backend of one application (only this test's connections)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = %s",
            (application_name,),
        ).fetchall()
    return len(rows)


@pytest.mark.anyio
async def test_killed_connections_mid_job_lose_and_double_nothing(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = f"bulkpipe_kill_{prefix}"
    store = PostgresStore(with_params(POSTGRES_URL, application_name=app), prefix=prefix)
    killed: list[int] = []

    async def process(item: dict[str, Any]) -> int:
        if item["n"] % 150 == 75:  # a few times while batches are in flight
            killed.append(await anyio.to_thread.run_sync(_terminate, app))
        await anyio.lowlevel.checkpoint()
        return int(item["n"])

    caplog.set_level(logging.WARNING, logger="bulkpipe.stores.postgres")
    items = make_items(600)
    async with Pipeline(store=store, processors={"p": process}) as pipeline:
        job = await pipeline.submit("p", items, options=quick(batch_size=20, concurrency=3))
        done = await pipeline.wait(job.id, timeout=PATIENCE * 3)
        outcomes = await outcome_map(pipeline, job.id)  # fails on a doubled outcome
    assert done.status is JobStatus.COMPLETED
    assert (done.total_items, done.succeeded_items, done.failed_items) == (600, 600, 0)
    assert sorted(outcomes) == sorted(item["id"] for item in items)
    assert all(o.result == int(o.item_id.split("-")[1]) for o in outcomes.values())
    assert len(killed) == 4
    assert sum(killed) > 0
    assert any("retrying" in r.getMessage() for r in caplog.records)


class _CommitLost(Exception):
    pass


@pytest.mark.anyio
async def test_writes_retried_after_a_lost_commit_are_not_doubled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each write commits, then its connection 'drops' before the answer arrives; the store
    retries it, and the retry must change nothing more."""
    async with empty_store(PREFIX) as store:
        lost_once: set[str] = set()
        for name in ("_create_job", "_add_batches", "_add_errors", "_record"):
            original = getattr(PostgresStore, name)

            def after_commit(
                self: Any, conn: Any, retry: bool, *args: Any, _f: Any = original, _n: str = name
            ) -> Any:
                result = _f(self, conn, retry, *args)
                if _n not in lost_once:
                    lost_once.add(_n)
                    raise psycopg.OperationalError("server closed the connection unexpectedly")
                return result

            monkeypatch.setattr(PostgresStore, name, after_commit)
        job = make_job()
        await store.create_job(job)
        batches = [[*encoded(3), encoded(1)[0]], encoded(1), encoded(2, 3)]
        assert await store.add_batches(job.id, batches) == ["item-0", "item-0"]
        assert await store.add_batch(job.id, encoded(2, 4)) == ["item-4"]  # numbered on
        await store.add_errors(job.id, [job_error("x")], rejected=1)
        claims = [await claim(store) for _ in range(3)]
        assert [c.lease.batch_no for c in claims] == [0, 1, 2]
        assert [len(c.items) for c in claims] == [3, 2, 1]
        progress = await store.record(job.id, [report(claims[0])])
        assert (progress.lost, progress.succeeded, progress.open_batches) == ((), 3, 2)
        got = await store.get_job(job.id)
        assert (got.total_items, got.rejected_items, got.error_count) == (6, 1, 1)
        assert len(await read_all_outcomes(store, job.id)) == 3
        assert lost_once == {"_create_job", "_add_batches", "_add_errors", "_record"}


@pytest.mark.anyio
async def test_an_unreachable_server_fails_quickly() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=3)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1") as info:
        await store.open()
    assert time.monotonic() - started < 5
    assert "running and reachable" in str(info.value)


@pytest.mark.anyio
async def test_a_missing_table_is_a_store_error(prefix: str) -> None:
    store = PostgresStore(POSTGRES_URL, prefix=prefix)
    await store.open()
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {prefix}outcomes")
        job = await add_job(store, encoded(1))
        with pytest.raises(StoreError, match="missing"):
            await store.read_outcomes(job.id)
    finally:
        await store.close()


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pipeline_runs_a_job_on_postgres(prefix: str) -> None:
    async def process(item: dict[str, Any]) -> dict[str, int]:
        if item["n"] % 7 == 0:
            raise ValueError(f"bad {item['n']}")
        return {"double": item["n"] * 2}

    store = PostgresStore(POSTGRES_URL, prefix=prefix)
    async with Pipeline(store=store, processors={"p": process}) as pipeline:
        job = await pipeline.submit(
            "p", [*make_items(250), {"id": "item-3"}], options=quick(batch_size=25, max_retries=1)
        )
        done = await pipeline.wait(job.id, timeout=PATIENCE)
        outcomes = await outcome_map(pipeline, job.id)
        retry = await pipeline.retry_failed(job.id, options=QUICK)
        retried = await pipeline.wait(retry.id, timeout=PATIENCE)
    failing = sum(1 for n in range(250) if n % 7 == 0)
    assert done.status is JobStatus.COMPLETED
    assert (done.total_items, done.failed_items, done.rejected_items) == (250, failing, 1)
    assert done.succeeded_items == 250 - failing
    assert outcomes["item-4"].result == {"double": 8}
    assert outcomes["item-7"].error == "bad 7"
    assert outcomes["item-7"].attempts == 2
    assert (retried.total_items, retried.failed_items) == (failing, failing)


@pytest.mark.anyio
async def test_open_store_url_sets_the_prefix(prefix: str) -> None:
    store = open_store(with_params(POSTGRES_URL, prefix=prefix, application_name="bulkpipe_url"))
    assert isinstance(store, PostgresStore)
    assert store.prefix == prefix
    assert "prefix" not in store.dsn
    assert "application_name=bulkpipe_url" in store.dsn
    await store.open()
    try:
        await add_job(store, encoded(1))
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute(f"SELECT count(*) FROM {prefix}jobs").fetchone()
        assert row == (1,)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_claim_by_another_store_object_sees_the_lease(prefix: str) -> None:
    """Leases live in the database: a second store (another process) sees them."""
    one, two = (
        PostgresStore(POSTGRES_URL, prefix=prefix),
        PostgresStore(POSTGRES_URL, prefix=prefix),
    )
    await one.open()
    await two.open()
    try:
        await add_job(one, encoded(2))
        first = await claim(one, lease_seconds=LONG_LEASE)
        assert await two.claim_batch(worker_id="w2", lease_seconds=1) is None
        await one.renew_leases("w1", [first.lease], 0)
        assert (await claim(two, worker_id="w2")).lease.batch_no == 0
        progress = await one.record(first.lease.job_id, [report(first, [ok_row("item-0")])])
        assert progress.lost == (0,)
    finally:
        await one.close()
        await two.close()
