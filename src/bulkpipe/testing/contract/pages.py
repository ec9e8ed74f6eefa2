"""The store contract: where a page of outcomes or failed items ends.

A page ends at ``limit`` rows and, with ``max_bytes``, before the row that would bring the
UTF-8 bytes of its rows' item ids, results and errors over the budget (one row at least); a
page of ``limit=0`` holds no row and has a cursor unless nothing is left.
"""

from __future__ import annotations

import json

import pytest

from ...models import ItemOutcome
from ...store import JobStore, OutcomeRow, Page
from ..helpers import add_job, claim, encoded, fail_row, ok_row, report
from ._base import ContractBase

MB = 1 << 20


def _size(row: OutcomeRow) -> int:
    """What a row counts against a page's budget: UTF-8 bytes of id, result and error."""
    return sum(len(text.encode()) for text in (row.item_id, row.result, row.error) if text)


async def _job_with(store: JobStore, rows: list[OutcomeRow]) -> str:
    """A job whose items have ``rows`` as outcomes, recorded in this order."""
    items = [(row.item_id, json.dumps({"id": row.item_id})) for row in rows]
    job = await add_job(store, items, seal=True)
    claimed = await claim(store, job.id)
    await store.record(job.id, [report(claimed, rows)])
    return job.id


def _mixed_rows() -> list[OutcomeRow]:
    """Outcomes from a few bytes to a few MB, some failed, some with two-byte characters."""
    sizes = [MB, 3 * MB, 500_000, 5 * MB, 10, 10, 2 * MB, 4 * MB - 100, 7, MB, 2 * MB, 3]
    rows = []
    for n, size in enumerate(sizes):
        item_id = f"item-{n}"
        if n % 4 == 2:
            rows.append(fail_row(item_id, "e" * size))
        elif n % 4 == 3:
            rows.append(ok_row(item_id, "é" * (size // 2)))  # 2 bytes each in UTF-8
        else:
            rows.append(ok_row(item_id, "x" * size))
    return rows


async def _all_pages(
    store: JobStore, job_id: str, failed: bool | None, limit: int, max_bytes: int | None
) -> list[Page[ItemOutcome]]:
    pages = []
    cursor = None
    while True:
        page = await store.read_outcomes(
            job_id, failed=failed, cursor=cursor, limit=limit, max_bytes=max_bytes
        )
        pages.append(page)
        assert page.rows or page.cursor is None
        if page.cursor is None:
            return pages
        assert cursor is None or page.cursor > cursor
        cursor = page.cursor


class PagesContract(ContractBase):
    """Pages of ``read_outcomes`` within a byte budget, and pages of ``limit=0``."""

    # -- the byte budget ------------------------------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("failed", [None, True, False])
    @pytest.mark.parametrize("limit", [2, 1000])
    async def test_pages_hold_as_many_rows_as_the_budget_allows(
        self, store: JobStore, failed: bool | None, limit: int
    ) -> None:
        rows = _mixed_rows()
        job_id = await _job_with(store, rows)
        wanted = [row for row in rows if failed is None or row.ok is not failed]
        budget = 4 * MB
        pages = await _all_pages(store, job_id, failed, limit, budget)
        assert [o.item_id for p in pages for o in p.rows] == [row.item_id for row in wanted]
        sizes = {row.item_id: _size(row) for row in rows}
        seen = 0
        for page in pages:
            used = sum(sizes[o.item_id] for o in page.rows)
            assert len(page.rows) <= limit
            assert used <= budget or len(page.rows) == 1, [o.item_id for o in page.rows]
            seen += len(page.rows)
            if page.cursor is not None and len(page.rows) < limit:
                # the page stopped only because the next row would not fit
                assert used + sizes[wanted[seen].item_id] > budget
        by_id = {o.item_id: o for p in pages for o in p.rows}
        if failed is not True:
            assert by_id["item-3"].result == "é" * (5 * MB // 2)
        if failed is not False:
            assert by_id["item-2"].error == "e" * 500_000

    @pytest.mark.anyio
    async def test_a_row_larger_than_the_budget_comes_alone(self, store: JobStore) -> None:
        rows = [ok_row(f"big-{n}", "x" * (2 * MB)) for n in range(3)] + [ok_row("small", 1)]
        job_id = await _job_with(store, rows)
        pages = await _all_pages(store, job_id, None, 1000, 1000)
        assert [[o.item_id for o in p.rows] for p in pages] == [
            ["big-0"],
            ["big-1"],
            ["big-2"],
            ["small"],
        ]

    @pytest.mark.anyio
    async def test_the_budget_counts_bytes_not_characters(self, store: JobStore) -> None:
        rows = [ok_row("a", "é" * 50), ok_row("b", "é" * 50), ok_row("c", "x")]
        job_id = await _job_with(store, rows)
        each = _size(rows[0])  # 1 + 2 quotes + 100 bytes
        assert each == 103
        pages = await _all_pages(store, job_id, None, 1000, 2 * each)
        assert [[o.item_id for o in p.rows] for p in pages] == [["a", "b"], ["c"]]
        pages = await _all_pages(store, job_id, None, 1000, 2 * each - 1)
        assert [[o.item_id for o in p.rows] for p in pages] == [["a"], ["b", "c"]]

    @pytest.mark.anyio
    async def test_without_a_budget_pages_are_bounded_by_rows_only(self, store: JobStore) -> None:
        rows = [ok_row(f"r-{n}", "x" * 1000) for n in range(5)]
        job_id = await _job_with(store, rows)
        pages = await _all_pages(store, job_id, None, 2, None)
        assert [len(p.rows) for p in pages] == [2, 2, 1]

    # -- pages of limit=0: no row, and a cursor unless nothing is left ---------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("failed", [None, True, False])
    async def test_an_outcome_page_of_limit_0_ends_only_when_nothing_is_left(
        self, store: JobStore, failed: bool | None
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

    @pytest.mark.anyio
    async def test_a_failed_items_page_of_limit_0_ends_only_when_nothing_is_left(
        self, store: JobStore
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
