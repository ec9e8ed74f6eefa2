"""The store contract: deleting and pruning jobs, named locks, and unfinished items."""

from __future__ import annotations

import time
from collections.abc import Awaitable

import anyio
import pytest

from ...errors import InvalidArgument, JobNotFound
from ...models import JobStatus
from ...store import EncodedItem, JobStore, Page
from ..helpers import (
    UNKNOWN_JOB,
    add_job,
    claim,
    decoded,
    encoded,
    fail_row,
    ok_row,
    read_pages,
    report,
)
from ._base import ContractBase

_TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class HousekeepingContract(ContractBase):
    """Deleting and pruning jobs, named locks, and unfinished items."""

    async def _finished_job(self, store: JobStore, n: int = 6, *, fail: int = 2) -> str:
        """A completed job of ``n`` items in batches of 3, the first ``fail`` of them failed."""
        batches = [encoded(3, start) for start in range(0, n, 3)]
        job = await add_job(store, *batches, seal=True)
        for _ in batches:
            claimed = await claim(store, job.id)
            rows = [
                fail_row(item_id) if int(item_id.split("-")[1]) < fail else ok_row(item_id)
                for item_id, _ in claimed.items
            ]
            await store.record(job.id, [report(claimed, rows)])
        _, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        return job.id

    # -- delete -----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_delete_removes_a_terminal_job_and_its_rows(self, store: JobStore) -> None:
        gone = await self._finished_job(store, 9)
        kept = await self._finished_job(store, 3)
        assert await store.delete_job(gone, chunk_rows=2) is True  # several chunks per table
        with pytest.raises(JobNotFound):
            await store.get_job(gone)
        with pytest.raises(JobNotFound):
            await store.read_outcomes(gone)
        with pytest.raises(JobNotFound):
            await store.delete_job(gone)
        assert [j.id for j in await store.list_jobs()] == [kept]
        assert len((await store.read_outcomes(kept)).rows) == 3

    @pytest.mark.anyio
    async def test_delete_refuses_a_live_job(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3), seal=True)
        await claim(store, job.id)
        assert await store.delete_job(job.id) is False
        assert (await store.get_job(job.id)).total_items == 3
        _, changed = await store.finish_job(job.id, JobStatus.CANCELLED)
        assert changed
        assert await store.delete_job(job.id) is True

    @pytest.mark.anyio
    async def test_delete_of_an_unknown_job_and_bad_chunks(self, store: JobStore) -> None:
        with pytest.raises(JobNotFound):
            await store.delete_job(UNKNOWN_JOB)
        job_id = await self._finished_job(store, 3)
        for bad in (0, -1):
            with pytest.raises(InvalidArgument):
                await store.delete_job(job_id, chunk_rows=bad)
        assert (await store.get_job(job_id)).total_items == 3

    @pytest.mark.anyio
    async def test_a_deleted_jobs_claims_and_leases_end(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3), encoded(3, 3), seal=True)
        claimed = await claim(store, job.id)
        await store.finish_job(job.id, JobStatus.CANCELLED)
        assert await store.delete_job(job.id)
        renewed = await store.renew_leases("w1", [claimed.lease], 30)
        assert job.id in renewed.ended_jobs
        assert await store.claim_batch(worker_id="w1", lease_seconds=30) is None

    # -- ended jobs -------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_ended_jobs_lists_terminal_jobs_oldest_first(self, store: JobStore) -> None:
        first = await self._finished_job(store, 3)
        await anyio.sleep(0.02)
        cancelled = await add_job(store, encoded(1), seal=True)
        await store.finish_job(cancelled.id, JobStatus.CANCELLED)
        await anyio.sleep(0.02)
        live = await add_job(store, encoded(1), seal=True)
        later = time.time() + 60
        assert await store.ended_jobs(before=later, statuses=_TERMINAL, limit=10) == [
            first,
            cancelled.id,
        ]
        assert await store.ended_jobs(before=later, statuses=_TERMINAL, limit=1) == [first]
        only = [JobStatus.CANCELLED]
        assert await store.ended_jobs(before=later, statuses=only, limit=10) == [cancelled.id]
        assert await store.ended_jobs(before=time.time() - 3600, statuses=_TERMINAL, limit=10) == []
        assert live.id not in await store.ended_jobs(before=later, statuses=_TERMINAL, limit=10)
        for bad in ([JobStatus.PROCESSING], []):
            with pytest.raises(InvalidArgument):
                await store.ended_jobs(before=later, statuses=bad, limit=10)

    # -- locks ------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_a_named_lock_has_one_holder_until_it_expires(self, store: JobStore) -> None:
        assert await store.try_lock("retention", "a", 30) is True
        assert await store.try_lock("retention", "b", 30) is False
        assert await store.try_lock("other", "b", 30) is True
        assert await store.try_lock("retention", "a", 30) is True  # its holder extends it
        await store.unlock("retention", "b")  # not b's: still held
        assert await store.try_lock("retention", "b", 30) is False
        await store.unlock("retention", "a")
        assert await store.try_lock("retention", "b", self.short_lease) is True
        await anyio.sleep(self.lease_wait)
        assert await store.try_lock("retention", "a", 30) is True  # b's expired
        with pytest.raises(InvalidArgument):
            await store.try_lock("retention", "a", 0)

    # -- unfinished items -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_unfinished_items_are_the_failed_and_the_never_run(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3), encoded(3, 3), encoded(3, 6), seal=True)
        claimed = await claim(store, job.id)  # batch 0: item-0 failed, item-1 ok, done
        rows = [fail_row("item-0"), ok_row("item-1"), ok_row("item-2")]
        await store.record(job.id, [report(claimed, rows)])
        partial = await claim(store, job.id)  # batch 1: item-3 ok, the rest never run
        await store.record(job.id, [report(partial, [ok_row("item-3")], done=False)])
        await store.finish_job(job.id, JobStatus.CANCELLED)
        failed = await read_pages(lambda c: store.read_failed_items(job.id, cursor=c, limit=2))
        assert [item_id for item_id, _ in failed] == ["item-0"]
        for limit in (1, 2, 100):

            def page(cursor: int | None, n: int = limit) -> Awaitable[Page[EncodedItem]]:
                return store.read_failed_items(job.id, cursor=cursor, limit=n, unfinished=True)

            rows_read = await read_pages(page)
            want = ["item-0", "item-4", "item-5", "item-6", "item-7", "item-8"]
            assert sorted(item_id for item_id, _ in rows_read) == want
            assert decoded(sorted(rows_read)) == decoded(
                sorted(it for it in encoded(9) if it[0] in want)
            )
        with pytest.raises(JobNotFound):
            await store.read_failed_items(UNKNOWN_JOB, unfinished=True)

    @pytest.mark.anyio
    async def test_a_finished_job_has_no_unfinished_items(self, store: JobStore) -> None:
        job_id = await self._finished_job(store, 6, fail=0)
        page = await store.read_failed_items(job_id, unfinished=True)
        assert (page.rows, page.cursor) == ([], None)
