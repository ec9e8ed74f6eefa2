"""Hypothesis properties of the scheduler, on asyncio and on trio.

For random item counts, batch sizes, concurrency and failure patterns (per item: succeed, fail
N times then succeed, fail permanently): every item gets exactly one final outcome, the counts
add up, the concurrency bound is never exceeded, progress never goes backwards, and
``retry_failed`` covers exactly the failed items.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkpipe import (
    ItemStatus,
    Job,
    JobOptions,
    JobStatus,
    NothingToRetry,
    PermanentError,
    Pipeline,
)
from bulkpipe.gate import PriorityGate
from bulkpipe.retry import backoff_delay

from .helpers import PATIENCE, eventually, outcome_map

BACKENDS = ["asyncio", "trio"]
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PERMANENT = -1  # a behaviour: fail at once with PermanentError
# Otherwise a behaviour is k >= 0: fail k times (transiently), then succeed.


@attrs.frozen(kw_only=True)
class Scenario:
    """One random job: its shape, options and what each item does."""

    behaviours: list[int]
    yields: list[int]  # checkpoints each call makes, so calls interleave
    batch_size: int
    concurrency: int
    item_concurrency: int | None
    max_retries: int
    batched: bool
    max_in_flight: int | None

    @property
    def bound(self) -> int:
        """The most items of the job that may be in flight at once."""
        per_job = self.concurrency * (self.item_concurrency or self.batch_size)
        if self.max_in_flight is not None:
            return min(per_job, self.max_in_flight)
        return per_job

    def expected(self, index: int) -> tuple[ItemStatus, int]:
        """The final status and attempts of item ``index``."""
        k = self.behaviours[index]
        if k == PERMANENT:
            return ItemStatus.FAILED, 1
        if k <= self.max_retries:
            return ItemStatus.SUCCEEDED, k + 1
        return ItemStatus.FAILED, self.max_retries + 1


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Random job shapes and failure patterns, small enough to run quickly."""
    count = draw(st.integers(0, 30))
    batch_size = draw(st.integers(1, 8))
    batched = draw(st.booleans())
    behaviour = st.one_of(st.just(0), st.integers(1, 4), st.just(PERMANENT))
    return Scenario(
        behaviours=draw(st.lists(behaviour, min_size=count, max_size=count)),
        yields=draw(st.lists(st.integers(0, 2), min_size=count, max_size=count)),
        batch_size=batch_size,
        concurrency=draw(st.integers(1, 3)),
        item_concurrency=draw(st.none() | st.integers(1, batch_size)),
        max_retries=draw(st.integers(0, 3)),
        batched=batched,
        # max_in_flight bounds item processors (a batch call is not split over the gate).
        max_in_flight=None if batched else draw(st.none() | st.integers(1, 5)),
    )


class Harness:
    """Processors driven by a scenario, counting attempts and items in flight."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.attempts: dict[int, int] = {}
        self.in_flight = 0
        self.peak = 0
        self.batch_in_flight: dict[int, int] = {}
        self.batch_peak = 0

    def _enter(self, indexes: Sequence[int]) -> None:
        self.in_flight += len(indexes)
        self.peak = max(self.peak, self.in_flight)
        for i in indexes:
            batch = i // self.scenario.batch_size
            self.batch_in_flight[batch] = self.batch_in_flight.get(batch, 0) + 1
            self.batch_peak = max(self.batch_peak, self.batch_in_flight[batch])

    def _leave(self, indexes: Sequence[int]) -> None:
        self.in_flight -= len(indexes)
        for i in indexes:
            self.batch_in_flight[i // self.scenario.batch_size] -= 1

    def _outcome(self, index: int) -> Any:
        """The result for this attempt of item ``index``, or the exception it fails with."""
        self.attempts[index] = attempt = self.attempts.get(index, 0) + 1
        k = self.scenario.behaviours[index]
        if k == PERMANENT:
            return PermanentError(f"item {index} can never work")
        if attempt <= k:
            return RuntimeError(f"item {index} attempt {attempt} failed")
        return {"index": index, "attempt": attempt}

    async def process(self, item: Mapping[str, Any]) -> Any:
        """The item processor."""
        index = item["n"]
        self._enter([index])
        try:
            for _ in range(self.scenario.yields[index]):
                await anyio.lowlevel.checkpoint()
            outcome = self._outcome(index)
        finally:
            self._leave([index])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The batch processor: one result or exception per item."""
        indexes = [item["n"] for item in items]
        self._enter(indexes)
        try:
            for _ in range(max(self.scenario.yields[i] for i in indexes)):
                await anyio.lowlevel.checkpoint()
            return [self._outcome(i) for i in indexes]
        finally:
            self._leave(indexes)


class ItemsOnly:
    """Exposes only ``process`` of a harness (so it is not taken for a batch processor)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    async def process(self, item: Mapping[str, Any]) -> Any:
        """Delegate to the harness."""
        return await self.harness.process(item)


async def check_scenario(scenario: Scenario) -> None:
    """Run the scenario's job, then its retry, and check every invariant."""
    harness = Harness(scenario)
    processor: object = harness if scenario.batched else ItemsOnly(harness)
    count = len(scenario.behaviours)
    options = JobOptions(
        batch_size=scenario.batch_size,
        concurrency=scenario.concurrency,
        item_concurrency=scenario.item_concurrency,
        max_retries=scenario.max_retries,
        retry_delay=0.0,
        progress_interval=0.02,
    )
    async with Pipeline(
        processors={"p": processor}, max_in_flight=scenario.max_in_flight
    ) as pipeline:
        items = ({"id": f"item-{n}", "n": n} for n in range(count))
        job = await pipeline.submit("p", items, options=options)
        snapshots: list[Job] = []
        with anyio.fail_after(PATIENCE):
            async for snapshot in pipeline.watch(job.id, interval=0.01):
                snapshots.append(snapshot)
        job = snapshots[-1]
        outcomes = await outcome_map(pipeline, job.id)  # fails on a second outcome for an item

        # Every item has exactly one final outcome, the one its behaviour calls for.
        assert set(outcomes) == {f"item-{n}" for n in range(count)}
        for n in range(count):
            outcome = outcomes[f"item-{n}"]
            assert (outcome.status, outcome.attempts) == scenario.expected(n), n
        failed = {i for i, o in outcomes.items() if o.status is ItemStatus.FAILED}

        # The counts add up.
        assert job.status is JobStatus.COMPLETED
        assert job.total_items == count
        assert job.succeeded_items + job.failed_items == job.total_items
        assert job.processed_items == count
        assert job.failed_items == len(failed)
        assert job.error_count == len(failed)
        assert job.progress == 100.0
        assert job.result is not None
        assert (job.result.total, job.result.failed) == (count, len(failed))

        # Progress never goes backwards.
        assert [s.progress for s in snapshots] == sorted(s.progress for s in snapshots)
        processed = [s.processed_items for s in snapshots]
        assert processed == sorted(processed)

        # The concurrency bound held.
        assert harness.in_flight == 0
        assert harness.peak <= scenario.bound
        assert harness.batch_peak <= (scenario.item_concurrency or scenario.batch_size)
        # A lane keeps its gate place from one segment to the next, so the last one may still
        # be letting go when wait() sees the job end; every place must come back.
        await eventually(
            lambda: all(w.gate is None or w.gate.in_use == 0 for w in pipeline.local_workers),
            "every gate place back",
        )

        # retry_failed covers exactly the failed items.
        if not failed:
            with pytest.raises(NothingToRetry):
                await pipeline.retry_failed(job.id)
            return
        retry = await pipeline.retry_failed(job.id)
        assert retry.retry_of == job.id
        assert retry.total_items == len(failed)
        retry = await pipeline.wait(retry.id, timeout=PATIENCE)
        assert retry.status is JobStatus.COMPLETED
        assert set(await outcome_map(pipeline, retry.id)) == failed


@pytest.mark.parametrize("backend", BACKENDS)
@EXAMPLES
@given(scenario=scenarios())
def test_every_item_gets_one_outcome_and_the_counts_add_up(
    backend: str, scenario: Scenario
) -> None:
    anyio.run(check_scenario, scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@EXAMPLES
@given(
    jobs=st.lists(st.tuples(st.integers(0, 12), st.integers(-2, 2)), min_size=1, max_size=4),
    capacity=st.integers(1, 4),
)
def test_max_in_flight_holds_across_jobs(
    backend: str, jobs: list[tuple[int, int]], capacity: int
) -> None:
    async def main() -> None:
        in_flight = peak = 0

        async def held(item: Mapping[str, Any]) -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await anyio.lowlevel.checkpoint()
                await anyio.lowlevel.checkpoint()
            finally:
                in_flight -= 1
            return 1

        options = JobOptions(batch_size=3, concurrency=2, progress_interval=0.02)
        async with Pipeline(processors={"p": held}, max_in_flight=capacity) as pipeline:
            submitted = [
                await pipeline.submit(
                    "p",
                    ({"id": n} for n in range(count)),
                    options=options,
                    priority=priority,
                )
                for count, priority in jobs
            ]
            for job, (count, _) in zip(submitted, jobs, strict=True):
                done = await pipeline.wait(job.id, timeout=PATIENCE)
                assert (done.status, done.succeeded_items) == (JobStatus.COMPLETED, count)
            # Every place comes back once the lanes of the ended jobs have returned (a lane
            # may still be on its way out when wait() sees the job end).
            await eventually(
                lambda: [w.gate.in_use for w in pipeline.local_workers if w.gate] == [0],
                "every gate place back",
            )
        assert peak <= capacity

    anyio.run(main, backend=backend)


# --- the pieces the scheduler is built on ----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@EXAMPLES
@given(
    capacity=st.integers(1, 3),
    priorities=st.lists(st.integers(-3, 3), min_size=1, max_size=12),
)
def test_the_gate_serves_the_highest_priority_first_then_in_order(
    backend: str, capacity: int, priorities: list[int]
) -> None:
    async def main() -> None:
        gate = PriorityGate(capacity)
        for _ in range(capacity):  # fill it
            await gate.acquire(0)
        order: list[int] = []

        async def waiter(index: int) -> None:
            await gate.acquire(priorities[index])
            order.append(index)
            assert gate.in_use <= capacity

        async with anyio.create_task_group() as tg:
            for index in range(len(priorities)):
                tg.start_soon(waiter, index)
                await wait_queued(gate, index + 1)
            assert gate.contended(min(priorities))
            for _ in range(len(priorities)):
                gate.release()
                await anyio.lowlevel.checkpoint()
        expected = sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
        assert order == expected
        assert gate.in_use == capacity  # each release handed its place straight on
        for _ in range(capacity):
            gate.release()
        assert gate.in_use == 0

    anyio.run(main, backend=backend)


async def wait_queued(gate: PriorityGate, count: int) -> None:
    """Let waiters run until ``count`` of them are queued at the gate."""
    for _ in range(1000):
        if gate_waiters(gate) >= count:
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError(f"{count} waiters never queued")


def gate_waiters(gate: PriorityGate) -> int:
    """How many are queued: whoever would be served by releases beyond the free places."""
    return len(gate._waiters)


def test_a_cancelled_gate_waiter_gives_its_place_back() -> None:
    async def main() -> None:
        gate = PriorityGate(1)
        await gate.acquire(0)
        with anyio.move_on_after(0.01):
            await gate.acquire(5)
        assert not gate.contended(0)
        gate.release()
        assert gate.in_use == 0

    for backend in BACKENDS:
        anyio.run(main, backend=backend)


def test_the_gate_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PriorityGate(0)


@given(
    attempt=st.integers(1, 63),
    base=st.floats(0, 10, allow_nan=False),
    extra=st.floats(0, 100, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_equal_jitter_under_the_cap(
    attempt: int, base: float, extra: float, seed: int
) -> None:
    cap = base + extra
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling
