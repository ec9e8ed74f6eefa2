"""A worker completes what a dead worker left: expired leases and unsettled jobs."""

from __future__ import annotations

import anyio
import pytest

from bulkpipe import JobStatus, Worker
from bulkpipe.stores import MemoryStore
from bulkpipe.testing import encoded, make_job, ok_row, report

pytestmark = pytest.mark.anyio


async def noop(item: object) -> None:
    return None


async def until_ended(store: MemoryStore, job_id: str) -> None:
    for _ in range(400):
        if (await store.get_job(job_id)).status.is_terminal:
            return
        await anyio.sleep(0.025)


async def test_a_job_whose_last_recorder_died_before_settling_is_completed() -> None:
    store = MemoryStore()
    job = make_job(type="noop")
    await store.create_job(job)
    await store.add_batch(job.id, encoded(3))
    await store.seal_job(job.id)
    claimed = await store.claim_batch(worker_id="dead", lease_seconds=60)
    assert claimed is not None
    rows = [ok_row(item_id) for item_id, _ in claimed.items]
    progress = await store.record(job.id, [report(claimed, rows, done=True)])
    assert progress.open_batches == 0  # ... and the worker died before settling

    worker = Worker(store, processors={"noop": noop}, lease_timeout=0.2, poll_interval=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await until_ended(store, job.id)
            worker.stop()
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED


async def test_an_expired_lease_of_a_dead_worker_is_claimed_again() -> None:
    store = MemoryStore()
    job = make_job(type="noop")
    await store.create_job(job)
    await store.add_batch(job.id, encoded(5))
    await store.seal_job(job.id)
    assert await store.claim_batch(worker_id="dead", lease_seconds=0.2) is not None

    worker = Worker(store, processors={"noop": noop}, lease_timeout=5.0, poll_interval=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await until_ended(store, job.id)
            worker.stop()
    done = await store.get_job(job.id)
    assert (done.status, done.succeeded_items) == (JobStatus.COMPLETED, 5)
