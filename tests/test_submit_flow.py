"""Submit flow (issue 8): a job exists before its items are read, a cancel or failure stops the
reading within a batch and closes the source, sync sources are read off the event loop, and
``max_failure_ratio`` waits for ``failure_ratio_min_outcomes`` outcomes."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from bulkpipe import ErrorType, Job, JobOptions, JobStatus, PermanentError, Pipeline
from bulkpipe.cli.render import jobs_table, summary_line
from bulkpipe.items import ChunkReader
from bulkpipe.lifecycle import failure_ratio_exceeded
from bulkpipe.store import JobStore, Progress
from bulkpipe.stores import MemoryStore
from bulkpipe.testing.helpers import add_job, claim, encoded, ok_row, report

from .helpers import PATIENCE, eventually, quick
from .test_http_api import serving

pytestmark = pytest.mark.anyio


async def ok(item: Mapping[str, Any]) -> int:
    return 1


class Source:
    """Items ``{"id": n}`` counted as they are pulled, as an async or a sync generator."""

    def __init__(self, count: int, *, pause: float = 0.0, paused: int | None = None) -> None:
        self.count = count
        self.pause = pause
        self.paused = count if paused is None else paused  # the first items paused before
        self.pulled = 0
        self.closed = threading.Event()  # the generator's finally ran (closed or exhausted)

    async def agen(self) -> AsyncIterator[dict[str, Any]]:
        try:
            for n in range(self.count):
                if self.pause and n < self.paused:
                    await anyio.sleep(self.pause)
                self.pulled += 1
                yield {"id": n}
        finally:
            self.closed.set()

    def gen(self) -> Iterator[dict[str, Any]]:
        try:
            for n in range(self.count):
                if self.pause and n < self.paused:
                    time.sleep(self.pause)
                self.pulled += 1
                yield {"id": n}
        finally:
            self.closed.set()

    def of(self, kind: str) -> Any:
        return self.agen() if kind == "async" else self.gen()


async def wait_closed(source: Source) -> None:
    assert await anyio.to_thread.run_sync(source.closed.wait, PATIENCE)


# -- cancel and failure stop the submit ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_cancel_mid_submit_stops_within_a_batch_and_closes_the_source(
    any_store: JobStore, kind: str
) -> None:
    source = Source(100_000, pause=0.0005)
    batch = 10
    at_end: list[int] = []
    async with Pipeline(any_store, workers=0) as p:
        p.events.subscribe(lambda _job, _status: at_end.append(source.pulled))
        created: list[Job] = []

        async def cancel_soon() -> None:
            await eventually(lambda: bool(created) and source.pulled >= 35, "35 items read")
            await p.cancel(created[0].id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_soon)
            with anyio.fail_after(PATIENCE):
                job = await p.submit(
                    "p",
                    source.of(kind),
                    options=quick(batch_size=batch),
                    on_created=created.append,
                    allow_unserved=True,
                )
        await wait_closed(source)
        stored = await p.get(job.id)
    assert job.status is JobStatus.CANCELLED
    assert not job.sealed
    assert job == stored
    assert len(at_end) == 1
    assert source.pulled - at_end[0] <= batch, "read more than a batch after the cancel"
    assert source.pulled < 1_000
    assert job.total_items <= at_end[0]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_failure_ratio_mid_submit_stops_the_submit_and_returns_the_failed_job(
    any_store: JobStore, kind: str
) -> None:
    async def broken(item: Mapping[str, Any]) -> None:
        raise PermanentError("down")

    source = Source(100_000, pause=0.0005)
    at_end: list[int] = []
    options = quick(
        batch_size=5, concurrency=1, max_failure_ratio=0.5, failure_ratio_min_outcomes=10
    )
    async with Pipeline(any_store, processors={"p": broken}) as p:
        p.events.subscribe(lambda _job, _status: at_end.append(source.pulled))
        with anyio.fail_after(PATIENCE):
            job = await p.submit("p", source.of(kind), options=options)
        await wait_closed(source)
    assert job.status is JobStatus.FAILED
    assert job.errors[-1].error_type == ErrorType.FAILURE_RATIO_EXCEEDED
    assert len(at_end) == 1
    assert source.pulled - at_end[0] <= 5
    assert source.pulled < 100_000


async def test_a_job_ended_elsewhere_stops_the_submit_at_the_next_store_call() -> None:
    """The job ends where this process's events cannot see it: the store's JobClosed stops."""
    store = MemoryStore()
    source = Source(100_000, pause=0.0005)
    async with Pipeline(store, workers=0) as p:
        created: list[Job] = []

        async def cancel_behind_its_back() -> None:
            await eventually(lambda: bool(created) and source.pulled >= 20, "20 items read")
            await store.finish_job(created[0].id, JobStatus.CANCELLED)

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_behind_its_back)
            with anyio.fail_after(PATIENCE):
                job = await p.submit(
                    "p",
                    source.agen(),
                    options=quick(batch_size=4),
                    on_created=created.append,
                    allow_unserved=True,
                )
    assert job.status is JobStatus.CANCELLED
    assert source.closed.is_set()
    assert source.pulled < 1_000


# -- a job is visible at once ---------------------------------------------------------------


async def test_on_created_comes_before_any_item_is_read(any_store: JobStore) -> None:
    seen: list[Job] = []
    pulled_when_created: list[int] = []
    source = Source(30)

    def created(job: Job) -> None:
        seen.append(job)
        pulled_when_created.append(source.pulled)

    async with Pipeline(any_store, processors={"p": ok}) as p:
        job = await p.submit("p", source.agen(), options=quick(batch_size=7), on_created=created)
        done = await p.wait(job.id, timeout=PATIENCE)
    assert pulled_when_created == [0]
    assert seen[0].id == job.id
    assert (seen[0].sealed, seen[0].total_items) == (False, 0)
    assert (done.status, done.total_items) == (JobStatus.COMPLETED, 30)


async def test_an_unsealed_job_shows_its_progress_over_the_items_stored_so_far(
    any_store: JobStore,
) -> None:
    await any_store.open()
    try:
        job = await add_job(any_store, encoded(4))
        claimed = await claim(any_store, job.id)
        await any_store.record(
            job.id, [report(claimed, [ok_row("item-0"), ok_row("item-1")], done=False)]
        )
        snap = await any_store.get_job(job.id)
        assert (snap.sealed, snap.total_items, snap.processed_items) == (False, 4, 2)
        assert snap.progress == 50.0
        assert "submitting, 4 items stored" in summary_line(snap)
        cells = [str(cell) for cell in jobs_table([snap]).columns[4].cells]
        assert cells == ["submitting, 4 items stored"]
        await any_store.seal_job(job.id)
        sealed = await any_store.get_job(job.id)
        assert sealed.progress == 50.0
        assert "submitting" not in summary_line(sealed)
    finally:
        await any_store.close()


async def test_the_job_is_readable_while_it_is_being_submitted() -> None:
    gate = anyio.Event()
    seen: list[Job] = []

    async def held() -> AsyncIterator[dict[str, Any]]:
        for n in range(6):
            yield {"id": n}
        await gate.wait()
        yield {"id": 6}

    async with Pipeline(processors={"p": ok}) as p:
        async with anyio.create_task_group() as tg:

            async def look(job: Job) -> None:
                with anyio.fail_after(PATIENCE):
                    snap = await p.get(job.id)
                    while snap.processed_items < 6:
                        await anyio.sleep(0.01)
                        snap = await p.get(job.id)
                seen.append(snap)
                gate.set()

            job = await p.submit(
                "p",
                held(),
                options=quick(batch_size=3),
                on_created=lambda job: tg.start_soon(look, job),
            )
        done = await p.wait(job.id, timeout=PATIENCE)
    assert (seen[0].sealed, seen[0].total_items, seen[0].progress) == (False, 6, 100.0)
    assert (done.status, done.total_items) == (JobStatus.COMPLETED, 7)


# -- sync sources are read off the loop -------------------------------------------------------


async def test_a_slow_sync_source_does_not_stall_the_loop_and_items_run_meanwhile() -> None:
    ticks: list[float] = []
    ran_before_end: list[int] = []
    ran = 0

    async def counted(item: Mapping[str, Any]) -> int:
        nonlocal ran
        ran += 1
        return 1

    def slow() -> Iterator[dict[str, Any]]:
        for n in range(20):
            time.sleep(0.03)  # blocks whoever reads it
            yield {"id": n}
        ran_before_end.append(ran)

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.01)

    async with Pipeline(processors={"p": counted}) as p:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            began = time.monotonic()
            job = await p.submit("p", slow(), options=quick(batch_size=2))
            took = time.monotonic() - began
            tg.cancel_scope.cancel()
        await p.wait(job.id, timeout=PATIENCE)
    during = [t for t in ticks if began <= t <= began + took]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert took >= 0.5
    assert len(during) >= took / 0.01 / 4, "the loop stopped ticking while the source blocked"
    assert max(gaps) < 0.1, f"the loop was blocked for {max(gaps):.3f} s"
    assert ran_before_end[0] >= 10, "items did not run while the source was read"


async def test_the_chunk_reader_reads_lists_directly_and_generators_in_a_thread() -> None:
    threads: list[str] = []

    def gen() -> Iterator[int]:
        for n in range(5):
            threads.append(threading.current_thread().name)
            yield n

    reader = ChunkReader(gen(), 2)
    chunks = [await reader.read() for _ in range(4)]
    await reader.aclose()
    assert chunks == [[0, 1], [2, 3], [4], []]
    assert threading.main_thread().name not in threads
    listed = ChunkReader([1, 2, 3], 2)
    assert [await listed.read(), await listed.read(), await listed.read()] == [[1, 2], [3], []]


async def test_the_chunk_reader_closes_a_generator_after_its_thread_returns() -> None:
    inside = threading.Event()
    release = threading.Event()
    closed = threading.Event()

    def gen() -> Iterator[int]:
        try:
            inside.set()
            release.wait(PATIENCE)
            yield 1
            yield 2
        finally:
            closed.set()

    reader = ChunkReader(gen(), 1)
    with anyio.move_on_after(0.05):
        await reader.read()  # given up while the thread blocks
    assert inside.is_set()
    await reader.aclose()
    assert not closed.is_set()  # the thread still reads it
    release.set()
    assert await anyio.to_thread.run_sync(closed.wait, PATIENCE)


# -- the failure ratio waits for enough outcomes -----------------------------------------------


def test_failure_ratio_min_outcomes_is_validated_and_defaults_to_100() -> None:
    assert JobOptions().failure_ratio_min_outcomes == 100
    with pytest.raises(ValidationError, match="failure_ratio_min_outcomes"):
        JobOptions(failure_ratio_min_outcomes=0)


@pytest.mark.parametrize(
    ("sealed", "total", "succeeded", "failed", "min_outcomes", "fails"),
    [
        (False, 10, 9, 1, 100, False),  # one early failure: not judged yet
        (False, 1000, 99, 1, 100, False),
        (False, 100, 95, 5, 100, True),  # judged at 100 outcomes: 5 of 100 stored
        (False, 1000, 95, 5, 100, False),  # ... 5 of 1,000 stored is below 5%
        (True, 10, 9, 1, 100, True),  # a small sealed job with all its outcomes is judged
        (True, 10, 8, 1, 100, False),  # ... not before
        (False, 10, 9, 1, 1, True),  # min 1: the old rule
    ],
)
def test_failure_ratio_is_judged_after_min_outcomes(
    sealed: bool, total: int, succeeded: int, failed: int, min_outcomes: int, fails: bool
) -> None:
    progress = Progress(
        status=JobStatus.PROCESSING,
        sealed=sealed,
        total=total,
        succeeded=succeeded,
        failed=failed,
        open_batches=1,
    )
    why = failure_ratio_exceeded(progress, 0.05, min_outcomes)
    assert (why is not None) == fails


@pytest.mark.parametrize("min_outcomes", [100, 1])
async def test_one_early_failure_does_not_fail_a_1000_item_job(min_outcomes: int) -> None:
    async def third_fails(item: Mapping[str, Any]) -> int:
        if item["id"] == 3:
            raise PermanentError("bad item")
        return 1

    # The first outcomes come while few items are stored.
    source = Source(1_000, pause=0.002, paused=40)

    options = quick(batch_size=10, max_failure_ratio=0.05, failure_ratio_min_outcomes=min_outcomes)
    async with Pipeline(processors={"p": third_fails}) as p:
        job = await p.submit("p", source.agen(), options=options)
        done = await p.wait(job.id, timeout=PATIENCE)
    if min_outcomes == 1:  # the old rule fails it on its first outcomes
        assert done.status is JobStatus.FAILED
        assert source.pulled < 1_000
    else:
        assert done.status is JobStatus.COMPLETED
        assert (done.total_items, done.failed_items) == (1_000, 1)


async def test_a_small_sealed_job_over_the_ratio_fails() -> None:
    async def third_fails(item: Mapping[str, Any]) -> int:
        if item["id"] == 3:
            raise PermanentError("bad item")
        return 1

    async with Pipeline(processors={"p": third_fails}) as p:
        job = await p.submit(
            "p", [{"id": n} for n in range(10)], options=quick(max_failure_ratio=0.05)
        )
        done = await p.wait(job.id, timeout=PATIENCE)
    assert done.status is JobStatus.FAILED
    assert done.errors[-1].error_type == ErrorType.FAILURE_RATIO_EXCEEDED


async def test_http_shows_a_job_being_submitted(any_store: JobStore) -> None:
    async with serving(Pipeline(any_store, workers=0)) as (client, pipeline):
        job = await add_job(pipeline.store, encoded(3))
        body = (await client.get(f"/jobs/{job.id}")).json()
        assert (body["sealed"], body["total_items"], body["progress"]) == (False, 3, 0.0)
        await pipeline.store.seal_job(job.id)
        assert (await client.get(f"/jobs/{job.id}")).json()["sealed"] is True
