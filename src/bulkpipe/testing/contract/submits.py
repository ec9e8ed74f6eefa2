"""The store contract: submit leases (abandoned submits) and idempotency keys."""

from __future__ import annotations

import anyio
import pytest

from ...errors import JobNotFound
from ...models import Job, JobStatus
from ...store import JobStore
from ..helpers import LONG_LEASE, UNKNOWN_JOB, claim, encoded, make_job, report
from ._base import ContractBase


class SubmitsContract(ContractBase):
    """Submit leases: ``create_job(submit_lease=)``, ``renew_submit``,
    ``abandon_expired_submits``, ``Progress.abandoned``; and idempotency keys."""

    # -- idempotency keys ---------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_create_job_returns_the_job_and_keeps_its_idempotency_key(
        self, store: JobStore
    ) -> None:
        job = make_job(idempotency_key="order-1", owner="team-a")
        assert await store.create_job(job) == job
        assert (await store.get_job(job.id)).idempotency_key == "order-1"
        (listed,) = await store.list_jobs()
        assert listed.idempotency_key == "order-1"
        plain = make_job()
        assert await store.create_job(plain) == plain
        assert (await store.get_job(plain.id)).idempotency_key is None

    @pytest.mark.anyio
    async def test_a_repeated_key_returns_the_first_job_and_writes_nothing(
        self, store: JobStore
    ) -> None:
        first = make_job(idempotency_key="k", owner="team-a", priority=1)
        await store.create_job(first)
        await store.add_batch(first.id, encoded(2))
        again = make_job(idempotency_key="k", owner="team-a", priority=5)
        found = await store.create_job(again, submit_lease=LONG_LEASE)
        assert (found.id, found.priority, found.total_items) == (first.id, 1, 2)
        with pytest.raises(JobNotFound):
            await store.get_job(again.id)
        assert [j.id for j in await store.list_jobs()] == [first.id]

    @pytest.mark.anyio
    async def test_keys_are_unique_per_owner(self, store: JobStore) -> None:
        jobs = [
            make_job(idempotency_key="k", owner=None),
            make_job(idempotency_key="k", owner="a"),
            make_job(idempotency_key="k", owner="b"),
            make_job(idempotency_key="k", owner=""),
        ]
        for job in jobs:
            assert (await store.create_job(job)).id == job.id
        for job in jobs:
            repeat = make_job(idempotency_key="k", owner=job.owner)
            assert (await store.create_job(repeat)).id == job.id
        assert len(await store.list_jobs()) == 4

    @pytest.mark.anyio
    async def test_a_deleted_jobs_key_may_be_used_again(self, store: JobStore) -> None:
        first = make_job(idempotency_key="k", owner="team-a")
        await store.create_job(first)
        await store.finish_job(first.id, JobStatus.CANCELLED)
        assert await store.delete_job(first.id)
        again = make_job(idempotency_key="k", owner="team-a")
        assert (await store.create_job(again)).id == again.id
        assert [j.id for j in await store.list_jobs()] == [again.id]

    @pytest.mark.anyio
    async def test_concurrent_creates_with_one_key_make_one_job(self, store: JobStore) -> None:
        got: list[Job] = []

        async def create() -> None:
            got.append(await store.create_job(make_job(idempotency_key="race", owner="o")))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(create)
        assert len({job.id for job in got}) == 1
        assert len(await store.list_jobs()) == 1

    # -- submit leases ------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_an_expired_submit_lease_seals_the_job_as_abandoned(
        self, store: JobStore
    ) -> None:
        job = make_job()
        await store.create_job(job, submit_lease=self.short_lease)
        await store.add_batch(job.id, encoded(3))
        assert await store.abandon_expired_submits() == []  # not expired yet
        await anyio.sleep(self.lease_wait)
        ((job_id, progress),) = await store.abandon_expired_submits()
        assert job_id == job.id
        assert (progress.sealed, progress.abandoned, progress.total) == (True, True, 3)
        assert progress.status is JobStatus.PENDING
        assert (await store.get_job(job.id)).sealed
        assert (await store.progress(job.id)).abandoned
        assert await store.abandon_expired_submits() == []  # once only
        # The items stored still run; the record that ends the last batch says abandoned.
        claimed = await claim(store, job.id)
        done = await store.record(job.id, [report(claimed)])
        assert (done.abandoned, done.open_batches, done.succeeded) == (True, 0, 3)

    @pytest.mark.anyio
    async def test_renewing_keeps_a_submit_alive(self, store: JobStore) -> None:
        job = make_job()
        await store.create_job(job, submit_lease=self.short_lease)
        progress = await store.renew_submit(job.id, LONG_LEASE)
        assert (progress.sealed, progress.abandoned, progress.status) == (
            False,
            False,
            JobStatus.PENDING,
        )
        await anyio.sleep(self.lease_wait)
        assert await store.abandon_expired_submits() == []

    @pytest.mark.anyio
    async def test_renewing_an_abandoned_or_ended_job_says_so(self, store: JobStore) -> None:
        job = make_job()
        await store.create_job(job, submit_lease=self.short_lease)
        await anyio.sleep(self.lease_wait)
        await store.abandon_expired_submits()
        progress = await store.renew_submit(job.id, LONG_LEASE)
        assert (progress.sealed, progress.abandoned) == (True, True)
        await anyio.sleep(self.lease_wait)
        assert await store.abandon_expired_submits() == []  # renewing did not revive it
        other = make_job()
        await store.create_job(other, submit_lease=LONG_LEASE)
        await store.finish_job(other.id, JobStatus.CANCELLED)
        ended = await store.renew_submit(other.id, LONG_LEASE)
        assert (ended.status, ended.abandoned) == (JobStatus.CANCELLED, False)

    @pytest.mark.anyio
    async def test_sealed_ended_and_leaseless_jobs_are_never_abandoned(
        self, store: JobStore
    ) -> None:
        sealed, ended, leaseless = make_job(), make_job(), make_job()
        await store.create_job(sealed, submit_lease=self.short_lease)
        await store.create_job(ended, submit_lease=self.short_lease)
        await store.create_job(leaseless)
        await store.seal_job(sealed.id)
        await store.finish_job(ended.id, JobStatus.CANCELLED)
        await store.renew_submit(leaseless.id, self.short_lease)  # has no lease to renew
        await anyio.sleep(self.lease_wait)
        assert await store.abandon_expired_submits() == []
        assert not (await store.seal_job(sealed.id)).abandoned

    @pytest.mark.anyio
    async def test_abandon_takes_at_most_limit_jobs(self, store: JobStore) -> None:
        for _ in range(3):
            await store.create_job(make_job(), submit_lease=self.short_lease)
        await anyio.sleep(self.lease_wait)
        assert len(await store.abandon_expired_submits(limit=2)) == 2
        assert len(await store.abandon_expired_submits(limit=2)) == 1
        assert await store.abandon_expired_submits(limit=2) == []

    @pytest.mark.anyio
    async def test_renew_submit_of_an_unknown_job_raises_job_not_found(
        self, store: JobStore
    ) -> None:
        with pytest.raises(JobNotFound):
            await store.renew_submit(UNKNOWN_JOB, 1.0)
