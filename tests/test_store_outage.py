"""Workers, in-process pipelines and the HTTP API ride out a store that stops answering
(issue 13, finding 3): they back off, log the outage once and its end once, resume by
themselves with exactly one outcome per item, and a worker with ``give_up_after`` ends.

The store here is a :class:`FlakyStore` over MemoryStore or SQLite; ``tests/test_outage.py``
does the same with real processes and PostgreSQL behind a TCP proxy."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from bulkpipe import JobOptions, JobStatus, Pipeline, StoreError, Worker
from bulkpipe.http import create_app
from bulkpipe.store import BatchReport, JobStore, Progress
from bulkpipe.stores.memory import MemoryStore
from bulkpipe.stores.sqlite import SQLiteStore

from .outage_support import FlakyStore

pytestmark = pytest.mark.anyio

UNREACHABLE = "the store is unreachable"
BACK = "the store is reachable again"


async def slow(item: dict[str, Any]) -> dict[str, Any]:
    await anyio.sleep(0.002)
    return {"n": item["id"]}


@pytest.fixture(params=["memory", "sqlite"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "memory":
        return MemoryStore()
    return SQLiteStore(str(tmp_path / "jobs.db"))


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def outage(store: FlakyStore, seconds: float) -> None:
    store.down = True
    await anyio.sleep(seconds)
    store.down = False


async def check_outcomes(pipeline: Pipeline, job_id: str, n: int) -> None:
    ids = Counter([o.item_id async for o in pipeline.outcomes(job_id)])
    assert len(ids) == n
    assert set(ids.values()) == {1}


async def submit_some(pipeline: Pipeline, n: int) -> str:
    job = await pipeline.submit(
        "slow",
        ({"id": str(i)} for i in range(n)),
        options=JobOptions(batch_size=10, concurrency=2, progress_interval=0.1),
    )
    return job.id


async def wait_some_done(pipeline: Pipeline, job_id: str, at_least: int) -> None:
    with anyio.fail_after(20):
        while (await pipeline.get(job_id)).processed_items < at_least:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_worker_rides_out_an_outage(
    inner: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bulkpipe")
    store = FlakyStore(inner)
    worker = Worker(store, processors={"slow": slow}, lease_timeout=0.5, poll_interval=0.05)
    async with Pipeline(store, workers=0) as client, anyio.create_task_group() as tg:
        await tg.start(worker.serve)  # registered: the submit finds it serves "slow"
        job_id = await submit_some(client, 600)
        await wait_some_done(client, job_id, 50)
        await outage(store, 1.5)  # longer than the lease: leases are lost meanwhile
        with anyio.fail_after(30):
            job = await client.wait(job_id)
        worker.stop()
    assert job.status is JobStatus.COMPLETED
    assert (job.processed_items, job.succeeded_items) == (600, 600)
    async with Pipeline(store, workers=0) as client:
        await check_outcomes(client, job_id, 600)
    assert len(lines(caplog, UNREACHABLE)) == 1, [r.getMessage() for r in caplog.records]
    assert len(lines(caplog, BACK)) == 1
    assert lines(caplog, UNREACHABLE)[0].levelno == logging.WARNING
    assert lines(caplog, UNREACHABLE)[0].exc_info is None  # no traceback for a StoreError
    assert lines(caplog, BACK)[0].levelno == logging.INFO
    # Backoff, not a tight loop: a handful of tries per loop in 1.5 s.
    assert store.refused < 100


async def test_pipeline_rides_out_an_outage(
    inner: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bulkpipe")
    store = FlakyStore(inner)
    async with Pipeline(
        store, workers=2, processors={"slow": slow}, lease_timeout=0.5, poll_interval=0.05
    ) as pipeline:
        job_id = await submit_some(pipeline, 600)
        await wait_some_done(pipeline, job_id, 50)
        await outage(store, 1.5)
        with anyio.fail_after(30):
            job = await pipeline.wait(job_id)
        assert job.status is JobStatus.COMPLETED
        await check_outcomes(pipeline, job_id, 600)
        # The workers still serve: a job submitted after the outage completes too.
        second = await submit_some(pipeline, 30)
        with anyio.fail_after(10):
            assert (await pipeline.wait(second)).status is JobStatus.COMPLETED
    workers = {w.worker_id for w in pipeline.local_workers}
    for worker_id in workers:  # each worker logs the outage and its end once
        mine = [r for r in caplog.records if worker_id in r.getMessage()]
        assert len([r for r in mine if UNREACHABLE in r.getMessage()]) <= 1
        assert len([r for r in mine if BACK in r.getMessage()]) <= 1
    assert 1 <= len(lines(caplog, UNREACHABLE)) <= 2
    assert 1 <= len(lines(caplog, BACK)) <= 2


async def test_give_up_after_ends_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(MemoryStore())
    worker = Worker(store, processors={"slow": slow}, give_up_after=0.5, poll_interval=0.05)
    await store.open()
    store.down = True
    with anyio.fail_after(10), pytest.raises(StoreError, match="gave up") as info:
        await worker.serve()
    assert "give_up_after=0.5" in str(info.value)
    assert worker.gave_up


async def test_give_up_after_is_not_reached_by_a_shorter_outage() -> None:
    store = FlakyStore(MemoryStore())
    worker = Worker(store, processors={"slow": slow}, give_up_after=2.0, poll_interval=0.05)
    async with Pipeline(store, workers=0) as client, anyio.create_task_group() as tg:
        await tg.start(worker.serve)
        await outage(store, 0.8)
        job_id = await submit_some(client, 50)
        with anyio.fail_after(10):
            assert (await client.wait(job_id)).status is JobStatus.COMPLETED
        assert not worker.gave_up
        worker.stop()


def test_give_up_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="give_up_after"):
        Worker(MemoryStore(), give_up_after=0)


class RefusesRecords(FlakyStore):
    """Every write of outcomes fails (as a result the store cannot encode does)."""

    records = 0

    async def record(self, job_id: str, reports: Sequence[BatchReport]) -> Progress:
        if reports:
            self.records += 1
            raise StoreError("flaky store: this write of outcomes cannot be stored")
        return await self.inner.record(job_id, reports)


async def test_a_write_that_keeps_failing_is_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13, finding 5: a write that kept failing was retried in a tight loop (12,538
    tracebacks in 26 s). Now: a few tries a second at first, fewer after, one log line."""
    caplog.set_level(logging.INFO, logger="bulkpipe")
    store = RefusesRecords(MemoryStore())
    async with Pipeline(
        store, workers=1, processors={"slow": slow}, lease_timeout=5, poll_interval=0.05
    ) as pipeline:
        await submit_some(pipeline, 10)
        await anyio.sleep(2.5)
        tries = store.records
    assert 3 <= tries <= 15, tries
    assert len(lines(caplog, UNREACHABLE)) == 1
    assert not [r for r in caplog.records if r.exc_info is not None]


async def test_a_failed_worker_is_served_again(caplog: pytest.LogCaptureFixture) -> None:
    """An in-process worker whose serve loop fails (a bug) is started again, so the pipeline
    (and an HTTP server on it) keeps running jobs."""
    caplog.set_level(logging.INFO, logger="bulkpipe")
    async with Pipeline(
        MemoryStore(), workers=1, processors={"slow": slow}, poll_interval=0.05
    ) as pipeline:
        registry = pipeline.local_workers[0].registry
        real = registry.names_with
        calls = 0

        def names_with(installed: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("a bug in the claim loop")
            return real(installed)

        registry.names_with = names_with  # type: ignore[method-assign]
        await anyio.sleep(0.3)
        job_id = await submit_some(pipeline, 40)
        with anyio.fail_after(10):
            assert (await pipeline.wait(job_id)).status is JobStatus.COMPLETED
    assert len(lines(caplog, "failed; serving again")) == 1


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, FlakyStore]]:
    store = FlakyStore(MemoryStore())
    pipeline = Pipeline(store, workers=1, processors={"slow": slow}, poll_interval=0.05)
    app = create_app(pipeline)
    async with pipeline:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client, store


async def test_http_answers_503_with_retry_after_and_recovers(
    api: tuple[httpx.AsyncClient, FlakyStore], caplog: pytest.LogCaptureFixture
) -> None:
    client, store = api
    body = {"processor": "slow", "items": [{"id": str(i)} for i in range(30)]}
    assert (await client.get("/jobs")).status_code == 200
    store.down = True
    await anyio.sleep(0.3)  # the in-process worker meets the outage too
    for response in (
        await client.get("/jobs"),
        await client.get("/jobs/abc"),
        await client.post("/jobs", json=body),
    ):
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.headers["content-type"].startswith("application/json")
        problem = response.json()
        assert problem["status"] == 503
        assert "Traceback" not in response.text
    assert not [r for r in caplog.records if r.exc_info is not None]
    store.down = False
    assert (await client.get("/jobs")).status_code == 200
    created = await client.post("/jobs", json=body)
    assert created.status_code == 201
    url = f"/jobs/{created.json()['id']}"
    with anyio.fail_after(10):
        while (job := (await client.get(url)).json())["status"] != "completed":  # noqa: ASYNC110
            await anyio.sleep(0.05)
    assert job["processed_items"] == 30
