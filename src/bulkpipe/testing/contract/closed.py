"""The store contract: a job that is terminal or sealed takes no more items (``JobClosed``)."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from ...errors import JobClosed
from ...models import JobStatus
from ...store import JobStore
from ..helpers import add_job, encoded, job_error
from ._base import ContractBase

_ENDS = [JobStatus.CANCELLED, JobStatus.FAILED]


class ClosedJobsContract(ContractBase):
    """Adding items or errors to a job that takes no more: nothing stored, :class:`JobClosed`."""

    @pytest.mark.anyio
    @pytest.mark.parametrize("single", [True, False], ids=["add_batch", "add_batches"])
    async def test_adding_items_after_seal_raises_job_closed(
        self, store: JobStore, single: bool
    ) -> None:
        job = await add_job(store, encoded(2), seal=True)
        before = await store.get_job(job.id)
        add = (
            store.add_batch(job.id, encoded(2, 2))
            if single
            else store.add_batches(job.id, [encoded(1, 2), encoded(1, 3)])
        )
        with pytest.raises(JobClosed) as caught:
            await add
        assert (caught.value.job_id, caught.value.sealed) == (job.id, True)
        assert caught.value.status == JobStatus.PENDING.value
        assert "sealed" in str(caught.value)
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    @pytest.mark.parametrize("status", _ENDS, ids=lambda s: s.value)
    @pytest.mark.parametrize("seal", [False, True], ids=["unsealed", "sealed"])
    async def test_adding_items_to_an_ended_job_raises_job_closed(
        self, store: JobStore, status: JobStatus, seal: bool
    ) -> None:
        job = await add_job(store, encoded(2), seal=seal)
        before, _ = await store.finish_job(job.id, status)
        adds: list[Awaitable[object]] = [
            store.add_batch(job.id, encoded(3, 2)),
            store.add_batches(job.id, [encoded(3, 2), encoded(2, 5)]),
            store.add_batches(job.id, [encoded(1)]),  # a repeat only
            store.add_batches(job.id, []),
        ]
        for add in adds:
            with pytest.raises(JobClosed) as caught:
                await add
            assert (caught.value.job_id, caught.value.status) == (job.id, status.value)
            assert not caught.value.sealed
            assert f"already {status.value}" in str(caught.value)
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_adding_errors_to_an_ended_job_raises_job_closed(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        before, _ = await store.finish_job(job.id, JobStatus.CANCELLED)
        with pytest.raises(JobClosed):
            await store.add_errors(job.id, [job_error("late")], rejected=1)
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_adding_errors_to_a_sealed_open_job_is_allowed(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), seal=True)
        await store.add_errors(job.id, [job_error("rejected")], rejected=1)
        got = await store.get_job(job.id)
        assert (got.rejected_items, got.error_count) == (1, 1)
