"""The store contract: ``JobStore.progress``, the read of a job's counts."""

from __future__ import annotations

import pytest

from ...errors import JobNotFound
from ...models import JobStatus
from ...store import JobStore, Progress
from ..helpers import add_job, claim, encoded, fail_row, ok_row, report
from ._base import ContractBase


def _counts(progress: Progress) -> tuple[JobStatus, bool, int, int, int, int]:
    p = progress
    return (p.status, p.sealed, p.total, p.succeeded, p.failed, p.open_batches)


async def _both(store: JobStore, job_id: str) -> Progress:
    """``progress()``, checked to answer as ``record(job_id, [])`` does."""
    progress = await store.progress(job_id)
    assert progress.lost == ()
    assert await store.record(job_id, []) == progress
    return progress


class ProgressContract(ContractBase):
    """``progress(job_id)``: the counts ``record`` returns, read without writing anything."""

    @pytest.mark.anyio
    async def test_progress_of_an_unknown_job_is_job_not_found(self, store: JobStore) -> None:
        with pytest.raises(JobNotFound):
            await store.progress("no-such-job")

    @pytest.mark.anyio
    async def test_progress_of_a_new_job(self, store: JobStore) -> None:
        job = await add_job(store)
        assert _counts(await _both(store, job.id)) == (JobStatus.PENDING, False, 0, 0, 0, 0)

    @pytest.mark.anyio
    async def test_progress_counts_after_add_record_and_seal(self, store: JobStore) -> None:
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

    @pytest.mark.anyio
    async def test_progress_writes_nothing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        claimed = await claim(store, job.id)
        await store.record(job.id, [report(claimed, [ok_row(claimed.items[0][0])], done=False)])
        before = await store.get_job(job.id)
        for _ in range(3):
            await store.progress(job.id)
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_progress_of_an_ended_job(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        await store.finish_job(job.id, JobStatus.CANCELLED)
        assert _counts(await _both(store, job.id)) == (JobStatus.CANCELLED, False, 2, 0, 0, 1)
