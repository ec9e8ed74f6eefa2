"""Hypothesis: whatever the interleaving of submit, cancel and failures, ``submit`` reads at
most one batch past the moment its job became terminal, returns the job as stored, and closes
its source (MemoryStore, in-process workers, asyncio and trio, async and sync generators)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkpipe import Job, JobNotCancellable, JobStatus, PermanentError, Pipeline

from .helpers import PATIENCE, quick

EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@EXAMPLES
@given(
    kind=st.sampled_from(["async", "sync"]),
    count=st.integers(0, 80),
    batch_size=st.integers(1, 8),
    waits=st.sets(st.integers(0, 79), max_size=20),  # items before which the source waits
    cancel_at=st.none() | st.integers(0, 80),  # cancel once this many items were read
    failing=st.sets(st.integers(0, 79), max_size=30),
    ratio=st.none() | st.sampled_from([0.05, 0.2, 0.5]),
)
def test_submit_reads_at_most_one_batch_after_its_job_ended(
    backend: str,
    kind: str,
    count: int,
    batch_size: int,
    waits: set[int],
    cancel_at: int | None,
    failing: set[int],
    ratio: float | None,
) -> None:
    pulled = 0
    started = threading.Event()  # a generator closed before it started runs no finally
    closed = threading.Event()
    at_end: list[int] = []

    async def agen() -> AsyncIterator[dict[str, Any]]:
        nonlocal pulled
        started.set()
        try:
            for n in range(count):
                if n in waits:
                    await anyio.lowlevel.checkpoint()
                pulled += 1
                yield {"id": n}
        finally:
            closed.set()

    def gen() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        started.set()
        try:
            for n in range(count):
                if n in waits:
                    time.sleep(0.0005)
                pulled += 1
                yield {"id": n}
        finally:
            closed.set()

    async def process(item: Mapping[str, Any]) -> int:
        if item["id"] in failing:
            raise PermanentError("fails")
        return 1

    async def main() -> None:
        options = quick(
            batch_size=batch_size,
            concurrency=2,
            max_failure_ratio=ratio,
            failure_ratio_min_outcomes=1,
            max_retries=0,
        )
        created: list[Job] = []
        async with Pipeline(processors={"p": process}) as pipeline:
            pipeline.events.subscribe(lambda _job, _status: at_end.append(pulled))

            async def cancel() -> None:
                # Let a started cancel finish: a Pipeline.cancel cut short leaves the job
                # stopped in this process but not cancelled.
                while not created or pulled < (cancel_at or 0):
                    if submitted:  # the source ran out before cancel_at items
                        return
                    await anyio.lowlevel.checkpoint()
                with contextlib.suppress(JobNotCancellable):  # it ended meanwhile
                    await pipeline.cancel(created[0].id)

            submitted = False
            with anyio.fail_after(PATIENCE):
                async with anyio.create_task_group() as tg:
                    if cancel_at is not None:
                        tg.start_soon(cancel)
                    source = agen() if kind == "async" else gen()
                    job = await pipeline.submit(
                        "p", source, options=options, on_created=created.append
                    )
                    submitted = True
                if started.is_set():
                    assert await anyio.to_thread.run_sync(closed.wait, PATIENCE)
                stored = await pipeline.get(job.id)
                if job.status.is_terminal:
                    assert stored == job
                done = await pipeline.wait(job.id, timeout=PATIENCE)
        assert len(at_end) == 1, at_end  # the job ended once
        if done.sealed:
            assert done.total_items == count
        else:
            # Ended while being submitted: reading stopped within a batch of that moment.
            assert done.status in (JobStatus.CANCELLED, JobStatus.FAILED)
            assert pulled - at_end[0] <= batch_size, (pulled, at_end)

    anyio.run(main, backend=backend)
