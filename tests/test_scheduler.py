"""The scheduler: retries, timeouts, cancel, retry_failed, bad input, concurrency bounds,
priorities, continuous flow, progress freshness and fail-fast.

Timing: waits are bounded generously (the hosts are noisy) and checks rely on events and
ordering wherever they can, not on wall-clock durations.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from itertools import pairwise
from typing import Any

import anyio
import pytest

from bulkpipe import (
    ItemSourceError,
    ItemStatus,
    Job,
    JobNotCancellable,
    JobNotFinished,
    JobNotFound,
    JobStatus,
    NothingToRetry,
    PermanentError,
    Pipeline,
)
from bulkpipe.stores import MemoryStore

from .helpers import PATIENCE, QUICK, Tracker, eventually, make_items, outcome_map, quick

pytestmark = pytest.mark.anyio


async def run(processor: object, items: Any, **options: Any) -> tuple[Job, dict[str, Any]]:
    """Run one job to its end; the final job and its outcomes by item id."""
    async with Pipeline(processors={"p": processor}, default_options=QUICK) as p:
        job = await p.submit("p", items, options=quick(**options))
        job = await p.wait(job.id, timeout=PATIENCE)
        return job, await outcome_map(p, job.id)


async def processed_at_least(p: Pipeline, job_id: str, count: int) -> bool:
    """Whether the stored job counts at least ``count`` processed items."""
    return (await p.get(job_id)).processed_items >= count


# --- retries ---------------------------------------------------------------------------------


async def test_transient_failures_are_retried_up_to_max_retries() -> None:
    calls: dict[str, int] = {}

    async def always_fails(item: Mapping[str, Any]) -> None:
        calls[item["id"]] = calls.get(item["id"], 0) + 1
        raise ConnectionError(f"upstream refused {item['id']}")

    job, outcomes = await run(always_fails, make_items(5), max_retries=2, batch_size=2)
    assert job.status is JobStatus.COMPLETED  # failed items do not fail the job
    assert (job.failed_items, job.succeeded_items) == (5, 0)
    assert calls == {f"item-{n}": 3 for n in range(5)}
    for item_id, outcome in outcomes.items():
        assert outcome.status is ItemStatus.FAILED
        assert outcome.attempts == 3  # max_retries + 1
        assert outcome.error_type == "ConnectionError"
        assert outcome.error == f"upstream refused {item_id}"
    assert {e.retry_count for e in job.errors} == {2}
    assert job.error_count == 5


@pytest.mark.parametrize("succeed_on", [1, 2, 4])
async def test_an_item_that_succeeds_on_attempt_n(succeed_on: int) -> None:
    calls: dict[str, int] = {}

    async def flaky(item: Mapping[str, Any]) -> str:
        calls[item["id"]] = calls.get(item["id"], 0) + 1
        if calls[item["id"]] < succeed_on:
            raise RuntimeError("not yet")
        return "done"

    job, outcomes = await run(flaky, make_items(4), max_retries=3)
    assert job.status is JobStatus.COMPLETED
    assert job.succeeded_items == 4
    assert {(o.status, o.attempts, o.result) for o in outcomes.values()} == {
        (ItemStatus.SUCCEEDED, succeed_on, "done")
    }


async def test_zero_retries_means_one_attempt() -> None:
    calls = 0

    async def fails(item: Mapping[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("no")

    _, outcomes = await run(fails, make_items(3), max_retries=0)
    assert calls == 3
    assert {o.attempts for o in outcomes.values()} == {1}


async def test_backoff_is_honoured_between_attempts() -> None:
    delay = 0.1
    stamps: list[float] = []

    async def fails(item: Mapping[str, Any]) -> None:
        stamps.append(anyio.current_time())
        raise RuntimeError("again")

    await run(fails, make_items(1), max_retries=2, retry_delay=delay, retry_delay_max=delay)
    assert len(stamps) == 3
    # Equal jitter waits at least half of the (capped) exponential delay before each retry.
    for before, after in pairwise(stamps):
        assert after - before >= delay / 2 - 0.005


async def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    base = 0.05
    stamps: list[float] = []

    async def fails(item: Mapping[str, Any]) -> None:
        stamps.append(anyio.current_time())
        raise RuntimeError("again")

    await run(fails, make_items(1), max_retries=3, retry_delay=base, retry_delay_max=1.0)
    gaps = [b - a for a, b in pairwise(stamps)]
    # Retry k waits at least half of base * 2**(k-1): 0.025, 0.05, 0.1 s.
    for k, gap in enumerate(gaps, start=1):
        assert gap >= base * 2 ** (k - 1) / 2 - 0.005, gaps


async def test_a_failed_item_never_fails_its_batch_mates() -> None:
    calls: dict[str, int] = {}

    async def one_bad(item: Mapping[str, Any]) -> int:
        calls[item["id"]] = calls.get(item["id"], 0) + 1
        if item["n"] == 2:
            raise ValueError("bad apple")
        return int(item["n"])

    job, outcomes = await run(one_bad, make_items(5), batch_size=5, max_retries=2)
    assert job.status is JobStatus.COMPLETED
    assert (job.succeeded_items, job.failed_items) == (4, 1)
    assert outcomes["item-2"].status is ItemStatus.FAILED
    for n in (0, 1, 3, 4):
        assert outcomes[f"item-{n}"].status is ItemStatus.SUCCEEDED
        assert outcomes[f"item-{n}"].attempts == 1
        assert calls[f"item-{n}"] == 1  # not re-run with the failed one


# --- timeouts --------------------------------------------------------------------------------


async def test_item_timeout_fails_a_hanging_attempt_and_retries_it() -> None:
    tracker = Tracker()
    attempts: dict[str, int] = {}

    async def hangs_first(item: Mapping[str, Any]) -> str:
        attempts[item["id"]] = attempts.get(item["id"], 0) + 1
        with tracker.running(item["id"]):
            if item["n"] == 0 or attempts[item["id"]] == 1:
                await anyio.sleep_forever()
        return "ok"

    job, outcomes = await run(
        hangs_first, make_items(3), item_timeout=0.1, max_retries=1, batch_size=3
    )
    assert job.status is JobStatus.COMPLETED
    hung = outcomes["item-0"]
    assert (hung.status, hung.error_type, hung.attempts) == (ItemStatus.FAILED, "TimeoutError", 2)
    for n in (1, 2):
        assert (outcomes[f"item-{n}"].status, outcomes[f"item-{n}"].attempts) == (
            ItemStatus.SUCCEEDED,
            2,
        )
    assert sorted(tracker.cancelled) == ["item-0", "item-0", "item-1", "item-2"]


async def test_batch_timeout_fails_only_the_items_it_did_not_finish() -> None:
    tracker = Tracker()

    async def odd_hang(item: Mapping[str, Any]) -> int:
        with tracker.running(item["id"]):
            if item["n"] % 2:
                await anyio.sleep_forever()
        return int(item["n"])

    # Two lanes: items 0 and 2 finish, 1 and 3 hang and hold both lanes, 4 and 5 never start.
    job, outcomes = await run(
        odd_hang, make_items(6), batch_size=6, item_concurrency=2, timeout=0.3, max_retries=0
    )
    assert job.status is JobStatus.COMPLETED
    assert (job.succeeded_items, job.failed_items) == (2, 4)
    assert {i: o.result for i, o in outcomes.items() if o.status is ItemStatus.SUCCEEDED} == {
        "item-0": 0,
        "item-2": 2,
    }
    timed_out = {i for i, o in outcomes.items() if o.error_type == "BatchTimeout"}
    assert timed_out == {"item-1", "item-3", "item-4", "item-5"}
    assert all("timeout" in (outcomes[i].error or "") for i in timed_out)
    assert sorted(tracker.started) == ["item-0", "item-1", "item-2", "item-3"]
    assert sorted(tracker.cancelled) == ["item-1", "item-3"]


async def test_batch_timeout_applies_to_each_batch_separately() -> None:
    async def slow_first_batch(item: Mapping[str, Any]) -> int:
        if item["n"] < 2:
            await anyio.sleep_forever()
        return 1

    job, outcomes = await run(
        slow_first_batch, make_items(6), batch_size=2, concurrency=3, timeout=0.3, max_retries=0
    )
    assert {i for i, o in outcomes.items() if o.error_type == "BatchTimeout"} == {
        "item-0",
        "item-1",
    }
    assert job.succeeded_items == 4


async def test_batch_timeout_with_process_batch_fails_the_unfinished_items() -> None:
    class Stuck:
        async def process_batch(self, items: list[Mapping[str, Any]]) -> list[int]:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    job, outcomes = await run(Stuck(), make_items(3), batch_size=3, timeout=0.2)
    assert job.failed_items == 3
    assert {o.error_type for o in outcomes.values()} == {"BatchTimeout"}


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_stops_new_calls_cancels_in_flight_and_keeps_outcomes() -> None:
    tracker = Tracker()

    async def fast_then_hang(item: Mapping[str, Any]) -> int:
        with tracker.running(item["id"]):
            if item["n"] >= 5:
                await anyio.sleep_forever()
        return int(item["n"])

    async with Pipeline(processors={"p": fast_then_hang}, default_options=QUICK) as p:
        # Batch 0 (items 0-4) finishes; batches 1 and 2 hang; 7 more batches wait.
        job = await p.submit("p", make_items(50), options=quick(batch_size=5, concurrency=2))
        await eventually(lambda: processed_at_least(p, job.id, 5), "batch 0 to be recorded")
        await eventually(lambda: tracker.in_flight == 10, "two batches in flight")

        snapshots: list[Job] = []

        async def watch() -> None:
            async for snapshot in p.watch(job.id, interval=0.05):
                snapshots.append(snapshot)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            cancelled = await p.cancel(job.id)
            calls_at_cancel = tracker.calls
            # In-flight calls observed their cancellation before cancel() returned.
            assert tracker.in_flight == 0
            assert sorted(tracker.cancelled) == sorted(f"item-{n}" for n in range(5, 15))
            await anyio.sleep(0.3)
            assert tracker.calls == calls_at_cancel, "no call starts after cancel()"

        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.completed_at is not None
        assert snapshots[-1].status is JobStatus.CANCELLED  # watch() ended on it
        job = await p.get(job.id)
        assert job.status is JobStatus.CANCELLED
        assert job.succeeded_items == 5
        outcomes = await outcome_map(p, job.id)
        assert {i: o.result for i, o in outcomes.items()} == {f"item-{n}": n for n in range(5)}
        with pytest.raises(JobNotCancellable, match="cancelled") as caught:
            await p.cancel(job.id)
        assert caught.value.job_id == job.id


async def test_cancel_cancels_an_in_flight_process_batch_call() -> None:
    observed: list[str] = []
    calls = 0

    class Hangs:
        async def process_batch(self, items: list[Mapping[str, Any]]) -> list[int]:
            nonlocal calls
            calls += 1
            try:
                await anyio.sleep_forever()
            finally:
                observed.append("cancelled")
            raise AssertionError("unreachable")

    async with Pipeline(processors={"p": Hangs()}, default_options=QUICK) as p:
        job = await p.submit("p", make_items(12), options=quick(batch_size=3, concurrency=2))
        await eventually(lambda: calls == 2, "two batch calls in flight")
        job = await p.cancel(job.id)
        assert observed == ["cancelled", "cancelled"]
        await anyio.sleep(0.2)
        assert calls == 2
        assert job.status is JobStatus.CANCELLED
        assert job.processed_items == 0


async def test_cancel_leaves_other_jobs_running() -> None:
    release = anyio.Event()
    tracker = Tracker()

    async def gated(item: Mapping[str, Any]) -> str:
        with tracker.running(item["id"]):
            await release.wait()
        return item["id"]

    async with Pipeline(processors={"p": gated}, default_options=QUICK) as p:
        doomed = await p.submit("p", make_items(20, "doomed-"), options=quick(batch_size=4))
        kept = await p.submit("p", make_items(20, "kept-"), options=quick(batch_size=4))
        await eventually(
            lambda: any(i.startswith("kept-") for i in tracker.started), "both jobs to start"
        )
        await p.cancel(doomed.id)
        assert all(i.startswith("doomed-") for i in tracker.cancelled)
        release.set()
        kept = await p.wait(kept.id, timeout=PATIENCE)
        assert kept.status is JobStatus.COMPLETED
        assert kept.succeeded_items == 20
        assert (await p.get(doomed.id)).status is JobStatus.CANCELLED


async def test_cancel_of_an_ended_job_raises_job_not_cancellable() -> None:
    async def fine(item: Mapping[str, Any]) -> int:
        return 1

    async with Pipeline(processors={"p": fine}) as p:
        job = await p.wait((await p.submit("p", make_items(2))).id, timeout=PATIENCE)
        with pytest.raises(JobNotCancellable, match="completed"):
            await p.cancel(job.id)
        assert (await p.get(job.id)).status is JobStatus.COMPLETED
        with pytest.raises(JobNotFound):
            await p.cancel("missing")


async def test_cancel_a_job_no_worker_has_started() -> None:
    async with Pipeline(workers=0) as p:
        job = await p.submit("elsewhere", make_items(3), allow_unserved=True)
        job = await p.cancel(job.id)
        assert job.status is JobStatus.CANCELLED
        assert job.processed_items == 0
        assert await outcome_map(p, job.id) == {}


class SlowClaims(MemoryStore):
    """A store whose claims take a while to come back, like one over a network."""

    async def claim_batch(self, **kwargs: Any) -> Any:
        claimed = await super().claim_batch(**kwargs)
        if claimed is not None:
            await anyio.sleep(0.2)
        return claimed


async def test_cancel_while_a_claim_is_on_its_way_starts_no_call() -> None:
    tracker = Tracker()

    async def fine(item: Mapping[str, Any]) -> int:
        with tracker.running(item["id"]):
            return 1

    async with Pipeline(store=SlowClaims(), processors={"p": fine}) as p:
        job = await p.submit("p", make_items(5))
        await eventually(
            lambda: status_is(p, job.id, JobStatus.PROCESSING), "the first claim to be made"
        )
        await p.cancel(job.id)  # the worker has the batch, but has not started it yet
        await anyio.sleep(0.5)
        assert tracker.calls == 0, "no call may start after cancel() returned"
        assert (await p.get(job.id)).status is JobStatus.CANCELLED


async def status_is(p: Pipeline, job_id: str, status: JobStatus) -> bool:
    """Whether the stored job has ``status``."""
    return (await p.get(job_id)).status is status


# --- retry_failed ----------------------------------------------------------------------------


async def test_retry_failed_runs_exactly_the_failed_items() -> None:
    broken = {f"item-{n}" for n in (1, 4, 5, 9, 13)}
    seen: list[str] = []

    async def sometimes(item: Mapping[str, Any]) -> int:
        seen.append(item["id"])
        if item["id"] in broken:
            raise PermanentError("broken for now")
        return int(item["n"])

    async with Pipeline(processors={"p": sometimes}, default_options=QUICK) as p:
        first = await p.submit("p", make_items(15), options=quick(batch_size=4))
        first = await p.wait(first.id, timeout=PATIENCE)
        assert first.failed_items == 5
        failed_payloads = {f"item-{n}": n for n in (1, 4, 5, 9, 13)}

        seen.clear()
        broken.clear()
        # A smaller batch size reads the failed items over several pages.
        retry = await p.retry_failed(first.id, options=quick(batch_size=2))
        assert retry.id != first.id
        assert retry.retry_of == first.id
        assert retry.type == first.type
        assert retry.total_items == 5
        assert retry.options.batch_size == 2
        retry = await p.wait(retry.id, timeout=PATIENCE)
        assert retry.status is JobStatus.COMPLETED
        assert sorted(seen) == sorted(failed_payloads)
        outcomes = await outcome_map(p, retry.id)
        assert {i: o.result for i, o in outcomes.items()} == failed_payloads  # same payloads
        # The first job is left as it was.
        assert (await p.get(first.id)).failed_items == 5


async def test_retry_failed_keeps_the_options_and_priority_by_default() -> None:
    async def fails(item: Mapping[str, Any]) -> None:
        raise PermanentError("no")

    async with Pipeline(processors={"p": fails}, default_options=QUICK) as p:
        first = await p.submit("p", make_items(3), options=quick(batch_size=2), priority=3)
        await p.wait(first.id, timeout=PATIENCE)
        retry = await p.retry_failed(first.id)
        assert retry.options == first.options
        assert retry.priority == 3


async def test_retry_failed_with_nothing_failed_raises_nothing_to_retry() -> None:
    async def fine(item: Mapping[str, Any]) -> int:
        return 1

    async with Pipeline(processors={"p": fine}) as p:
        job = await p.wait((await p.submit("p", make_items(3))).id, timeout=PATIENCE)
        with pytest.raises(NothingToRetry) as caught:
            await p.retry_failed(job.id)
        assert caught.value.job_id == job.id
        assert len(await p.list_jobs()) == 1  # no job was made


async def test_retry_failed_of_a_running_job_raises_job_not_finished() -> None:
    async def hang(item: Mapping[str, Any]) -> None:
        await anyio.sleep_forever()

    async with Pipeline(processors={"p": hang}) as p:
        job = await p.submit("p", make_items(2))
        with pytest.raises(JobNotFinished) as caught:
            await p.retry_failed(job.id)
        assert caught.value.job_id == job.id
        await p.cancel(job.id)
        with pytest.raises(JobNotFound):
            await p.retry_failed("missing")


# --- bad input -------------------------------------------------------------------------------


def bad_and_good_items() -> Iterator[Any]:
    """Good items (string ids) mixed with every kind of invalid one."""
    yield {"id": "good-0", "n": 0}
    yield 5  # not a mapping
    yield ["id", "x"]  # not a mapping either
    yield {"name": "no id"}
    yield {"id": "", "n": 1}  # empty id
    yield {"id": True, "n": 1}  # a bool is not an id
    yield {"id": 1.5, "n": 1}  # nor is a float
    yield {"id": "good-1", "n": 1}
    yield {"id": "good-0", "n": 99}  # repeated id (in a later batch)
    yield {"id": "set", "tags": {1, 2}}  # not JSON
    yield {"id": "nan", "v": math.nan}  # not strict JSON
    yield {"id": "inf", "v": math.inf}
    yield {"id": 7, "n": 7}  # an int id in a job of string ids
    yield {"id": "good-1", "n": -1}  # repeated again
    yield {"id": "good-3", "n": 3}


async def test_invalid_items_are_rejected_and_the_rest_completes() -> None:
    async def echo(item: Mapping[str, Any]) -> int:
        return int(item["n"])

    job, outcomes = await run(echo, bad_and_good_items(), batch_size=3)
    assert job.status is JobStatus.COMPLETED
    assert {i: o.result for i, o in outcomes.items()} == {
        "good-0": 0,
        "good-1": 1,
        "good-3": 3,
    }
    assert (job.total_items, job.succeeded_items, job.rejected_items) == (3, 3, 12)
    assert job.error_count == 12
    assert {e.error_type for e in job.errors} == {"InvalidItem"}
    messages = " | ".join(e.error for e in job.errors)
    for reason in (
        "expected a mapping, got int",
        "expected a mapping, got list",
        "no 'id' key",
        "empty string",
        "not bool",
        "not float",
        "repeated id 'good-0'",
        "repeated id 'good-1'",
        "not JSON-serialisable",
        "'id' 7 is an integer but this job's ids are strings",
    ):
        assert reason in messages
    assert {e.item_id for e in job.errors if e.item_id} >= {"set", "nan", "inf", "good-0"}
    assert job.result is not None
    assert job.result.rejected == 12


async def test_a_custom_id_key() -> None:
    async def echo(item: Mapping[str, Any]) -> str:
        return str(item["sku"])

    items = [{"sku": "a"}, {"sku": "2"}, {"id": "no sku"}]
    job, outcomes = await run(echo, items, id_key="sku")
    assert set(outcomes) == {"a", "2"}
    assert job.rejected_items == 1
    assert "'sku'" in job.errors[0].error


async def test_a_result_that_is_not_json_fails_only_that_item() -> None:
    calls: dict[str, int] = {}

    async def garbage(item: Mapping[str, Any]) -> Any:
        calls[item["id"]] = calls.get(item["id"], 0) + 1
        return {0: {"ok": 1}, 1: {1, 2}, 2: object(), 3: math.nan, 4: [math.inf]}.get(
            item["n"], item["n"]
        )

    job, outcomes = await run(garbage, make_items(7), batch_size=7, max_retries=3)
    assert job.status is JobStatus.COMPLETED
    bad = {i for i, o in outcomes.items() if o.status is ItemStatus.FAILED}
    assert bad == {"item-1", "item-2", "item-3", "item-4"}
    for item_id in bad:
        assert outcomes[item_id].error_type == "InvalidResult"
        assert "not JSON-serialisable" in (outcomes[item_id].error or "")
        assert calls[item_id] == 1  # garbage is not retried
    assert outcomes["item-0"].result == {"ok": 1}
    assert outcomes["item-6"].result == 6


async def test_a_processor_returning_none_succeeds_with_none() -> None:
    async def nothing(item: Mapping[str, Any]) -> None:
        return None

    job, outcomes = await run(nothing, make_items(2))
    assert job.succeeded_items == 2
    assert {o.result for o in outcomes.values()} == {None}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio code cannot raise Cancelled
@pytest.mark.parametrize("batched", [False, True])
async def test_a_cancelled_error_raised_by_the_processor_fails_only_that_item(
    batched: bool,
) -> None:
    # asyncio code raises CancelledError when it awaits a future cancelled elsewhere; that is
    # an error of the item, not a cancel of the job (which would end the lane and hang the job).
    calls: dict[str, int] = {}

    def outcome(item: Mapping[str, Any]) -> Any:
        calls[item["id"]] = calls.get(item["id"], 0) + 1
        if item["n"] == 1 or (item["n"] == 2 and calls[item["id"]] == 1):
            return asyncio.CancelledError()
        return 1

    async def single(item: Mapping[str, Any]) -> int:
        result = outcome(item)
        if isinstance(result, BaseException):
            raise result
        return int(result)

    class Batch:
        async def process_batch(self, items: list[Mapping[str, Any]]) -> list[int]:
            results = [outcome(item) for item in items]
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results

    processor: object = Batch() if batched else single
    job, outcomes = await run(processor, make_items(4), batch_size=4, max_retries=1)
    assert job.status is JobStatus.COMPLETED
    assert outcomes["item-1"].status is ItemStatus.FAILED
    assert outcomes["item-1"].error_type == "CancelledError"
    if batched:  # the whole call failed: every item of it, after its retry
        assert {o.status for o in outcomes.values()} == {ItemStatus.FAILED}
    else:
        assert outcomes["item-2"].status is ItemStatus.SUCCEEDED
        assert outcomes["item-2"].attempts == 2
        assert job.succeeded_items == 3


def raises_midway(count: int) -> Iterator[dict[str, Any]]:
    """``count`` good items, then an error."""
    yield from make_items(count)
    raise OSError("the export file is truncated")


async def raises_midway_async(count: int) -> AsyncIterator[dict[str, Any]]:
    """``count`` good items, then an error (asynchronously)."""
    for item in make_items(count):
        yield item
    raise OSError("the export file is truncated")


@pytest.mark.parametrize("make", [raises_midway, raises_midway_async])
async def test_an_iterable_that_raises_midway_fails_the_job(make: Any) -> None:
    async def fine(item: Mapping[str, Any]) -> int:
        return 1

    async with Pipeline(processors={"p": fine}, default_options=QUICK) as p:
        with pytest.raises(ItemSourceError, match="truncated") as caught:
            await p.submit("p", make(7), options=quick(batch_size=3))
        job = await p.wait(caught.value.job_id, timeout=PATIENCE)
        assert job.status is JobStatus.FAILED
        assert job.errors[-1].error_type == "ItemSourceError"
        assert "after 6 items" in job.errors[-1].error
        assert "OSError" in job.errors[-1].error
        # The pipeline carries on with other jobs.
        other = await p.wait((await p.submit("p", make_items(3))).id, timeout=PATIENCE)
        assert other.status is JobStatus.COMPLETED


async def test_a_source_that_raises_fails_the_job() -> None:
    async def fine(item: Mapping[str, Any]) -> int:
        return 1

    async def broken_source(params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield {"id": "first"}
        raise KeyError(params["missing"])

    async with Pipeline(processors={"p": fine}, sources={"s": broken_source}) as p:
        with pytest.raises(ItemSourceError, match="KeyError") as caught:
            await p.submit("p", source="s", params={})
        assert (await p.wait(caught.value.job_id, timeout=PATIENCE)).status is JobStatus.FAILED


async def test_the_pipeline_survives_every_kind_of_bad_job() -> None:
    async def raises(item: Mapping[str, Any]) -> None:
        raise RuntimeError("always")

    async def hangs(item: Mapping[str, Any]) -> None:
        await anyio.sleep_forever()

    async def garbage(item: Mapping[str, Any]) -> object:
        return object()

    async def fine(item: Mapping[str, Any]) -> int:
        return int(item["n"])

    processors = {"raises": raises, "hangs": hangs, "garbage": garbage, "fine": fine}
    async with Pipeline(processors=processors, default_options=QUICK) as p:
        raised = await p.submit("raises", make_items(5))
        hung = await p.submit("hangs", make_items(5), options=quick(item_timeout=0.05))
        bad = await p.submit("garbage", make_items(5))
        rejected = await p.submit("fine", [1, 2, {"x": 1}])
        with pytest.raises(ItemSourceError):
            await p.submit("fine", raises_midway(2))
        for job_id in (raised.id, hung.id, bad.id, rejected.id):
            job = await p.wait(job_id, timeout=PATIENCE)
            assert job.status is JobStatus.COMPLETED
        good = await p.submit("fine", make_items(20), options=quick(batch_size=3))
        good = await p.wait(good.id, timeout=PATIENCE)
        assert (good.status, good.succeeded_items) == (JobStatus.COMPLETED, 20)


# --- concurrency bounds ----------------------------------------------------------------------


async def sleepy_tracked(tracker: Tracker, item: Mapping[str, Any], seconds: float) -> int:
    """Hold the item ``seconds`` while ``tracker`` counts it."""
    with tracker.running(item["id"]):
        await anyio.sleep(seconds)
    return 1


@pytest.mark.parametrize(
    ("batch_size", "concurrency", "item_concurrency", "bound"),
    [(4, 3, None, 12), (6, 2, 2, 4), (5, 1, None, 5), (1, 4, None, 4)],
)
async def test_items_in_flight_reach_but_never_exceed_the_bound(
    batch_size: int, concurrency: int, item_concurrency: int | None, bound: int
) -> None:
    tracker = Tracker()
    per_batch: dict[int, int] = {}
    per_batch_peak = 0

    async def held(item: Mapping[str, Any]) -> int:
        nonlocal per_batch_peak
        batch = item["n"] // batch_size
        per_batch[batch] = per_batch.get(batch, 0) + 1
        per_batch_peak = max(per_batch_peak, per_batch[batch])
        try:
            return await sleepy_tracked(tracker, item, 0.03)
        finally:
            per_batch[batch] -= 1

    job, _ = await run(
        held,
        make_items(bound * 4),
        batch_size=batch_size,
        concurrency=concurrency,
        item_concurrency=item_concurrency,
    )
    assert job.succeeded_items == bound * 4
    assert tracker.peak == bound
    assert per_batch_peak <= (item_concurrency or batch_size)


async def test_max_in_flight_bounds_items_across_jobs() -> None:
    tracker = Tracker()

    async def held(item: Mapping[str, Any]) -> int:
        return await sleepy_tracked(tracker, item, 0.03)

    async with Pipeline(processors={"p": held}, default_options=QUICK, max_in_flight=3) as p:
        jobs = [
            await p.submit("p", make_items(12, f"job{j}-"), options=quick(batch_size=4))
            for j in range(3)
        ]
        for job in jobs:
            assert (await p.wait(job.id, timeout=PATIENCE)).succeeded_items == 12
    assert tracker.peak == 3
    # The three jobs did run side by side.
    prefixes = [i.split("-")[0] for i in tracker.started[:6]]
    assert len(set(prefixes)) > 1


async def test_jobs_run_side_by_side() -> None:
    both = anyio.Event()
    started: set[str] = set()

    async def meet(item: Mapping[str, Any]) -> int:
        started.add(item["id"].split("-")[0])
        if len(started) == 2:
            both.set()
        with anyio.fail_after(PATIENCE):
            await both.wait()  # each job waits for an item of the other
        return 1

    async with Pipeline(processors={"p": meet}, default_options=QUICK) as p:
        a = await p.submit("p", make_items(3, "a-"), options=quick(concurrency=1, batch_size=3))
        b = await p.submit("p", make_items(3, "b-"), options=quick(concurrency=1, batch_size=3))
        assert (await p.wait(a.id, timeout=PATIENCE)).succeeded_items == 3
        assert (await p.wait(b.id, timeout=PATIENCE)).succeeded_items == 3


async def test_higher_priority_items_start_first_once_the_bound_is_reached() -> None:
    starts: list[str] = []
    release = anyio.Event()

    async def record(item: Mapping[str, Any]) -> int:
        starts.append(item["id"].split("-")[0])
        if item["id"].startswith("low"):
            await release.wait()
        return 1

    async with Pipeline(processors={"p": record}, default_options=QUICK, max_in_flight=2) as p:
        low = await p.submit(
            "p", make_items(10, "low-"), options=quick(batch_size=5, concurrency=2)
        )
        await eventually(lambda: len(starts) == 2, "the low job to fill the gate")
        # Two batches, both claimed at once: between a job's batches, while the next one is
        # being claimed, one lower-priority item may start (documented in concepts.md).
        high = await p.submit(
            "p", make_items(9, "high-"), options=quick(batch_size=5, concurrency=2), priority=5
        )
        await eventually(lambda: status_is(p, high.id, JobStatus.PROCESSING), "a high claim")
        await anyio.sleep(0.1)  # let its lanes queue at the gate
        assert starts == ["low", "low"]  # the gate is full: nothing more started
        release.set()
        await p.wait(high.id, timeout=PATIENCE)
        await p.wait(low.id, timeout=PATIENCE)
        assert [w.gate.in_use for w in p.local_workers if w.gate] == [0]  # every place given back
    # Once places free up, every high item starts before any further low one.
    assert starts[2:11] == ["high"] * 9, "".join(s[0] for s in starts)
    assert starts.count("low") == 10


async def test_equal_priorities_share_the_gate() -> None:
    starts: list[str] = []

    async def record(item: Mapping[str, Any]) -> int:
        starts.append(item["id"].split("-")[0])
        await anyio.sleep(0.01)
        return 1

    async with Pipeline(processors={"p": record}, default_options=QUICK, max_in_flight=2) as p:
        a = await p.submit("p", make_items(20, "a-"), options=quick(batch_size=10))
        b = await p.submit("p", make_items(20, "b-"), options=quick(batch_size=10))
        await p.wait(a.id, timeout=PATIENCE)
        await p.wait(b.id, timeout=PATIENCE)
    # Neither job waits for the other to finish: b starts while a still has most items left.
    assert starts.index("b") < 10, starts


# --- continuous flow -------------------------------------------------------------------------


async def test_a_slow_item_does_not_hold_up_the_next_batch() -> None:
    next_batch_started = anyio.Event()
    slow_finished_first = False

    async def one_slow(item: Mapping[str, Any]) -> int:
        nonlocal slow_finished_first
        if item["n"] >= 10:
            next_batch_started.set()
        if item["n"] == 0:
            with anyio.move_on_after(PATIENCE):
                await next_batch_started.wait()
            slow_finished_first = not next_batch_started.is_set()
        return 1

    job, _ = await run(one_slow, make_items(30), batch_size=10, concurrency=1)
    assert job.succeeded_items == 30
    assert next_batch_started.is_set()
    assert not slow_finished_first, "batch 1 waited for the slow item of batch 0"


# --- progress --------------------------------------------------------------------------------


async def test_stored_progress_is_never_staler_than_progress_interval() -> None:
    interval = 0.2
    tracker = Tracker()

    async def slow(item: Mapping[str, Any]) -> int:
        return await sleepy_tracked(tracker, item, 0.05)

    async with Pipeline(processors={"p": slow}, default_options=QUICK) as p:
        # One batch of 24 items, 2 at a time: about 0.6 s, all before the batch is done.
        job = await p.submit(
            "p",
            make_items(24),
            options=quick(batch_size=24, item_concurrency=2, progress_interval=interval),
        )
        seen: list[int] = []
        lags: list[int] = []
        while True:
            now = time.monotonic()
            stored = await p.get(job.id)
            if stored.status.is_terminal:
                break
            seen.append(stored.processed_items)
            # Items that finished more than interval (+ slack for a noisy host) ago.
            due = sum(1 for _, t in tracker.finished if t <= now - interval - 0.3)
            lags.append(due - stored.processed_items)
            await anyio.sleep(0.02)
        assert stored.processed_items == 24
    intermediate = sorted({n for n in seen if 0 < n < 24})
    assert len(intermediate) >= 2, seen  # counts grew while the batch was still open
    assert seen == sorted(seen)
    assert max(lags) <= 0, "the stored counts lagged more than progress_interval"


async def test_progress_counts_add_up_and_summary_is_set_at_the_end() -> None:
    async def odd_fails(item: Mapping[str, Any]) -> int:
        if item["n"] % 2:
            raise PermanentError("odd")
        return 1

    job, _ = await run(odd_fails, make_items(10), batch_size=3)
    assert (job.total_items, job.processed_items) == (10, 10)
    assert (job.succeeded_items, job.failed_items) == (5, 5)
    assert job.progress == 100.0
    assert job.result is not None
    assert (job.result.total, job.result.succeeded, job.result.failed) == (10, 5, 5)
    assert job.result.success_rate == 50.0
    assert job.started_at is not None
    assert job.completed_at is not None
    assert job.started_at <= job.completed_at


# --- fail fast -------------------------------------------------------------------------------


async def test_max_failure_ratio_fails_the_job_fast_and_stops_starting_items() -> None:
    tracker = Tracker()

    async def broken(item: Mapping[str, Any]) -> None:
        with tracker.running(item["id"]):
            await anyio.sleep(0.01)
        raise PermanentError("down")

    async with Pipeline(processors={"p": broken}, default_options=QUICK) as p:
        job = await p.submit(
            "p",
            make_items(300),
            options=quick(
                batch_size=10, concurrency=1, max_failure_ratio=0.1, failure_ratio_min_outcomes=10
            ),
        )
        job = await p.wait(job.id, timeout=PATIENCE)
        calls = tracker.calls
        await anyio.sleep(0.3)
        assert tracker.calls == calls, "items kept starting after the job failed"
    assert job.status is JobStatus.FAILED
    assert job.errors[-1].error_type == "FailureRatioExceeded"
    assert "max_failure_ratio=0.1" in job.errors[-1].error
    assert calls < 300
    assert job.processed_items < 300


async def test_failures_below_the_ratio_do_not_fail_the_job() -> None:
    async def few_fail(item: Mapping[str, Any]) -> int:
        if item["n"] % 10 == 0:
            raise PermanentError("one in ten")
        return 1

    job, _ = await run(few_fail, make_items(50), batch_size=50, max_failure_ratio=0.5)
    assert job.status is JobStatus.COMPLETED
    assert job.failed_items == 5
