"""The one owner of a job's fate: every end goes through a Lifecycle and is announced once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from bulkpipe import ErrorType, JobStatus, Pipeline
from bulkpipe.lifecycle import JobEvents, Lifecycle
from bulkpipe.stores import MemoryStore

from .helpers import PATIENCE, QUICK, make_items, quick

pytestmark = pytest.mark.anyio


async def echo(item: Mapping[str, Any]) -> Mapping[str, Any]:
    return item


async def fail(item: Mapping[str, Any]) -> None:
    raise ValueError("no")


async def test_each_end_is_announced_once_with_its_status() -> None:
    async with Pipeline(processors={"echo": echo, "fail": fail}, workers=2) as pipeline:
        seen: list[tuple[str, JobStatus]] = []
        pipeline.events.subscribe(lambda job_id, status: seen.append((job_id, status)))
        done = await pipeline.submit("echo", make_items(30), options=quick(batch_size=4))
        failed = await pipeline.submit(
            "fail", make_items(10), options=quick(max_failure_ratio=0.1, max_retries=0)
        )
        with anyio.fail_after(PATIENCE):
            await pipeline.wait(done.id)
            await pipeline.wait(failed.id)
    assert sorted(seen) == sorted([(done.id, JobStatus.COMPLETED), (failed.id, JobStatus.FAILED)])


async def test_a_cancel_through_the_pipeline_is_announced() -> None:
    async with Pipeline(processors={"echo": echo}, workers=0) as pipeline:
        seen: list[tuple[str, JobStatus]] = []
        pipeline.events.subscribe(lambda job_id, status: seen.append((job_id, status)))
        job = await pipeline.submit("echo", make_items(3), options=QUICK)
        await pipeline.cancel(job.id)
    assert seen == [(job.id, JobStatus.CANCELLED)]


async def test_cancel_and_fail_announce_only_what_they_change() -> None:
    store = MemoryStore()
    events = JobEvents()
    seen: list[tuple[str, JobStatus]] = []
    unsubscribe = events.subscribe(lambda job_id, status: seen.append((job_id, status)))
    async with Pipeline(store, processors={"echo": echo}, workers=0) as pipeline:
        lifecycle = Lifecycle(store, events)
        a = await pipeline.submit("echo", make_items(2), options=QUICK)
        b = await pipeline.submit("echo", make_items(2), options=QUICK)
        job, changed = await lifecycle.cancel(a.id)
        assert changed
        assert job.status is JobStatus.CANCELLED
        job, changed = await lifecycle.fail(b.id, ErrorType.ITEM_SOURCE_ERROR, "broke")
        assert changed
        assert job.status is JobStatus.FAILED
        assert job.errors[0].error_type == ErrorType.ITEM_SOURCE_ERROR
        assert job.errors[0].error == "broke"
        _, changed = await lifecycle.cancel(b.id)  # already ended: no change, no event
        assert not changed
        unsubscribe()
        c = await pipeline.submit("echo", make_items(1), options=QUICK)
        await lifecycle.cancel(c.id)
    assert seen == [(a.id, JobStatus.CANCELLED), (b.id, JobStatus.FAILED)]


async def test_a_listener_that_raises_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = JobEvents()
    seen: list[str] = []

    def broken(job_id: str, status: JobStatus) -> None:
        raise RuntimeError("listener bug")

    events.subscribe(broken)
    events.subscribe(lambda job_id, status: seen.append(job_id))
    events.notify("j", JobStatus.COMPLETED)
    assert seen == ["j"]
    assert "listener" in caplog.text
