"""The blocked-loop watchdog and the heartbeat thread, in process (asyncio and trio)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from bulkpipe import JobOptions, JobStatus, StoreError, Worker
from bulkpipe.heartbeat import HeartbeatThread
from bulkpipe.store import Lease, RenewResult
from bulkpipe.stores import MemoryStore, SQLiteStore
from bulkpipe.testing import encoded, make_job
from bulkpipe.watchdog import LoopWatchdog

pytestmark = pytest.mark.anyio


def warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= 30]


async def test_one_warning_per_blocked_episode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bulkpipe.watchdog")
    watchdog = LoopWatchdog(0.2, lambda: "job j1 (processor 'p')", "worker w")
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        await anyio.sleep(0.3)  # a loop that runs: nothing to say
        assert watchdog.episodes == 0
        time.sleep(0.6)  # noqa: ASYNC251 - one episode
        await anyio.sleep(0.3)
        time.sleep(0.5)  # noqa: ASYNC251 - a second one
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    found = warnings(caplog, "bulkpipe.watchdog")
    assert watchdog.episodes == 2
    assert len(found) == 2, found
    assert all("while running job j1 (processor 'p')" in w for w in found)
    assert "blocked for 0.6 s" in found[0] or "blocked for 0.5 s" in found[0], found
    assert "test_procs_watchdog.py" in found[0]  # where the loop was stuck


async def test_watchdogs_on_one_loop_report_a_block_once(caplog: pytest.LogCaptureFixture) -> None:
    """Workers of one Pipeline share a loop: one warning per block, naming what each ran."""
    caplog.set_level(logging.WARNING, logger="bulkpipe.watchdog")
    first = LoopWatchdog(0.2, lambda: "", "worker a")  # this one runs nothing
    second = LoopWatchdog(0.2, lambda: "job j2 (processor 'p')", "worker b")
    async with anyio.create_task_group() as tg:
        await tg.start(first.run)
        await tg.start(second.run)
        await anyio.sleep(0.1)
        time.sleep(0.5)  # noqa: ASYNC251
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    found = warnings(caplog, "bulkpipe.watchdog")
    assert len(found) == 1, found
    assert found[0].startswith("worker a: ")
    assert "while running job j2 (processor 'p');" in found[0]


async def test_a_long_block_is_reported_while_it_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bulkpipe.watchdog")
    watchdog = LoopWatchdog(0.05, lambda: "no job", "worker w")
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        await anyio.sleep(0.1)
        time.sleep(0.9)  # noqa: ASYNC251 - over 10 thresholds: reported while it goes on
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    found = warnings(caplog, "bulkpipe.watchdog")
    assert len(found) == 1, found
    assert "and counting" in found[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("runs again after 0.9 s" in m for m in infos), infos


async def test_a_worker_names_the_job_and_processor_blocking_its_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bulkpipe.watchdog")

    async def blocking(item: object) -> None:
        time.sleep(0.5)  # noqa: ASYNC251 - the mistake the watchdog is for

    store = MemoryStore()
    job = make_job(type="blocking")
    await store.create_job(job)
    await store.add_batch(job.id, encoded(1))
    await store.seal_job(job.id)
    worker = Worker(
        store, processors={"blocking": blocking}, poll_interval=0.05, blocked_loop_threshold=0.2
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            while not (await store.get_job(job.id)).status.is_terminal:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            worker.stop()
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    found = warnings(caplog, "bulkpipe.watchdog")
    assert len(found) == 1, found
    assert f"while running job {job.id} (processor 'blocking')" in found[0]


async def test_the_watchdog_can_be_turned_off() -> None:
    worker = Worker(MemoryStore(), blocked_loop_threshold=None)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await anyio.sleep(0.05)
        assert worker.watchdog is None
        worker.stop()
    with pytest.raises(ValueError, match="blocked_loop_threshold"):
        Worker(MemoryStore(), blocked_loop_threshold=0)


class Flaky(MemoryStore):
    """A store whose lease renewals fail while ``down``."""

    down = False

    async def renew_leases(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        if self.down:
            raise StoreError("the database is unreachable")
        return RenewResult(lost=(), ended_jobs=frozenset())


async def test_the_heartbeat_thread_reports_an_outage_to_the_loop() -> None:
    store = Flaky()
    beat = HeartbeatThread(store, worker_id="w", lease_seconds=1.0, interval=0.02)
    beat.hold(Lease(job_id="j", batch_no=0, token=1))
    beat.start()
    try:
        while beat.renewals < 2:  # noqa: ASYNC110 - a count kept by another thread
            await anyio.sleep(0.01)
        assert beat.take().answered
        store.down = True
        await anyio.sleep(0.3)  # some 15 failed tries
        down = beat.take()
        store.down = False
        renewed = beat.renewals
        while beat.renewals < renewed + 2:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        back = beat.take()
    finally:
        await anyio.to_thread.run_sync(beat.stop)
    assert isinstance(down.error, StoreError)
    assert not down.answered
    assert back.error is None
    assert back.answered
    nothing = beat.take()  # nothing new since
    assert (nothing.lost, nothing.ended) == ([], set())
    assert (nothing.error, nothing.answered) == (None, False)


async def test_the_heartbeat_thread_hands_lost_leases_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    await store.open()
    try:
        job = make_job(type="t")
        await store.create_job(job)
        await store.add_batch(job.id, encoded(2))
        claimed = await store.claim_batch(worker_id="w", lease_seconds=0.5)
        assert claimed is not None
        beat = HeartbeatThread(
            store.heartbeat_store(), worker_id="w", lease_seconds=0.5, interval=0.05
        )
        beat.hold(claimed.lease)
        beat.start()
        try:
            await anyio.sleep(1.0)  # twice the lease: renewed from the thread meanwhile
            assert await store.claim_batch(worker_id="other", lease_seconds=5) is None
            await store.release([claimed.lease])
            lost: list[Lease] = []
            with anyio.fail_after(5):
                while not lost:
                    lost = beat.take().lost
                    await anyio.sleep(0.02)
            assert lost == [claimed.lease]
        finally:
            await anyio.to_thread.run_sync(beat.stop)
    finally:
        await store.close()


async def test_an_in_memory_sqlite_store_renews_on_the_loop() -> None:
    """A second connection to ``:memory:`` would be another, empty database: its renewals
    would report every lease lost. Such a store has no heartbeat store."""
    store = SQLiteStore(":memory:")
    assert store.heartbeat_store() is None
    await store.open()
    try:
        job = make_job(type="noop")
        await store.create_job(job)
        await store.add_batch(job.id, encoded(3))
        await store.seal_job(job.id)

        async def noop(item: object) -> None:
            await anyio.sleep(0.6)  # over two heartbeats of a 0.6 s lease

        worker = Worker(store, processors={"noop": noop}, lease_timeout=0.6, poll_interval=0.05)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(worker.serve)
                assert worker.heartbeat_thread is None
                while not (await store.get_job(job.id)).status.is_terminal:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                worker.stop()
        assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    finally:
        await store.close()


async def test_max_items_drains_the_open_batches_and_returns() -> None:
    """Reaching ``max_items`` stops claiming but lets the claimed items finish (not cancelled,
    as on stop()), records them, and run() returns saying which limit it was."""
    store = MemoryStore()
    job = make_job(type="slow", options=JobOptions(batch_size=2, concurrency=2))
    await store.create_job(job)
    for i in range(5):
        await store.add_batch(job.id, encoded(2, start=2 * i))
    await store.seal_job(job.id)

    async def slow(item: object) -> str:
        await anyio.sleep(0.3)
        return "done"

    worker = Worker(store, processors={"slow": slow}, poll_interval=0.05, max_items=4)
    with anyio.fail_after(10):
        await worker.run()
    assert worker.limit_reached == "max_items"
    assert not worker.stop_requested
    assert worker.items_claimed == 4  # two batches of two, then nothing more
    page = await store.read_outcomes(job.id)
    assert len(page.rows) == 4
    assert all(outcome.result == "done" for outcome in page.rows), page.rows
    assert await store.claim_batch(worker_id="next", lease_seconds=5) is not None  # the rest


async def test_max_items_does_not_wait_for_a_job_still_being_submitted() -> None:
    store = MemoryStore()
    job = make_job(type="quick", options=JobOptions(batch_size=2, timeout=60))
    await store.create_job(job)
    await store.add_batch(job.id, encoded(2))  # not sealed: more may come

    async def quick(item: object) -> str:
        return "done"

    worker = Worker(store, processors={"quick": quick}, poll_interval=0.05, max_items=2)
    with anyio.fail_after(5):  # not the job's 60 s timeout
        await worker.run()
    assert worker.limit_reached == "max_items"
    assert len((await store.read_outcomes(job.id)).rows) == 2


class Counting(MemoryStore):
    """A store that notes which leases each renewal was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[set[Lease]] = []

    async def renew_leases(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        self.asked.append(set(leases))
        return RenewResult(lost=(), ended_jobs=frozenset())


async def test_a_lease_no_runner_ever_lists_is_not_renewed_for_ever() -> None:
    # A batch claimed and at once closed or dropped (lost, reopened) before a heartbeat tick
    # never shows in a runner's leases; it must not be renewed past the next tick.
    store = Counting()
    beat = HeartbeatThread(store, worker_id="w", lease_seconds=1.0, interval=0.02)
    gone, kept = Lease(job_id="j", batch_no=0, token=1), Lease(job_id="j", batch_no=1, token=2)
    beat.hold(gone)
    beat.hold(kept)
    beat.reconcile([kept])  # the tick right after the claim: `gone` was just handed over
    beat.reconcile([kept])  # the next tick: no runner lists it
    beat.start()
    try:
        while len(store.asked) < 3:  # noqa: ASYNC110 - a count kept by another thread
            await anyio.sleep(0.01)
    finally:
        await anyio.to_thread.run_sync(beat.stop)
    assert all(asked == {kept} for asked in store.asked)
