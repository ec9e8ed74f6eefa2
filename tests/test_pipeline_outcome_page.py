"""``Pipeline.outcome_page``: one page of a job's outcomes, what the HTTP API serves.

Each test runs on MemoryStore, SQLiteStore and PostgresStore (skipped when PostgreSQL is
unreachable, except in CI), on asyncio and trio.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkpipe import (
    InvalidArgument,
    ItemOutcome,
    ItemStatus,
    JobNotFound,
    Page,
    Pipeline,
    PipelineClosed,
)
from bulkpipe.store import JobStore, OutcomeRow
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


async def job_with(store: JobStore, rows: list[OutcomeRow]) -> str:
    """A job whose items have ``rows`` as outcomes, recorded in this order."""
    items = [(row.item_id, json.dumps({"id": row.item_id})) for row in rows]
    job = await add_job(store, items, seal=True)
    await store.record(job.id, [report(await claim(store, job.id), rows)])
    return job.id


def mixed() -> list[OutcomeRow]:
    return [
        ok_row("a", 1),
        fail_row("b", "boom"),
        ok_row("c", 3),
        ok_row("d", 4),
        fail_row("e", "bang"),
    ]


async def every_page(pipeline: Pipeline, job_id: str, **kwargs: Any) -> list[Page[ItemOutcome]]:
    pages = [await pipeline.outcome_page(job_id, **kwargs)]
    while pages[-1].cursor is not None:
        pages.append(await pipeline.outcome_page(job_id, cursor=pages[-1].cursor, **kwargs))
    return pages


@pytest.mark.parametrize("status", [None, "failed", ItemStatus.SUCCEEDED])
async def test_pages_read_what_outcomes_streams(
    store: JobStore, status: ItemStatus | str | None
) -> None:
    job_id = await job_with(store, mixed())
    async with Pipeline(store, workers=0) as pipeline:
        pages = await every_page(pipeline, job_id, status=status, limit=2)
        streamed = [o async for o in pipeline.outcomes(job_id, status)]
    assert all(len(page.rows) <= 2 for page in pages)
    assert [o for page in pages for o in page.rows] == streamed
    wanted = {None: "abcde", "failed": "be", ItemStatus.SUCCEEDED: "acd"}[status]
    assert "".join(o.item_id for o in streamed) == wanted
    assert all(isinstance(o, ItemOutcome) for o in streamed)


async def test_a_page_holds_what_its_byte_budget_allows(store: JobStore) -> None:
    rows = [ok_row(f"r{n}", "x" * 100) for n in range(4)]  # 2 + 102 bytes each
    job_id = await job_with(store, rows)
    async with Pipeline(store, workers=0) as pipeline:
        pages = await every_page(pipeline, job_id, max_bytes=2 * 104)
        alone = await pipeline.outcome_page(job_id, max_bytes=1)
        unbounded = await pipeline.outcome_page(job_id, max_bytes=None)
    assert [[o.item_id for o in page.rows] for page in pages] == [["r0", "r1"], ["r2", "r3"]]
    assert [o.item_id for o in alone.rows] == ["r0"]  # a larger row comes alone
    assert alone.cursor is not None
    assert (len(unbounded.rows), unbounded.cursor) == (4, None)


async def test_a_job_without_outcomes_gives_one_empty_last_page(store: JobStore) -> None:
    job = await add_job(store, encoded(3))
    async with Pipeline(store, workers=0) as pipeline:
        page = await pipeline.outcome_page(job.id)
        failed = await pipeline.outcome_page(job.id, status="failed")
    assert page == failed == Page(rows=[], cursor=None)


async def test_an_unknown_job_is_job_not_found(store: JobStore) -> None:
    async with Pipeline(store, workers=0) as pipeline:
        with pytest.raises(JobNotFound):
            await pipeline.outcome_page("no-such-job")
        with pytest.raises(JobNotFound):
            await pipeline.outcome_page("no-such-job", cursor=5, status="failed")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"cursor": -1}, "cursor"),
        ({"cursor": "3"}, "cursor"),
        ({"status": "done"}, "unknown item status"),
    ],
)
async def test_bad_arguments_are_invalid_argument(
    store: JobStore, kwargs: dict[str, Any], words: str
) -> None:
    job_id = await job_with(store, mixed())
    async with Pipeline(store, workers=0) as pipeline:
        with pytest.raises(InvalidArgument, match=words):
            await pipeline.outcome_page(job_id, **kwargs)


async def test_outside_async_with_is_pipeline_closed(store: JobStore) -> None:
    job_id = await job_with(store, mixed())
    with pytest.raises(PipelineClosed):
        await Pipeline(store, workers=0).outcome_page(job_id)
