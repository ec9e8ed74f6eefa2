"""The store contract: claiming batches, and renewing and releasing leases."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from ...models import JobStatus
from ...options import JobOptions
from ...store import JobStore
from ..helpers import (
    GHOST_LEASE,
    LONG_LEASE,
    UNKNOWN_JOB,
    add_job,
    claim,
    decoded,
    encoded,
    fail_row,
    ok_row,
    report,
)
from ._base import ContractBase, at


class ClaimsContract(ContractBase):
    """Claiming batches, and renewing and releasing leases."""

    # -- claiming -------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_claim_finds_nothing_in_an_empty_store(self, store: JobStore) -> None:
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None
        await add_job(store)
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None

    @pytest.mark.anyio
    async def test_claim_returns_the_job_spec_lease_and_items(self, store: JobStore) -> None:
        options = JobOptions(batch_size=3, concurrency=2)
        job = await add_job(store, encoded(3), type="scoring", priority=2, options=options)
        claimed = await claim(store, worker_id="w7")
        assert (claimed.job.id, claimed.job.type, claimed.job.priority) == (job.id, "scoring", 2)
        assert claimed.job.options == options
        assert (claimed.lease.job_id, claimed.lease.batch_no) == (job.id, 0)
        assert claimed.claims == 1
        assert decoded(claimed.items) == decoded(encoded(3))

    @pytest.mark.anyio
    async def test_claim_orders_by_priority_then_creation(self, store: JobStore) -> None:
        low_old = await add_job(store, encoded(1), priority=0, created_at=at(0))
        high_old = await add_job(store, encoded(1), priority=5, created_at=at(1))
        high_new = await add_job(store, encoded(1), priority=5, created_at=at(2))
        low_new = await add_job(store, encoded(1), priority=0, created_at=at(3))
        negative = await add_job(store, encoded(1), priority=-1, created_at=at(4))
        order = [(await claim(store)).job.id for _ in range(5)]
        assert order == [high_old.id, high_new.id, low_old.id, low_new.id, negative.id]
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None

    @pytest.mark.anyio
    async def test_claim_takes_a_jobs_pending_batches_in_order(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2), created_at=at(0))
        other = await add_job(store, encoded(1), created_at=at(1))
        first = [await claim(store) for _ in range(3)]
        assert [(c.job.id, c.lease.batch_no) for c in first] == [(job.id, n) for n in range(3)]
        assert (await claim(store)).job.id == other.id

    @pytest.mark.anyio
    async def test_claim_filters_by_type(self, store: JobStore) -> None:
        a = await add_job(store, encoded(1), encoded(1, 1), type="a", created_at=at(0))
        b = await add_job(store, encoded(1), type="b", created_at=at(1))
        assert (await claim(store, types={"b"})).job.id == b.id
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, types=[]) is None
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, types=["c"]) is None
        assert (await claim(store, types=["a", "c"])).job.id == a.id
        assert (await claim(store, types=None)).job.id == a.id

    @pytest.mark.anyio
    async def test_claim_skips_excluded_jobs(self, store: JobStore) -> None:
        a = await add_job(store, encoded(1), created_at=at(0))
        b = await add_job(store, encoded(1), created_at=at(1))
        assert (await claim(store, exclude={a.id})).job.id == b.id
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, exclude=[a.id]) is None
        assert (await claim(store)).job.id == a.id

    @pytest.mark.anyio
    async def test_claim_of_a_given_job(self, store: JobStore) -> None:
        await add_job(store, encoded(1), priority=9)
        wanted = await add_job(store, encoded(1), priority=0)
        claimed = await claim(store, wanted.id)
        assert claimed.job.id == wanted.id
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=wanted.id) is None

    @pytest.mark.anyio
    async def test_first_claim_moves_job_to_processing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1))
        await claim(store)
        got = await store.get_job(job.id)
        assert got.status is JobStatus.PROCESSING
        assert got.started_at is not None
        assert got.started_at >= job.created_at - timedelta(seconds=1)
        await claim(store)
        again = await store.get_job(job.id)
        assert (again.status, again.started_at) == (JobStatus.PROCESSING, got.started_at)
        assert (await store.progress(job.id)).status is JobStatus.PROCESSING

    @pytest.mark.anyio
    async def test_tokens_strictly_increase(self, store: JobStore) -> None:
        first = await add_job(store, encoded(1), encoded(1, 1))
        await add_job(store, encoded(1))
        tokens = [(await claim(store)).lease.token for _ in range(3)]
        await store.add_batch(first.id, encoded(1, 5))
        released = await claim(store, first.id)
        await store.release([released.lease])
        tokens.append((await claim(store, first.id)).lease.token)
        assert tokens == sorted(set(tokens))

    @pytest.mark.anyio
    async def test_unexpired_lease_is_not_claimed_again(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        await claim(store, lease_seconds=LONG_LEASE)
        assert await store.claim_batch(worker_id="w2", lease_seconds=1) is None
        assert await store.claim_batch(worker_id="w2", lease_seconds=1, job_id=job.id) is None

    @pytest.mark.anyio
    async def test_expired_lease_is_claimed_again(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        first = await claim(store, lease_seconds=self.short_lease)
        await anyio.sleep(self.lease_wait)
        second = await claim(store, worker_id="w2")
        assert (second.lease.job_id, second.lease.batch_no) == (job.id, 0)
        assert second.lease.token > first.lease.token
        assert second.claims == 2
        assert decoded(second.items) == decoded(encoded(2))

    @pytest.mark.anyio
    async def test_zero_lease_expires_at_once(self, store: JobStore) -> None:
        await add_job(store, encoded(1))
        first = await claim(store, lease_seconds=0)
        second = await claim(store, worker_id="w2", lease_seconds=0)
        third = await claim(store, worker_id="w3")
        assert first.lease.token < second.lease.token < third.lease.token
        assert third.claims == 3

    @pytest.mark.anyio
    async def test_pending_batches_go_before_expired_leases(self, store: JobStore) -> None:
        await add_job(store, encoded(1), encoded(1, 1))
        assert (await claim(store, lease_seconds=0)).lease.batch_no == 0
        assert (await claim(store)).lease.batch_no == 1
        assert (await claim(store)).lease.batch_no == 0

    @pytest.mark.anyio
    async def test_claim_again_returns_only_items_without_outcome(self, store: JobStore) -> None:
        job = await add_job(store, encoded(4))
        first = await claim(store, lease_seconds=0)
        rows = [ok_row("item-0"), fail_row("item-2")]
        await store.record(job.id, [report(first, rows, done=False)])
        second = await claim(store)
        assert decoded(second.items) == decoded([encoded(4)[1], encoded(4)[3]])
        assert second.claims == 2

    @pytest.mark.anyio
    async def test_terminal_job_is_never_claimed(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2))
        await claim(store, lease_seconds=0)
        await store.finish_job(job.id, JobStatus.CANCELLED)
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None

    # -- leases ---------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_renew_extends_held_leases(self, store: JobStore) -> None:
        await add_job(store, encoded(1))
        claimed = await claim(store, lease_seconds=self.short_lease)
        result = await store.renew_leases("w1", [claimed.lease], LONG_LEASE)
        assert (result.lost, result.ended_jobs) == ((), frozenset())
        await anyio.sleep(self.lease_wait)
        assert await store.claim_batch(worker_id="w2", lease_seconds=1) is None

    @pytest.mark.anyio
    async def test_renew_can_shorten_a_lease(self, store: JobStore) -> None:
        await add_job(store, encoded(1))
        claimed = await claim(store)
        await store.renew_leases("w1", [claimed.lease], 0)
        assert (await claim(store, worker_id="w2")).lease.batch_no == 0

    @pytest.mark.anyio
    async def test_renew_reports_lost_leases(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2))
        stale = await claim(store, lease_seconds=0)
        held = await claim(store, worker_id="w2")
        done = await claim(store, worker_id="w2")
        reclaimed = await claim(store, worker_id="w2")
        assert reclaimed.lease.batch_no == stale.lease.batch_no
        await store.record(job.id, [report(done)])
        leases = [stale.lease, held.lease, done.lease, reclaimed.lease]
        result = await store.renew_leases("w1", leases, LONG_LEASE)
        assert set(result.lost) == {stale.lease, done.lease}
        assert len(result.lost) == 2
        assert result.ended_jobs == frozenset()

    @pytest.mark.anyio
    async def test_renew_reports_ended_and_missing_jobs(self, store: JobStore) -> None:
        ended = await add_job(store, encoded(1))
        running = await add_job(store, encoded(1))
        a = await claim(store, ended.id)
        b = await claim(store, running.id)
        await store.finish_job(ended.id, JobStatus.CANCELLED)
        result = await store.renew_leases("w1", [a.lease, b.lease, GHOST_LEASE], LONG_LEASE)
        assert result.ended_jobs == frozenset({ended.id, UNKNOWN_JOB})
        assert set(result.lost) == {a.lease, GHOST_LEASE}

    @pytest.mark.anyio
    async def test_release_makes_the_batch_claimable_at_once(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2))
        zero, one = await claim(store), await claim(store)
        await store.release([zero.lease, one.lease])
        again = [await claim(store, worker_id="w2") for _ in range(3)]
        assert [c.lease.batch_no for c in again] == [0, 1, 2]
        assert [c.claims for c in again] == [2, 2, 1]
        assert again[0].lease.token > one.lease.token
        assert (await store.get_job(job.id)).status is JobStatus.PROCESSING

    @pytest.mark.anyio
    async def test_release_keeps_recorded_outcomes(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [ok_row("item-1")], done=False)])
        await store.release([claimed.lease])
        again = await claim(store)
        assert [item_id for item_id, _ in again.items] == ["item-0", "item-2"]
        progress = await store.record(job.id, [report(again)])
        assert (progress.succeeded, progress.open_batches) == (3, 0)

    @pytest.mark.anyio
    async def test_release_with_a_stale_token_does_nothing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1))
        stale = await claim(store, lease_seconds=0)
        current = await claim(store, worker_id="w2")
        await store.release([stale.lease])
        assert await store.claim_batch(worker_id="w3", lease_seconds=1) is None
        progress = await store.record(job.id, [report(current)])
        assert (progress.lost, progress.succeeded) == ((), 1)
