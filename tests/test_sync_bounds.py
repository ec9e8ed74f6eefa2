"""Sync processors keep the bound: a call abandoned on timeout or cancel counts until its
thread returns, and a job's thread capacity follows its bound, not anyio's default 40."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from bulkpipe import ItemStatus, JobStatus, Pipeline
from bulkpipe.store import JobStore

from .helpers import PATIENCE, QUICK, eventually, make_items, outcome_map, quick

pytestmark = pytest.mark.anyio


class LiveThreads:
    """Counts the processor calls running in threads now, and the most at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


@pytest.mark.parametrize("bound", ["job", "max_in_flight"])
async def test_sync_calls_abandoned_on_timeout_keep_their_place_in_the_bound(
    any_store: JobStore, bound: str
) -> None:
    live = LiveThreads()

    def outlives_its_timeout(item: Mapping[str, Any]) -> int:
        with live.running():
            time.sleep(0.15)
        return 1

    # A bound of 2: two lanes of the job, or two places at the worker's gate.
    opts = (
        quick(item_timeout=0.02, max_retries=1, batch_size=8, item_concurrency=2, concurrency=1)
        if bound == "job"
        else quick(item_timeout=0.02, max_retries=1, batch_size=8)
    )
    in_flight = None if bound == "job" else 2
    processors = {"p": outlives_its_timeout}
    async with Pipeline(
        any_store, processors=processors, default_options=QUICK, max_in_flight=in_flight
    ) as p:
        job = await p.submit("p", make_items(8), options=opts)
        job = await p.wait(job.id, timeout=PATIENCE)
        outcomes = await outcome_map(p, job.id)
    assert job.status is JobStatus.COMPLETED
    assert {(o.status, o.error_type, o.attempts) for o in outcomes.values()} == {
        (ItemStatus.FAILED, "TimeoutError", 2)
    }
    # An attempt that timed out before its thread started is not run at all (on a loaded
    # machine that happens), hence at most 16 calls; never more than 2 at once.
    assert live.peak <= 2 < live.calls <= 16


async def test_a_timed_out_sync_call_is_recorded_at_once_and_its_lane_waits() -> None:
    release = threading.Event()
    started: list[str] = []

    def first_hangs(item: Mapping[str, Any]) -> str:
        started.append(item["id"])
        if item["n"] == 0:
            release.wait(PATIENCE)
        return "ok"

    opts = quick(item_timeout=0.05, max_retries=0, batch_size=2, concurrency=1, item_concurrency=1)
    async with Pipeline(processors={"p": first_hangs}, default_options=QUICK) as p:
        job = await p.submit("p", make_items(2), options=opts)
        try:

            async def recorded() -> bool:
                return (await p.get(job.id)).failed_items == 1

            await eventually(recorded, "the timed-out item's outcome")
            # The only lane is still taken by the hung thread: the next item has not started.
            assert started == ["item-0"]
        finally:
            release.set()
        job = await p.wait(job.id, timeout=PATIENCE)
        outcomes = await outcome_map(p, job.id)
    assert started == ["item-0", "item-1"]
    assert outcomes["item-0"].error_type == "TimeoutError"
    assert outcomes["item-1"].status is ItemStatus.SUCCEEDED


async def test_a_job_bound_of_60_runs_60_sync_calls_at_once() -> None:
    barrier = threading.Barrier(60, timeout=PATIENCE)

    def meets(item: Mapping[str, Any]) -> int:
        return barrier.wait()  # only returns once 60 calls are waiting together

    opts = quick(batch_size=60, concurrency=1, max_retries=0)
    async with Pipeline(processors={"p": meets}, default_options=QUICK) as p:
        job = await p.submit("p", make_items(60), options=opts)
        job = await p.wait(job.id, timeout=PATIENCE * 2)
    assert (job.status, job.succeeded_items) == (JobStatus.COMPLETED, 60)


async def test_a_timed_out_sync_process_batch_keeps_its_lane() -> None:
    live = LiveThreads()

    class Slow:
        def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
            with live.running():
                time.sleep(0.1)
            return [1] * len(items)

    opts = quick(item_timeout=0.02, max_retries=0, batch_size=2, concurrency=1)
    async with Pipeline(processors={"p": Slow()}, default_options=QUICK) as p:
        job = await p.submit("p", make_items(10), options=opts)
        job = await p.wait(job.id, timeout=PATIENCE)
    assert (job.status, job.failed_items) == (JobStatus.COMPLETED, 10)
    assert live.peak <= 1 <= live.calls <= 5  # one thread at a time (a skipped call: fewer)


async def test_cancelling_a_job_with_stuck_sync_calls_ends_it_and_the_pipeline() -> None:
    release = threading.Event()
    live = LiveThreads()

    def stuck(item: Mapping[str, Any]) -> int:
        with live.running():
            release.wait(PATIENCE * 3)
        return 1

    opts = quick(batch_size=4, concurrency=1)
    try:
        with anyio.fail_after(PATIENCE):
            async with Pipeline(processors={"p": stuck}, default_options=QUICK) as p:
                job = await p.submit("p", make_items(4), options=opts)
                await eventually(lambda: live.now == 4, "four stuck calls")
                job = await p.cancel(job.id)
                assert job.status is JobStatus.CANCELLED
            # Leaving the block stopped the worker although the threads still run.
            assert live.now == 4
    finally:
        release.set()


async def test_a_stopped_lane_gives_its_gate_place_back_only_when_its_thread_returns() -> None:
    release = threading.Event()
    live = LiveThreads()

    def stuck(item: Mapping[str, Any]) -> int:
        with live.running():
            release.wait(PATIENCE * 3)
        return 1

    def quick_one(item: Mapping[str, Any]) -> int:
        return 2

    processors = {"stuck": stuck, "quick": quick_one}
    async with Pipeline(processors=processors, default_options=QUICK, max_in_flight=1) as p:
        gate = p.local_workers[0].gate
        assert gate is not None
        try:
            stuck_job = await p.submit("stuck", make_items(1), options=quick())
            await eventually(lambda: live.now == 1, "the stuck call")
            await p.cancel(stuck_job.id)
            assert gate.in_use == 1  # the cancelled call's thread still holds the place
            other = await p.submit("quick", make_items(1), options=quick())
            await eventually(lambda: gate.contended(0), "the other job queued at the gate")
            assert (await p.get(other.id)).succeeded_items == 0
        finally:
            release.set()
        await eventually(lambda: gate.in_use == 0, "the place given back")
        other_done = await p.wait(other.id, timeout=PATIENCE)
    assert other_done.succeeded_items == 1


@pytest.mark.parametrize("in_flight", [None, 2])
async def test_a_job_ends_while_a_timed_out_sync_call_still_runs(in_flight: int | None) -> None:
    release = threading.Event()
    live = LiveThreads()

    def first_hangs(item: Mapping[str, Any]) -> int:
        with live.running():
            if item["n"] == 0:
                release.wait(PATIENCE * 3)
        return 1

    opts = quick(item_timeout=0.05, max_retries=0, batch_size=2, concurrency=2)
    processors = {"p": first_hangs}
    async with Pipeline(processors=processors, default_options=QUICK, max_in_flight=in_flight) as p:
        try:
            job = await p.submit("p", make_items(4), options=opts)
            job = await p.wait(job.id, timeout=PATIENCE)
            assert (job.status, job.failed_items, job.succeeded_items) == (
                JobStatus.COMPLETED,
                1,
                3,
            )
            assert live.now == 1  # the hung call still runs
            gate = p.local_workers[0].gate
            assert gate is None or gate.in_use == 1  # and keeps its place at the gate (of 2)
        finally:
            release.set()
        gate = p.local_workers[0].gate
        if gate is not None:
            await eventually(lambda: gate.in_use == 0, "the place given back")
