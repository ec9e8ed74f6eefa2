"""``JobStore.progress`` (the read of a job's counts) and pages of ``limit=0``, on every store.

Meant for the contract suite (``bulkpipe.testing``); until it moves there, each test runs on
MemoryStore, SQLiteStore and PostgresStore (skipped when PostgreSQL is unreachable, except in
CI), on asyncio and trio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bulkpipe import JobNotFound, JobStatus
from bulkpipe.store import JobStore, Page, Progress
from bulkpipe.stores import MemoryStore, SQLiteStore
from bulkpipe.testing import add_job, claim, encoded, fail_row, ok_row, report

from .conftest import drop_prefixed, postgres_or_skip
from .pg import empty_store, unique_prefix

pytestmark = pytest.mark.anyio

#: One prefix for this module's PostgreSQL tests (emptied before each, dropped at the end).
PREFIX = unique_prefix()


@pytest.fixture(scope="module")
def _postgres_tables() -> Iterator[None]:
    postgres_or_skip()
    yield
    drop_prefixed(PREFIX)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "postgres":
        request.getfixturevalue("_postgres_tables")
        async with empty_store(PREFIX) as pg:
            yield pg
        return
    opened: JobStore = (
        MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "j.db")
    )
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _counts(progress: Progress) -> tuple[JobStatus, bool, int, int, int, int]:
    p = progress
    return (p.status, p.sealed, p.total, p.succeeded, p.failed, p.open_batches)


async def _both(store: JobStore, job_id: str) -> Progress:
    """``progress()``, checked to answer as ``record(job_id, [])`` still does."""
    progress = await store.progress(job_id)
    assert progress.lost == ()
    assert await store.record(job_id, []) == progress
    return progress


# -- progress -----------------------------------------------------------------------------------


async def test_progress_of_an_unknown_job_is_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        await store.progress("no-such-job")


async def test_progress_of_a_new_job(store: JobStore) -> None:
    job = await add_job(store)
    assert _counts(await _both(store, job.id)) == (JobStatus.PENDING, False, 0, 0, 0, 0)


async def test_progress_counts_after_add_record_and_seal(store: JobStore) -> None:
    job = await add_job(store, encoded(3), encoded(2, start=3))
    assert _counts(await _both(store, job.id)) == (JobStatus.PENDING, False, 5, 0, 0, 2)

    first = await claim(store, job.id)
    assert _counts(await _both(store, job.id)) == (JobStatus.PROCESSING, False, 5, 0, 0, 2)

    (a, _), (b, _), (c, _) = first.items
    await store.record(job.id, [report(first, [ok_row(a)], done=False)])
    assert _counts(await _both(store, job.id)) == (JobStatus.PROCESSING, False, 5, 1, 0, 2)

    await store.record(job.id, [report(first, [ok_row(b), fail_row(c)])])
    assert _counts(await _both(store, job.id)) == (JobStatus.PROCESSING, False, 5, 2, 1, 1)

    sealed = await store.seal_job(job.id)
    assert _counts(await _both(store, job.id)) == _counts(sealed)
    assert _counts(sealed) == (JobStatus.PROCESSING, True, 5, 2, 1, 1)

    await store.record(job.id, [report(await claim(store, job.id))])
    assert _counts(await _both(store, job.id)) == (JobStatus.PROCESSING, True, 5, 4, 1, 0)

    await store.finish_job(job.id, JobStatus.COMPLETED)
    assert _counts(await _both(store, job.id)) == (JobStatus.COMPLETED, True, 5, 4, 1, 0)


async def test_progress_writes_nothing(store: JobStore) -> None:
    job = await add_job(store, encoded(2))
    claimed = await claim(store, job.id)
    await store.record(job.id, [report(claimed, [ok_row(claimed.items[0][0])], done=False)])
    before = await store.get_job(job.id)
    for _ in range(3):
        await store.progress(job.id)
    assert await store.get_job(job.id) == before


async def test_progress_of_an_ended_job(store: JobStore) -> None:
    job = await add_job(store, encoded(2))
    await store.finish_job(job.id, JobStatus.CANCELLED)
    assert _counts(await _both(store, job.id)) == (JobStatus.CANCELLED, False, 2, 0, 0, 1)


# -- pages of limit=0: no row, and a cursor unless nothing is left --------------------------------


@pytest.mark.parametrize("failed", [None, True, False])
async def test_an_outcome_page_of_limit_0_ends_only_when_nothing_is_left(
    store: JobStore, failed: bool | None
) -> None:
    empty = await add_job(store, encoded(2))
    page = await store.read_outcomes(empty.id, failed=failed, limit=0)
    assert (page.rows, page.cursor) == ([], None)

    job = await add_job(store, encoded(4))
    claimed = await claim(store, job.id)
    ids = [item_id for item_id, _ in claimed.items]
    rows = [ok_row(ids[0]), fail_row(ids[1]), ok_row(ids[2]), fail_row(ids[3])]
    await store.record(job.id, [report(claimed, rows)])
    page = await store.read_outcomes(job.id, failed=failed, limit=0)
    assert page.rows == []
    assert page.cursor is not None
    rest = await store.read_outcomes(job.id, failed=failed, cursor=page.cursor)
    whole = await store.read_outcomes(job.id, failed=failed)
    assert rest == whole
    for budget in (None, 1):
        page = await store.read_outcomes(job.id, failed=failed, limit=0, max_bytes=budget)
        assert page.rows == []
        assert page.cursor is not None


async def test_a_failed_items_page_of_limit_0_ends_only_when_nothing_is_left(
    store: JobStore,
) -> None:
    job = await add_job(store, encoded(3))
    assert await store.read_failed_items(job.id, limit=0) == Page(rows=[], cursor=None)
    claimed = await claim(store, job.id)
    ids = [item_id for item_id, _ in claimed.items]
    await store.record(
        job.id, [report(claimed, [fail_row(ids[0]), ok_row(ids[1]), fail_row(ids[2])])]
    )
    page = await store.read_failed_items(job.id, limit=0)
    assert page.rows == []
    assert page.cursor is not None
    assert await store.read_failed_items(job.id, cursor=page.cursor) == (
        await store.read_failed_items(job.id)
    )
