"""PostgresStore closes a batch only when every item has an outcome (issue 13, finding 1).

The store commits asynchronously, so a server crash may lose writes it had acknowledged. These
tests make the database look as it does after such a loss (the rows and counts of one write
taken back out) and check what the next writes do; ``tests/test_postgres_crash.py`` crashes a
real server. Also: the 0002 migration fills the new per-batch counts of an existing store and
reopens the batches that an older bulkpipe closed with outcomes missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio.to_thread
import psycopg
import pytest

from bulkpipe import JobOptions, JobStatus
from bulkpipe.stores._sql import load_migrations
from bulkpipe.stores.postgres import PostgresStore
from bulkpipe.testing import add_job, claim, encoded, ok_row, read_all_outcomes, report

from .conftest import POSTGRES_URL, drop_prefixed, postgres_or_skip
from .pg import empty_store, unique_prefix

pytestmark = pytest.mark.postgres


@pytest.fixture
def prefix() -> Iterator[str]:
    postgres_or_skip()
    name = unique_prefix()
    yield name
    drop_prefixed(name)


def _lose_outcomes(prefix: str, job_id: str, item_ids: list[str]) -> None:
    """Take outcomes back out, with every count they added: a write the server lost."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.transaction():
        row = conn.execute(
            f"""DELETE FROM {prefix}outcomes AS o USING {prefix}jobs AS j
            WHERE o.job = j.seq AND j.id = %(id)s AND o.item_id = ANY (%(items)s)
            RETURNING o.job, o.ok""",
            {"id": job_id, "items": item_ids},
        ).fetchall()
        assert len(row) == len(item_ids)
        assert all(ok for _, ok in row)
        conn.execute(
            f"""UPDATE {prefix}batches AS b SET recorded = b.recorded - c.n
            FROM (SELECT i.job, i.batch_no, count(*) AS n FROM {prefix}items AS i
                  JOIN {prefix}jobs AS j ON j.seq = i.job
                  WHERE j.id = %(id)s AND i.item_id = ANY (%(items)s)
                  GROUP BY i.job, i.batch_no) AS c
            WHERE b.job = c.job AND b.batch_no = c.batch_no""",
            {"id": job_id, "items": item_ids},
        )
        conn.execute(
            f"UPDATE {prefix}jobs SET succeeded = succeeded - %(n)s WHERE id = %(id)s",
            {"id": job_id, "n": len(item_ids)},
        )


@pytest.mark.anyio
async def test_a_done_report_after_a_lost_write_reopens_its_batch(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with empty_store(prefix) as store:
        job = await add_job(store, encoded(4), seal=True)
        first = await claim(store)
        await store.record(
            job.id, [report(first, [ok_row("item-0"), ok_row("item-1")], done=False)]
        )
        await anyio.to_thread.run_sync(_lose_outcomes, prefix, job.id, ["item-0", "item-1"])
        with caplog.at_level(logging.WARNING, logger="bulkpipe.stores.postgres"):
            progress = await store.record(
                job.id, [report(first, [ok_row("item-2"), ok_row("item-3")])]
            )
        # Not closed: the batch is pending again, and the report's lease is gone.
        assert (progress.lost, progress.open_batches, progress.succeeded) == ((0,), 1, 2)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "batch 0" in warnings[0].getMessage()
        assert "2 of its items have no stored outcome" in warnings[0].getMessage()
        assert "pending again" in warnings[0].getMessage()
        refused, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert not changed
        assert refused.status is JobStatus.PROCESSING
        # Claimed again, with only the items that lost their outcome.
        again = await claim(store, worker_id="w2")
        assert (again.claims, [item_id for item_id, _ in again.items]) == (2, ["item-0", "item-1"])
        progress = await store.record(job.id, [report(again)])
        assert (progress.lost, progress.open_batches, progress.succeeded) == ((), 0, 4)
        done, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        assert done.status is JobStatus.COMPLETED
        outcomes = await read_all_outcomes(store, job.id)
        assert sorted(o.item_id for o in outcomes) == [f"item-{i}" for i in range(4)]


@pytest.mark.anyio
async def test_one_call_closes_a_complete_batch_and_reopens_a_short_one(prefix: str) -> None:
    async with empty_store(prefix) as store:
        job = await add_job(store, encoded(2), encoded(2, 2), seal=True)
        a, b = await claim(store), await claim(store)
        await store.record(
            job.id,
            [
                report(a, [ok_row("item-0")], done=False),
                report(b, [ok_row("item-2")], done=False),
            ],
        )
        await anyio.to_thread.run_sync(_lose_outcomes, prefix, job.id, ["item-2"])
        progress = await store.record(
            job.id, [report(a, [ok_row("item-1")]), report(b, [ok_row("item-3")])]
        )
        assert (progress.lost, progress.open_batches, progress.succeeded) == ((1,), 1, 3)
        again = await claim(store)
        assert (again.lease.batch_no, [i for i, _ in again.items]) == (1, ["item-2"])


@pytest.mark.anyio
async def test_a_repeated_done_report_is_still_accepted(prefix: str) -> None:
    # The retry of a done report whose first attempt committed (the answer was lost) finds
    # its batch done and complete: accepted, not reopened.
    async with empty_store(prefix) as store:
        job = await add_job(store, encoded(2), seal=True)
        claimed = await claim(store)

        def record_twice(conn: psycopg.Connection[tuple[object, ...]], retry: bool) -> None:
            store._record(conn, False, job.id, [report(claimed)])
            progress = store._record(conn, True, job.id, [report(claimed)])
            assert (progress.lost, progress.open_batches, progress.succeeded) == ((), 0, 2)

        await store._call("recording twice", record_twice)


def _v1_store_with_a_damaged_batch(prefix: str) -> None:
    """A store at schema version 1 whose job has batch 1 done without its outcome."""
    script = load_migrations("postgres", prefix)[0][1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.transaction():
        conn.execute(script.encode())
        row = conn.execute(
            f"""INSERT INTO {prefix}jobs (id, type, status, options, sealed, next_batch,
                next_outcome, total, succeeded, open_batches, created_at)
            VALUES ('damaged', 'demo', 'processing', %(options)s::jsonb, true, 3, 2, 4, 2, 1, 0)
            RETURNING seq""",
            {"options": JobOptions().model_dump_json()},
        ).fetchone()
        assert row is not None
        seq = row[0]
        conn.execute(
            f"""INSERT INTO {prefix}batches (job, batch_no, state) VALUES
                (%(j)s, 0, 2), (%(j)s, 1, 2), (%(j)s, 2, 0)""",
            {"j": seq},
        )
        conn.execute(
            f"""INSERT INTO {prefix}items (job, item_id, batch_no, pos, payload) VALUES
                (%(j)s, 'a', 0, 0, '1'), (%(j)s, 'b', 0, 1, '2'), (%(j)s, 'c', 1, 0, '3'),
                (%(j)s, 'd', 2, 0, '4')""",
            {"j": seq},
        )
        conn.execute(
            f"""INSERT INTO {prefix}outcomes (id, job, item_id, ok, result, attempts,
                started_at, finished_at) VALUES
                (1, %(j)s, 'a', true, 'null', 1, 0, 0), (2, %(j)s, 'b', true, 'null', 1, 0, 0)""",
            {"j": seq},
        )


def _batches(prefix: str) -> list[tuple[object, ...]]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        return conn.execute(
            f"SELECT batch_no, state, size, recorded FROM {prefix}batches ORDER BY batch_no"
        ).fetchall()


@pytest.mark.anyio
async def test_migration_2_backfills_batch_counts_and_reopens_damaged_batches(
    prefix: str,
) -> None:
    await anyio.to_thread.run_sync(_v1_store_with_a_damaged_batch, prefix)
    store = PostgresStore(POSTGRES_URL, prefix=prefix)
    await store.open()
    try:
        assert store.schema_version == store.latest_schema == 3
        # batch 0 done and whole; batch 1 was done without its outcome: pending again.
        assert await anyio.to_thread.run_sync(_batches, prefix) == [
            (0, 2, 2, 2),
            (1, 0, 1, 0),
            (2, 0, 1, 0),
        ]
        progress = await store.record("damaged", [])
        assert (progress.open_batches, progress.succeeded, progress.total) == (2, 2, 4)
        for _ in range(2):
            claimed = await claim(store, "damaged")
            await store.record("damaged", [report(claimed)])
        done, changed = await store.finish_job("damaged", JobStatus.COMPLETED)
        assert changed
        assert (done.status, done.succeeded_items) == (JobStatus.COMPLETED, 4)
    finally:
        await store.close()
