"""The store contract: creating, reading and listing jobs, and adding their items."""

from __future__ import annotations

import contextlib

import pytest

from ..._snapshot import MAX_ERRORS
from ...errors import JobNotFound, StoreError
from ...items import encode_json
from ...models import JobStatus
from ...options import JobOptions
from ...store import JobStore, Progress
from ..helpers import (
    GHOST_LEASE,
    LONG_LEASE,
    UNKNOWN_JOB,
    add_job,
    claim,
    decoded,
    encoded,
    job_error,
    make_job,
)
from ._base import JOB_ID_CALLS, ContractBase, at, near


class JobsContract(ContractBase):
    """Creating, reading and listing jobs, and adding their items."""

    # -- jobs -----------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_create_and_get_job(self, store: JobStore) -> None:
        options = JobOptions(batch_size=7, max_retries=1, id_key="key")
        job = make_job(
            type="scoring",
            priority=3,
            options=options,
            retry_of="old-job",
            owner="team-a",
            source="nodes",
            params={"limit": 5, "tags": ["a"]},
        )
        await store.create_job(job)
        got = await store.get_job(job.id)
        assert (got.id, got.type, got.status, got.priority) == (
            job.id,
            "scoring",
            JobStatus.PENDING,
            3,
        )
        assert got.options == options
        assert (got.retry_of, got.owner) == ("old-job", "team-a")
        assert (got.source, got.params) == ("nodes", job.params)
        assert not got.sealed
        assert (got.total_items, got.processed_items, got.succeeded_items) == (0, 0, 0)
        assert (got.failed_items, got.rejected_items, got.error_count) == (0, 0, 0)
        assert got.errors == []
        assert got.result is None
        assert near(got.created_at, job.created_at)
        assert got.started_at is None
        assert got.completed_at is None

    @pytest.mark.anyio
    async def test_create_job_twice_raises_store_error(self, store: JobStore) -> None:
        job = await add_job(store)
        with pytest.raises(StoreError):
            await store.create_job(job)

    @pytest.mark.anyio
    async def test_list_jobs_newest_first(self, store: JobStore) -> None:
        jobs = [await add_job(store, created_at=at(i)) for i in range(4)]
        listed = await store.list_jobs()
        assert [j.id for j in listed] == [j.id for j in reversed(jobs)]

    @pytest.mark.anyio
    async def test_list_jobs_filters_by_status(self, store: JobStore) -> None:
        a, b, c = [await add_job(store, created_at=at(i)) for i in range(3)]
        await store.finish_job(a.id, JobStatus.CANCELLED)
        await store.finish_job(c.id, JobStatus.CANCELLED)
        cancelled = await store.list_jobs(status=JobStatus.CANCELLED)
        assert [j.id for j in cancelled] == [c.id, a.id]
        assert [j.id for j in await store.list_jobs(status=JobStatus.PENDING)] == [b.id]
        assert await store.list_jobs(status=JobStatus.COMPLETED) == []

    @pytest.mark.anyio
    async def test_list_jobs_filters_by_owner(self, store: JobStore) -> None:
        a = await add_job(store, owner="ann", created_at=at(0))
        await add_job(store, owner="bob", created_at=at(1))
        c = await add_job(store, owner="ann", created_at=at(2))
        await add_job(store, created_at=at(3))
        await store.finish_job(c.id, JobStatus.CANCELLED)
        assert [j.id for j in await store.list_jobs(owner="ann")] == [c.id, a.id]
        assert [j.id for j in await store.list_jobs(owner="ann", limit=1, offset=1)] == [a.id]
        pending = await store.list_jobs(owner="ann", status=JobStatus.PENDING)
        assert [j.id for j in pending] == [a.id]
        assert await store.list_jobs(owner="eve") == []
        assert len(await store.list_jobs()) == 4

    @pytest.mark.anyio
    async def test_list_jobs_offset_and_limit(self, store: JobStore) -> None:
        jobs = [await add_job(store, created_at=at(i)) for i in range(5)]
        newest_first = [j.id for j in reversed(jobs)]
        assert [j.id for j in await store.list_jobs(limit=2)] == newest_first[:2]
        assert [j.id for j in await store.list_jobs(limit=2, offset=2)] == newest_first[2:4]
        assert [j.id for j in await store.list_jobs(limit=2, offset=4)] == newest_first[4:]
        assert await store.list_jobs(offset=5) == []

    @pytest.mark.anyio
    @pytest.mark.parametrize("method", sorted(JOB_ID_CALLS))
    async def test_unknown_job_id_raises_job_not_found(self, store: JobStore, method: str) -> None:
        await add_job(store, encoded(2))
        with pytest.raises(JobNotFound) as info:
            await JOB_ID_CALLS[method](store)
        assert info.value.job_id == UNKNOWN_JOB

    @pytest.mark.anyio
    async def test_claim_unknown_job_id_finds_nothing(self, store: JobStore) -> None:
        await add_job(store, encoded(2))
        # Either answer is acceptable: there is nothing of that job to claim.
        with contextlib.suppress(JobNotFound):
            got = await store.claim_batch(
                worker_id="w1", lease_seconds=LONG_LEASE, job_id=UNKNOWN_JOB
            )
            assert got is None

    @pytest.mark.anyio
    async def test_release_ignores_unknown_job(self, store: JobStore) -> None:
        await store.release([GHOST_LEASE])

    # -- submission -----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_add_batch_numbers_batches_from_zero(self, store: JobStore) -> None:
        job = await add_job(store)
        for start in (0, 3, 6):
            assert await store.add_batch(job.id, encoded(3, start)) == []
        assert (await store.get_job(job.id)).total_items == 9
        for no, start in enumerate((0, 3, 6)):
            claimed = await claim(store, job.id)
            assert claimed.lease.batch_no == no
            assert decoded(claimed.items) == decoded(encoded(3, start))
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None

    @pytest.mark.anyio
    async def test_add_batch_refuses_ids_the_job_already_has(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3))
        refused = await store.add_batch(job.id, encoded(4, 1))  # 1, 2 are repeats
        assert refused == ["item-1", "item-2"]
        assert (await store.get_job(job.id)).total_items == 5
        await claim(store, job.id)
        second = await claim(store, job.id)
        assert decoded(second.items) == decoded(encoded(2, 3))

    @pytest.mark.anyio
    async def test_add_batch_refuses_ids_repeated_in_one_call(self, store: JobStore) -> None:
        job = await add_job(store)
        first, second = encoded(2)
        again = (first[0], encode_json({"id": first[0], "second": True}))
        refused = await store.add_batch(job.id, [first, second, again, again])
        assert refused == [first[0], first[0]]
        claimed = await claim(store, job.id)
        assert decoded(claimed.items) == decoded([first, second])  # the first payload is kept
        assert (await store.get_job(job.id)).total_items == 2

    @pytest.mark.anyio
    async def test_add_batch_of_only_repeats_makes_no_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        assert await store.add_batch(job.id, encoded(2)) == ["item-0", "item-1"]
        assert await store.add_batch(job.id, []) == []
        await store.add_batch(job.id, encoded(1, 2))
        assert (await claim(store, job.id)).lease.batch_no == 0
        assert (await claim(store, job.id)).lease.batch_no == 1
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None
        progress = await store.progress(job.id)
        assert (progress.total, progress.open_batches) == (3, 2)

    @pytest.mark.anyio
    async def test_seal_returns_progress(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(3, 2))
        progress = await store.seal_job(job.id)
        assert progress == Progress(
            status=JobStatus.PENDING, sealed=True, total=5, succeeded=0, failed=0, open_batches=2
        )
        assert (await store.get_job(job.id)).sealed

    @pytest.mark.anyio
    async def test_add_batches_numbers_on_across_calls_and_add_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        assert await store.add_batches(job.id, [encoded(2, 2), encoded(1, 4)]) == []
        assert await store.add_batch(job.id, encoded(1, 5)) == []
        assert await store.add_batches(job.id, [encoded(2, 6)]) == []
        starts_sizes = [(0, 2), (2, 2), (4, 1), (5, 1), (6, 2)]
        for no, (start, size) in enumerate(starts_sizes):
            claimed = await claim(store, job.id)
            assert claimed.lease.batch_no == no
            assert decoded(claimed.items) == decoded(encoded(size, start))
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None
        progress = await store.progress(job.id)
        assert (progress.total, progress.open_batches) == (8, 5)

    @pytest.mark.anyio
    async def test_add_batches_refuses_repeats_within_and_across_batches_and_calls(
        self, store: JobStore
    ) -> None:
        job = await add_job(store, encoded(2))  # item-0, item-1
        i0, i1, i2, i3, i4, i5 = encoded(6)
        i2_again = (i2[0], encode_json({"id": i2[0], "second": True}))
        refused = await store.add_batches(job.id, [[i1, i2, i2_again], [i2_again, i3, i0], [i4]])
        assert refused == [i1[0], i2[0], i2[0], i0[0]]
        assert await store.add_batches(job.id, [[i3, i5]]) == [i3[0]]
        batches = [await claim(store, job.id) for _ in range(5)]
        assert [c.lease.batch_no for c in batches] == [0, 1, 2, 3, 4]
        # The first payload of item-2 is kept.
        assert [decoded(c.items) for c in batches[1:]] == [decoded([i]) for i in (i2, i3, i4, i5)]
        assert (await store.get_job(job.id)).total_items == 6

    @pytest.mark.anyio
    async def test_add_batches_all_repeat_batch_makes_no_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        batches = [encoded(2), encoded(1, 2), encoded(1), [], encoded(1, 3)]
        assert await store.add_batches(job.id, batches) == ["item-0", "item-1", "item-0"]
        assert await store.add_batches(job.id, [encoded(2)]) == ["item-0", "item-1"]
        await store.add_batch(job.id, encoded(1, 4))
        claims = [await claim(store, job.id) for _ in range(4)]
        assert [c.lease.batch_no for c in claims] == [0, 1, 2, 3]
        assert [c.items[0][0] for c in claims[1:]] == ["item-2", "item-3", "item-4"]
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None
        progress = await store.progress(job.id)
        assert (progress.total, progress.open_batches) == (5, 4)

    @pytest.mark.anyio
    async def test_add_batches_of_nothing_is_a_no_op(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        assert await store.add_batches(job.id, []) == []
        assert await store.add_batches(job.id, [[], []]) == []
        progress = await store.progress(job.id)
        assert (progress.total, progress.open_batches) == (2, 1)
        await store.add_batches(job.id, [encoded(1, 2)])
        await claim(store, job.id)
        assert (await claim(store, job.id)).lease.batch_no == 1

    @pytest.mark.anyio
    async def test_add_errors_keeps_the_first_errors_and_counts_all(self, store: JobStore) -> None:
        job = await add_job(store)
        errors = [job_error(f"e{i}", f"error {i}") for i in range(MAX_ERRORS + 5)]
        await store.add_errors(job.id, errors[:3], rejected=3)
        await store.add_errors(job.id, errors[3:], rejected=len(errors) - 3)
        await store.add_errors(job.id, [], rejected=2)
        got = await store.get_job(job.id)
        assert [e.item_id for e in got.errors] == [f"e{i}" for i in range(MAX_ERRORS)]
        assert got.errors[0].error == "error 0"
        assert got.error_count == MAX_ERRORS + 5
        assert got.rejected_items == MAX_ERRORS + 7
