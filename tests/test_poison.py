"""Poison is contained (issue 13, findings 4 and 5): BaseExceptions from a processor, results no
store can hold, unreadable stored payloads and batches that keep killing their workers fail
the items concerned, never the worker, and never loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from bulkpipe import ItemStatus, JobOptions, JobStatus, Pipeline
from bulkpipe.store import JobStore
from bulkpipe.stores import open_store
from bulkpipe.testing import add_job, claim, encoded, make_job, ok_row, report

from .helpers import PATIENCE, eventually, make_items, outcome_map, quick

pytestmark = pytest.mark.anyio


class Custom(BaseException):
    """A processor's own BaseException subclass."""


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


ABORTS = [
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    Custom,
    lambda: BaseExceptionGroup("group", [KeyboardInterrupt()]),
]


async def run(
    processor: object, count: int = 10, store: JobStore | None = None, **options: Any
) -> tuple[Pipeline, dict[str, Any]]:
    """Run one job of ``count`` items, then a healthy job on the same pipeline (the worker
    survived); return the first job's outcomes by id."""

    async def healthy(item: Mapping[str, Any]) -> int:
        return 1

    defaults = {"batch_size": 10, "max_retries": 2}
    async with Pipeline(
        store=store, processors={"p": processor, "healthy": healthy}, poll_interval=0.05
    ) as pipeline:
        merged = quick(**{**defaults, **options})
        job = await pipeline.submit("p", make_items(count), options=merged)
        job = await pipeline.wait(job.id, timeout=PATIENCE)
        assert job.status is JobStatus.COMPLETED
        outcomes = await outcome_map(pipeline, job.id)
        assert len(outcomes) == count
        nxt = await pipeline.submit("healthy", make_items(3))
        nxt = await pipeline.wait(nxt.id, timeout=PATIENCE)
        assert (nxt.status, nxt.succeeded_items) == (JobStatus.COMPLETED, 3)
        return pipeline, outcomes


def only_item_3_failed(outcomes: dict[str, Any], error_type: str) -> Any:
    bad = outcomes["item-3"]
    assert bad.status is ItemStatus.FAILED
    assert bad.error_type == error_type, bad.error
    assert {i for i, o in outcomes.items() if o.status is ItemStatus.SUCCEEDED} == (
        set(outcomes) - {"item-3"}
    )
    return bad


# -- BaseExceptions ---------------------------------------------------------------------------


@pytest.mark.parametrize("abort", ABORTS)
@pytest.mark.parametrize("shape", ["async", "sync", "batch_raises", "batch_returns"])
async def test_a_base_exception_fails_only_its_item_and_is_not_retried(
    abort: Any, shape: str
) -> None:
    calls: dict[str, int] = {}

    def outcome(item: Mapping[str, Any]) -> Any:
        calls[item["id"]] = calls.get(item["id"], 0) + 1
        return abort() if item["n"] == 3 else item["n"]

    async def async_fn(item: Mapping[str, Any]) -> Any:
        result = outcome(item)
        if isinstance(result, BaseException):
            raise result
        return result

    def sync_fn(item: Mapping[str, Any]) -> Any:
        result = outcome(item)
        if isinstance(result, BaseException):
            raise result
        return result

    class Batch:
        def __init__(self, raises: bool) -> None:
            self.raises = raises

        async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
            results = [outcome(item) for item in items]
            for result in results:
                if self.raises and isinstance(result, BaseException):
                    raise result
            return results

    processor: object = {
        "async": async_fn,
        "sync": sync_fn,
        "batch_raises": Batch(raises=True),
        "batch_returns": Batch(raises=False),
    }[shape]
    # One item per process_batch call, so the raising call holds only item 3.
    _, outcomes = await run(processor, item_concurrency=1 if shape.startswith("batch") else None)
    bad = only_item_3_failed(outcomes, "ProcessorAborted")
    name = type(abort()).__name__
    assert f"raised {name}" in bad.error or f"returned {name}" in bad.error
    assert "not an Exception" in bad.error
    assert bad.attempts == 1
    assert calls["item-3"] == 1  # not retried


async def test_real_cancellation_still_cancels_the_job() -> None:
    started = anyio.Event()

    async def hangs(item: Mapping[str, Any]) -> None:
        started.set()
        await anyio.sleep(PATIENCE * 10)

    async with Pipeline(processors={"p": hangs}) as pipeline:
        job = await pipeline.submit("p", make_items(4), options=quick(batch_size=4))
        with anyio.fail_after(PATIENCE):
            await started.wait()
        await pipeline.cancel(job.id)
        job = await pipeline.wait(job.id, timeout=PATIENCE)
        assert job.status is JobStatus.CANCELLED
        assert await outcome_map(pipeline, job.id) == {}


async def test_item_timeouts_are_still_timeouts_and_retried() -> None:
    calls = 0

    async def slow_once(item: Mapping[str, Any]) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(PATIENCE)
        return 1

    _, outcomes = await run(slow_once, count=1, item_timeout=0.2)
    assert outcomes["item-0"].status is ItemStatus.SUCCEEDED
    assert outcomes["item-0"].attempts == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio code cannot raise CancelledError
async def test_a_stray_cancelled_error_is_still_an_ordinary_retried_failure() -> None:
    async def stray(item: Mapping[str, Any]) -> int:
        if item["n"] == 3:
            raise asyncio.CancelledError
        return 1

    _, outcomes = await run(stray, max_retries=1)
    bad = only_item_3_failed(outcomes, "CancelledError")
    assert bad.attempts == 2


# -- results no store can hold ------------------------------------------------------------------


class BrokenItems(dict[str, Any]):
    def items(self) -> Any:
        raise KeyboardInterrupt


UNSTORABLE = {
    "lone surrogate": "bad\udc80",
    "lone surrogate key": {"k\ud800": 1},
    "surrogate halves": ["\ud83d\ude00"],
    "deep list": deep(5000),
    "deep dict": {"a": deep(5000)},
    "nan": {"x": math.nan},
    "infinity": [math.inf],
    "bytes": b"raw",
    "set": {1, 2},
    "object": object(),
    "tuple key": {(1, 2): 3},
    "huge int": 10**5000,
    "broken mapping": BrokenItems(a=1),
}


@pytest.fixture
def store(any_store: JobStore) -> JobStore:
    """A fresh store of each kind (PostgreSQL with its own table prefix)."""
    return any_store


@pytest.mark.parametrize("value", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
@pytest.mark.parametrize("batched", [False, True])
async def test_a_result_the_store_cannot_hold_fails_as_invalid_result(
    value: Any, batched: bool, store: JobStore
) -> None:
    calls = 0

    async def poison(item: Mapping[str, Any]) -> Any:
        nonlocal calls
        calls += item["n"] == 3
        return value if item["n"] == 3 else {"n": item["n"], "text": "ünïcode ok \x00"}

    class Batch:
        async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
            return [await poison(item) for item in items]

    _, outcomes = await run(Batch() if batched else poison, store=store)
    bad = only_item_3_failed(outcomes, "InvalidResult")
    assert "not JSON-serialisable" in bad.error
    assert calls == 1  # a bad result is not retried
    assert outcomes["item-1"].result == {"n": 1, "text": "ünïcode ok \x00"}


class Nasty(Exception):
    """An exception whose text is hard to store."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how

    def __str__(self) -> str:
        if self.how == "raises":
            raise RuntimeError("no str for you")
        if self.how == "raises base":
            raise KeyboardInterrupt
        return {"surrogate": "bad \udc80 text", "nul": "nul \x00 byte", "empty": ""}[self.how]


async def test_error_messages_and_types_are_made_storable(store: JobStore) -> None:
    hows = ["raises", "raises base", "surrogate", "nul", "empty"]

    async def fails(item: Mapping[str, Any]) -> None:
        n = item["n"]
        if n < len(hows):
            raise Nasty(hows[n])
        raise ValueError("boom \udc80", "\x00")

    async with Pipeline(store=store, processors={"p": fails}) as pipeline:
        job = await pipeline.submit("p", make_items(6), options=quick(max_retries=0))
        job = await pipeline.wait(job.id, timeout=PATIENCE)
        assert (job.status, job.failed_items) == (JobStatus.COMPLETED, 6)
        outcomes = await outcome_map(pipeline, job.id)
        errors = {i: (o.error_type, o.error) for i, o in outcomes.items()}
        assert errors["item-0"][0] == "Nasty"
        assert errors["item-2"][1] == "bad \\udc80 text"
        assert errors["item-3"][1] == "nul \\x00 byte"
        assert errors["item-5"] == ("ValueError", "('boom \\udc80', '\\x00')")
        assert all(error for _, error in errors.values())
        assert len((await pipeline.get(job.id)).errors) == 6


# -- unreadable stored items --------------------------------------------------------------------


async def test_unreadable_stored_payloads_fail_one_by_one(store: JobStore) -> None:
    seen: list[str] = []

    async def ok(item: Mapping[str, Any]) -> str:
        seen.append(item["id"])
        return str(item["id"])

    async with Pipeline(store=store, processors={"p": ok}, poll_interval=0.05) as pipeline:
        job = make_job(type="p", options=quick())
        await store.create_job(job)
        batch = [
            ("a", '{"id":"a"}'),
            ("b", '{"id":'),  # cut short
            ("c", '{"id":"c"},{"id":"x"}'),  # would make the batch decode as one too many
            ("d", "[" * 100_000 + "]" * 100_000),  # too deep to decode
            ("e", '{"id":"e"}'),
        ]
        await store.add_batch(job.id, batch)
        await store.add_batch(job.id, [("f", '{"id":"f"}')])
        await store.seal_job(job.id)
        pipeline.local_workers[0].wake()
        done = await pipeline.wait(job.id, timeout=PATIENCE)
        assert (done.status, done.succeeded_items, done.failed_items) == (
            JobStatus.COMPLETED,
            3,
            3,
        )
        outcomes = await outcome_map(pipeline, job.id)
        assert sorted(seen) == ["a", "e", "f"]
        for item_id in "bcd":
            assert outcomes[item_id].error_type == "UnreadableItem"
            assert outcomes[item_id].attempts == 0
            assert "cannot be decoded" in (outcomes[item_id].error or "")


# -- batches that keep killing their workers ----------------------------------------------------


async def test_a_batch_claimed_more_than_max_claims_fails_its_remaining_items(
    store: JobStore,
) -> None:
    ran: list[str] = []

    async def ok(item: Mapping[str, Any]) -> int:
        ran.append(item["id"])
        return 1

    await store.open()
    try:
        job = await add_job(store, encoded(3), type="p", options=quick(max_claims=3))
        # Three workers claimed batch 0 and died (their leases ran out); one recorded item-0.
        await claim(store, job.id, lease_seconds=0)
        first = await claim(store, job.id, lease_seconds=0)
        await store.record(job.id, [report(first, [ok_row("item-0")], done=False)])
        third = await claim(store, job.id, lease_seconds=0)
        assert third.claims == 3
        await store.add_batch(job.id, encoded(2, 3))
        await store.seal_job(job.id)
        async with Pipeline(store=store, processors={"p": ok}, poll_interval=0.05) as pipeline:
            done = await pipeline.wait(job.id, timeout=PATIENCE)
            outcomes = await outcome_map(pipeline, job.id)
    finally:
        await store.close()
    assert done.status is JobStatus.COMPLETED
    assert sorted(ran) == ["item-3", "item-4"]  # batch 0 was not run a fourth time
    assert outcomes["item-0"].status is ItemStatus.SUCCEEDED
    for item_id in ["item-1", "item-2"]:
        bad = outcomes[item_id]
        assert bad.error_type == "BatchKeptCrashing"
        assert "claimed 4 times" in (bad.error or "")
        assert "max_claims=3" in (bad.error or "")
    assert (done.succeeded_items, done.failed_items) == (3, 2)


async def test_a_graceful_release_gives_the_claim_back(store: JobStore) -> None:
    await store.open()
    try:
        job = await add_job(store, encoded(2))
        await claim(store, job.id, lease_seconds=0)  # a worker died holding it
        held = await claim(store, job.id)
        assert held.claims == 2
        for _ in range(3):  # stopped gracefully, again and again (say, rolling restarts)
            await store.release([held.lease])
            held = await claim(store, job.id)
            assert held.claims == 2
        first = await add_job(store, encoded(1))
        once = await claim(store, first.id)
        await store.release([once.lease])
        assert (await claim(store, first.id)).claims == 2  # the first claim always counts
    finally:
        await store.close()


async def test_graceful_stops_never_use_up_max_claims(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    started = 0

    async def slow(item: Mapping[str, Any]) -> int:
        nonlocal started
        started += 1
        await anyio.sleep(0.05)
        return 1

    options = quick(batch_size=20, item_concurrency=1, max_claims=2, progress_interval=0.05)
    async with Pipeline(store=open_store(url), processors={"p": slow}) as pipeline:
        job = await pipeline.submit("p", make_items(20), options=options)
    for _ in range(4):  # each pipeline stops gracefully partway through the batch
        before = started
        async with Pipeline(store=open_store(url), processors={"p": slow}):
            await eventually(lambda: started >= before + 2, "two more items to start")  # noqa: B023
    async with Pipeline(store=open_store(url), processors={"p": slow}) as pipeline:
        done = await pipeline.wait(job.id, timeout=PATIENCE)
        outcomes = await outcome_map(pipeline, job.id)
    assert done.status is JobStatus.COMPLETED
    assert {o.status for o in outcomes.values()} == {ItemStatus.SUCCEEDED}


def test_max_claims_is_bounded() -> None:
    assert JobOptions().max_claims == 5
    for bad in (0, 1, 1001, math.inf):
        with pytest.raises(ValidationError, match="max_claims"):
            JobOptions(max_claims=bad)
