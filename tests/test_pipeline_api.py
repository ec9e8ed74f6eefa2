"""The Pipeline API: submitting, reading, waiting, watching, listing, and options validation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from bulkpipe import (
    InvalidArgument,
    ItemStatus,
    Job,
    JobNotFound,
    JobOptions,
    JobStatus,
    Pipeline,
    PipelineClosed,
    WaitTimeout,
)
from bulkpipe.store import EncodedItem
from bulkpipe.stores import MemoryStore, SQLiteStore

from .helpers import PATIENCE, QUICK, Tracker, eventually, make_items, outcome_map, quick

pytestmark = pytest.mark.anyio


async def double(item: Mapping[str, Any]) -> dict[str, int]:
    """A processor: twice the item's ``n``."""
    return {"double": item["n"] * 2}


def pipeline(processors: Mapping[str, object] | None = None, **kwargs: Any) -> Pipeline:
    """A pipeline with the ``double`` processor (and ``processors``) and quick options."""
    return Pipeline(
        processors={"double": double, **(processors or {})}, default_options=QUICK, **kwargs
    )


async def expect_all_doubled(p: Pipeline, job: Job, count: int) -> None:
    """The job completed with one succeeded outcome per item, each with its result."""
    job = await p.wait(job.id, timeout=PATIENCE)
    assert job.status is JobStatus.COMPLETED
    assert (job.total_items, job.succeeded_items, job.failed_items) == (count, count, 0)
    assert job.progress == 100.0
    outcomes = await outcome_map(p, job.id)
    assert {i: o.result for i, o in outcomes.items()} == {
        f"item-{n}": {"double": 2 * n} for n in range(count)
    }


# --- submitting ------------------------------------------------------------------------------


async def test_submit_a_list() -> None:
    async with pipeline() as p:
        job = await p.submit("double", make_items(25), options=quick(batch_size=7))
        assert job.type == "double"
        assert job.total_items == 25
        assert job.sealed
        await expect_all_doubled(p, job, 25)


async def test_submit_a_generator_is_streamed_not_read_whole() -> None:
    count = 20_000  # far more than the few batches a submit may read ahead of the store
    calls = 0
    read_before_first_call: int | None = None

    async def counted(item: Mapping[str, Any]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return await double(item)

    def generate() -> Iterator[dict[str, Any]]:
        nonlocal read_before_first_call
        for n, item in enumerate(make_items(count)):
            if calls and read_before_first_call is None:
                read_before_first_call = n
            yield item

    async with pipeline(processors={"counted": counted}) as p:
        job = await p.submit("counted", generate(), options=quick(batch_size=100))
        job = await p.wait(job.id, timeout=PATIENCE)
        assert job.succeeded_items == count
    # Items were stored and running while the iterable was still being read: the read-ahead
    # is bounded, never the whole iterable.
    assert read_before_first_call is not None
    assert read_before_first_call < count // 2


async def test_submit_an_async_generator() -> None:
    async def generate() -> AsyncIterator[dict[str, Any]]:
        for item in make_items(12):
            await anyio.lowlevel.checkpoint()
            yield item

    async with pipeline() as p:
        job = await p.submit("double", generate(), options=quick(batch_size=5))
        await expect_all_doubled(p, job, 12)


class CallLog(MemoryStore):
    """A memory store that notes, per add_batches call, its batch sizes and the items read."""

    def __init__(self, read: list[int]) -> None:
        super().__init__()
        self.read = read
        self.calls: list[tuple[int, list[int]]] = []  # (items read by then, batch sizes)

    async def add_batches(self, job_id: str, batches: Sequence[Sequence[EncodedItem]]) -> list[str]:
        self.calls.append((self.read[0], [len(b) for b in batches]))
        return await super().add_batches(job_id, batches)


async def test_submit_stores_a_fast_source_several_batches_per_call() -> None:
    # An async source that never waits (a sync one is read in a thread, and so waits on
    # every chunk: its batches are grouped only while a store call is in flight).
    read = [0]

    async def generate() -> AsyncIterator[dict[str, Any]]:
        for item in make_items(3_000):
            read[0] += 1
            yield item

    store = CallLog(read)
    async with pipeline(store=store) as p:
        job = await p.submit("double", generate(), options=quick(batch_size=100))
        await expect_all_doubled(p, job, 3_000)
    sizes = [size for _, batches in store.calls for size in batches]
    assert sizes == [100] * 30
    # The first batch goes at once, then up to 1,000 items a call, with never more than two
    # calls' worth (and the batch being read) held back.
    assert [len(batches) for _, batches in store.calls][:2] == [1, 10]
    assert all(len(batches) <= 10 for _, batches in store.calls)
    stored = 0
    for read_by_then, batches in store.calls:
        assert read_by_then - stored <= 2_100
        stored += sum(batches)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_slow_source_has_items_running_before_it_ends(kind: str, tmp_path: Path) -> None:
    processed = 0

    async def counted(item: Mapping[str, Any]) -> int:
        nonlocal processed
        processed += 1
        return 1

    async with pipeline(
        store=MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "jobs.db"),
        processors={"counted": counted},
    ) as p:

        async def slow() -> AsyncIterator[dict[str, Any]]:
            for item in make_items(30):
                await anyio.sleep(0.001)
                yield item
            # Not exhausted yet: every batch was stored, and has run, without waiting for
            # a store call's worth of items.
            await eventually(lambda: processed == 30, "the items to run before the source ends")
            jobs = await p.list_jobs(limit=1)
            await eventually(lambda: has_outcomes(p, jobs[0].id, 30), "their outcomes")

        job = await p.submit("counted", slow(), options=quick(batch_size=5))
        assert (await p.wait(job.id, timeout=PATIENCE)).succeeded_items == 30


async def test_submit_from_a_registered_source_with_params() -> None:
    seen: list[Mapping[str, Any]] = []

    async def numbers(params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        seen.append(params)
        for item in make_items(params["count"]):
            yield item

    async with pipeline(sources={"numbers": numbers}) as p:
        job = await p.submit("double", source="numbers", params={"count": 9})
        assert seen == [{"count": 9}]
        assert job.source == "numbers"
        assert job.params == {"count": 9}
        await expect_all_doubled(p, job, 9)

        p.register_source("late", numbers)  # registering after start works too
        job = await p.submit("double", source="late", params={"count": 3})
        await expect_all_doubled(p, job, 3)


async def test_submit_options_as_a_mapping_override_the_defaults() -> None:
    async with pipeline() as p:
        job = await p.submit("double", make_items(3), options={"batch_size": 2})
        assert job.options.batch_size == 2
        assert job.options.progress_interval == QUICK.progress_interval  # from the defaults
        with pytest.raises(ValidationError, match="batch_size"):
            await p.submit("double", make_items(3), options={"batch_size": 0})


async def test_submit_no_items_completes_an_empty_job() -> None:
    async with pipeline() as p:
        job = await p.submit("double", [])
        job = await p.wait(job.id, timeout=PATIENCE)
        assert job.status is JobStatus.COMPLETED
        assert job.total_items == 0
        assert job.result is not None
        assert job.result.total == 0


async def test_submit_stores_priority_and_default_options() -> None:
    async with pipeline() as p:
        job = await p.submit("double", make_items(2), priority=7)
        assert job.priority == 7
        assert job.options == QUICK
        assert job.retry_of is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"items": {"id": 1}}, "iterable of mappings"),
        ({"items": "abc"}, "iterable of mappings"),
        ({"items": b"abc"}, "iterable of mappings"),
        ({"items": 42}, "iterable of mappings"),
        ({"items": [{"id": 1}], "source": "numbers"}, "not both"),
        ({}, "not neither"),
        ({"items": [{"id": 1}], "params": {"a": 1}}, "params are for a source"),
        ({"items": [{"id": 1}], "priority": 1.5}, "priority"),
        ({"items": [{"id": 1}], "priority": True}, "priority"),
        ({"items": [{"id": 1}], "options": 5}, "options"),
    ],
)
async def test_submit_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    async with pipeline() as p:
        with pytest.raises(InvalidArgument, match=message):
            await p.submit("double", **kwargs)
        assert await p.list_jobs() == []  # nothing was created


async def test_submit_refuses_an_empty_processor_name() -> None:
    async with pipeline() as p:
        with pytest.raises(InvalidArgument, match="processor"):
            await p.submit("", make_items(1))


# --- reading and waiting ---------------------------------------------------------------------


async def test_get_returns_the_stored_job_and_job_not_found_otherwise() -> None:
    async with pipeline() as p:
        job = await p.submit("double", make_items(3))
        assert (await p.get(job.id)).id == job.id
        with pytest.raises(JobNotFound, match="nope") as caught:
            await p.get("nope")
        assert caught.value.job_id == "nope"
        assert isinstance(caught.value, LookupError)


async def test_wait_returns_the_terminal_job() -> None:
    release = anyio.Event()

    async def gated(item: Mapping[str, Any]) -> int:
        await release.wait()
        return 1

    async with pipeline(processors={"gated": gated}) as p:
        job = await p.submit("gated", make_items(4))
        assert not job.status.is_terminal

        async def finish_soon() -> None:
            await anyio.sleep(0.05)
            release.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(finish_soon)
            done = await p.wait(job.id, timeout=PATIENCE)
        assert done.status is JobStatus.COMPLETED
        assert done.completed_at is not None
        assert done.result is not None
        assert done.result.succeeded == 4


async def test_wait_times_out_with_wait_timeout() -> None:
    async def hang(item: Mapping[str, Any]) -> None:
        await anyio.sleep_forever()

    async with pipeline(processors={"hang": hang}) as p:
        job = await p.submit("hang", make_items(2))
        with pytest.raises(WaitTimeout) as caught:
            await p.wait(job.id, timeout=0.1)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.job_id == job.id
        assert "still" in str(caught.value)
        await p.cancel(job.id)


async def test_wait_for_an_unknown_job_raises_job_not_found() -> None:
    async with pipeline() as p:
        with pytest.raises(JobNotFound):
            await p.wait("missing", timeout=1)


# --- watching --------------------------------------------------------------------------------


async def test_watch_yields_at_once_then_every_interval_then_the_terminal_snapshot() -> None:
    async def slow(item: Mapping[str, Any]) -> int:
        await anyio.sleep(0.05)
        return 1

    interval = 0.1
    async with pipeline(processors={"slow": slow}) as p:
        # 20 items, 2 at a time, 50 ms each: about 0.5 s of work.
        job = await p.submit("slow", make_items(20), options=quick(batch_size=2, concurrency=1))
        stamps: list[float] = []
        snapshots: list[Job] = []
        start = anyio.current_time()
        with anyio.fail_after(PATIENCE):
            async for snapshot in p.watch(job.id, interval=interval):
                stamps.append(anyio.current_time())
                snapshots.append(snapshot)
        # The generator ended on its own, right after the terminal snapshot.
        assert snapshots[-1].status is JobStatus.COMPLETED
        assert all(not s.status.is_terminal for s in snapshots[:-1])
        assert snapshots[-1].processed_items == 20
        assert stamps[0] - start < 0.5, "the first snapshot comes at once"
        assert not snapshots[0].status.is_terminal
        gaps = [b - a for a, b in pairwise(stamps)]
        assert len(snapshots) >= 3
        assert max(gaps) < interval + 0.5, gaps  # generous: the hosts are noisy
        progress = [s.progress for s in snapshots]
        assert progress == sorted(progress)
        processed = [s.processed_items for s in snapshots]
        assert processed == sorted(processed)


async def test_progress_never_goes_back_while_items_stream_in() -> None:
    chunk_size, chunks = 5, 3
    released = [anyio.Event() for _ in range(chunks)]

    async def by_chunk(item: Mapping[str, Any]) -> int:
        await released[item["n"] // chunk_size].wait()
        return 1

    async with pipeline(processors={"by_chunk": by_chunk}) as p:
        progress: list[float] = []

        async def stored() -> Job:
            return (await p.list_jobs(limit=1))[0]

        async def items() -> AsyncIterator[dict[str, Any]]:
            for chunk in range(chunks):
                for n in range(chunk * chunk_size, (chunk + 1) * chunk_size):
                    yield {"id": f"item-{n}", "n": n}
                # Resumed for the next item: this chunk is in the store now.
                progress.append((await stored()).progress)
                released[chunk].set()
                done = (chunk + 1) * chunk_size
                await eventually(
                    lambda done=done: processed(stored(), done), f"chunk {chunk} to be recorded"
                )
                progress.append((await stored()).progress)

        job = await p.submit("by_chunk", items(), options=quick(batch_size=chunk_size))
        progress.append((await p.wait(job.id, timeout=PATIENCE)).progress)
        assert progress == sorted(progress), progress


async def processed(job: Awaitable[Job], count: int) -> bool:
    """Whether the job (once read) counts ``count`` processed items."""
    return (await job).processed_items >= count


async def test_watch_defaults_to_the_jobs_progress_interval() -> None:
    release = anyio.Event()

    async def gated(item: Mapping[str, Any]) -> int:
        await release.wait()
        return 1

    async with pipeline(processors={"gated": gated}) as p:
        job = await p.submit("gated", make_items(1), options=quick(progress_interval=0.05))
        count = 0
        with anyio.fail_after(PATIENCE):
            async with aclosing(p.watch(job.id)) as snapshots:  # we break out of it
                async for snapshot in snapshots:
                    count += 1
                    if count == 4:  # 4 snapshots of a stalled job: it yields on its interval
                        release.set()
                    if snapshot.status.is_terminal:
                        break
        assert count >= 4


async def test_watch_a_finished_job_yields_once() -> None:
    async with pipeline() as p:
        job = await p.wait((await p.submit("double", make_items(2))).id, timeout=PATIENCE)
        snapshots = [s async for s in p.watch(job.id, interval=5.0)]
        assert [s.status for s in snapshots] == [JobStatus.COMPLETED]


async def test_watch_rejects_a_bad_interval_and_an_unknown_job() -> None:
    async with pipeline() as p:
        job = await p.submit("double", make_items(1))
        with pytest.raises(InvalidArgument, match="interval"):
            async for _ in p.watch(job.id, interval=0):
                pass
        with pytest.raises(JobNotFound):
            async for _ in p.watch("missing"):
                pass


# --- outcomes --------------------------------------------------------------------------------


async def odd_fails(item: Mapping[str, Any]) -> int:
    """A processor that fails items with an odd ``n`` (every time)."""
    if item["n"] % 2:
        raise ValueError(f"odd {item['n']}")
    return int(item["n"])


async def test_outcomes_stream_every_item_and_filter_by_status() -> None:
    async with pipeline(processors={"odd": odd_fails}) as p:
        job = await p.submit("odd", make_items(11), options=quick(batch_size=3, max_retries=1))
        await p.wait(job.id, timeout=PATIENCE)
        everything = [o async for o in p.outcomes(job.id, page_size=2)]
        assert sorted(o.item_id for o in everything) == sorted(f"item-{n}" for n in range(11))
        failed = [o async for o in p.outcomes(job.id, status="failed", page_size=2)]
        assert {o.item_id for o in failed} == {f"item-{n}" for n in range(1, 11, 2)}
        for outcome in failed:
            assert outcome.status is ItemStatus.FAILED
            assert outcome.error_type == "ValueError"
            assert outcome.error is not None
            assert outcome.error.startswith("odd ")
            assert outcome.attempts == 2
            assert outcome.result is None
        succeeded = [o async for o in p.outcomes(job.id, status=ItemStatus.SUCCEEDED)]
        assert {o.item_id: o.result for o in succeeded} == {f"item-{n}": n for n in range(0, 11, 2)}
        for outcome in succeeded:
            assert outcome.status is ItemStatus.SUCCEEDED
            assert outcome.error is None
            assert outcome.started_at <= outcome.finished_at


async def test_outcomes_stream_while_the_job_runs() -> None:
    release = anyio.Event()

    async def half_gated(item: Mapping[str, Any]) -> int:
        if item["n"] >= 3:
            await release.wait()
        return 1

    async with pipeline(processors={"half": half_gated}) as p:
        job = await p.submit("half", make_items(6), options=quick(batch_size=1, concurrency=6))
        await eventually(
            lambda: has_outcomes(p, job.id, 3), "the first three outcomes to be recorded"
        )
        early = {o.item_id async for o in p.outcomes(job.id)}
        assert early == {"item-0", "item-1", "item-2"}
        release.set()
        await p.wait(job.id, timeout=PATIENCE)
        assert len([o async for o in p.outcomes(job.id)]) == 6


async def has_outcomes(p: Pipeline, job_id: str, count: int) -> bool:
    """Whether the job has at least ``count`` recorded outcomes."""
    return len([o async for o in p.outcomes(job_id)]) >= count


async def test_outcomes_refuse_a_bad_status_and_an_unknown_job() -> None:
    async with pipeline() as p:
        job = await p.submit("double", make_items(1))
        with pytest.raises(InvalidArgument, match="succeeded"):
            async for _ in p.outcomes(job.id, status="done"):
                pass
        with pytest.raises(JobNotFound):
            async for _ in p.outcomes("missing"):
                pass


# --- listing ---------------------------------------------------------------------------------


async def test_list_jobs_newest_first_filtered_and_paged() -> None:
    async def hang(item: Mapping[str, Any]) -> None:
        await anyio.sleep_forever()

    async with pipeline(processors={"hang": hang}) as p:
        first = await p.wait((await p.submit("double", make_items(1))).id, timeout=PATIENCE)
        second = await p.submit("hang", make_items(1))
        third = await p.wait((await p.submit("double", make_items(1))).id, timeout=PATIENCE)
        assert [j.id for j in await p.list_jobs()] == [third.id, second.id, first.id]
        completed = await p.list_jobs(status="completed")
        assert [j.id for j in completed] == [third.id, first.id]
        assert [j.id for j in await p.list_jobs(status=JobStatus.COMPLETED, limit=1)] == [third.id]
        assert [j.id for j in await p.list_jobs(limit=1, offset=1)] == [second.id]
        with pytest.raises(InvalidArgument, match="unknown job status"):
            await p.list_jobs(status="finished")
        await p.cancel(second.id)
        assert [j.id for j in await p.list_jobs(status="cancelled")] == [second.id]


# --- lifecycle -------------------------------------------------------------------------------


def closed_calls() -> list[tuple[str, Callable[[Pipeline], Awaitable[Any]]]]:
    """Every Pipeline call that needs a running pipeline."""

    async def drain(iterator: AsyncIterator[Any]) -> None:
        async for _ in iterator:
            pass

    return [
        ("submit", lambda p: p.submit("double", make_items(1))),
        ("get", lambda p: p.get("x")),
        ("wait", lambda p: p.wait("x")),
        ("cancel", lambda p: p.cancel("x")),
        ("retry_failed", lambda p: p.retry_failed("x")),
        ("list_jobs", lambda p: p.list_jobs()),
        ("watch", lambda p: drain(p.watch("x"))),
        ("outcomes", lambda p: drain(p.outcomes("x"))),
    ]


@pytest.mark.parametrize(("name", "call"), closed_calls(), ids=[n for n, _ in closed_calls()])
async def test_calls_outside_async_with_raise_pipeline_closed(
    name: str, call: Callable[[Pipeline], Awaitable[Any]]
) -> None:
    p = pipeline()
    with pytest.raises(PipelineClosed, match="async with"):
        await call(p)
    async with p:
        pass
    with pytest.raises(PipelineClosed):
        await call(p)


async def test_a_pipeline_is_entered_once() -> None:
    p = pipeline()
    async with p:
        with pytest.raises(InvalidArgument, match="only once"):
            await p.__aenter__()


async def test_jobs_outlive_a_pipeline_on_the_same_store() -> None:
    first = pipeline()
    async with first:
        job = await first.wait((await first.submit("double", make_items(3))).id, timeout=5)
    async with pipeline(store=first.store, workers=0) as reader:
        assert (await reader.get(job.id)).status is JobStatus.COMPLETED
        assert len(await outcome_map(reader, job.id)) == 3


def test_pipeline_refuses_negative_workers() -> None:
    with pytest.raises(InvalidArgument, match="workers"):
        Pipeline(workers=-1)


async def test_register_source_refuses_bad_arguments() -> None:
    p = pipeline()
    with pytest.raises(TypeError, match="source name"):
        p.register_source("", lambda params: make_async([]))
    with pytest.raises(TypeError, match="callable"):
        p.register_source("x", 5)  # type: ignore[arg-type]


async def make_async(items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """An async iterator over ``items``."""
    for item in items:
        yield item


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -5}, "batch_size"),
        ({"batch_size": "many"}, "batch_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"item_concurrency": 0}, "item_concurrency"),
        ({"batch_size": 10, "item_concurrency": 11}, "item_concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"retry_delay": -0.5}, "retry_delay"),
        ({"retry_delay": 5.0, "retry_delay_max": 1.0}, "retry_delay_max"),
        ({"timeout": 0}, "timeout"),
        ({"item_timeout": 0}, "item_timeout"),
        ({"progress_interval": 0}, "progress_interval"),
        ({"max_failure_ratio": 2}, "max_failure_ratio"),
        ({"max_failure_ratio": 0}, "max_failure_ratio"),
        ({"id_key": ""}, "id_key"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_job_options_validation_names_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobOptions(**values)
    assert field in str(caught.value)


def test_job_options_defaults_and_immutability() -> None:
    options = JobOptions()
    assert (options.batch_size, options.concurrency, options.max_retries) == (100, 5, 3)
    assert options.item_concurrency is None
    assert options.items_in_flight == 500
    assert JobOptions(batch_size=10, concurrency=3, item_concurrency=2).items_in_flight == 6
    with pytest.raises(ValidationError):
        options.batch_size = 5  # type: ignore[misc]
    assert options.model_copy(update={"batch_size": 5}).batch_size == 5


def test_tracker_counts_in_flight() -> None:
    # The helper the scheduler tests rely on must itself count right.
    tracker = Tracker()
    with tracker.running("a"), tracker.running("b"):
        assert tracker.in_flight == 2
    assert (tracker.in_flight, tracker.peak, tracker.calls) == (0, 2, 2)
    assert [item for item, _ in tracker.finished] == ["b", "a"]
