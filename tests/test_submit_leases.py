"""Abandoned submits end (issue 8, point 1): a job whose submitter stops renewing its submit
lease is sealed by a worker's sweep as it stands; its stored items run, then it ends failed
with ``SubmitAbandoned``. On every store, asyncio and trio. The real-process test (kill -9 of
``bulkpipe submit -``) is in ``test_procs_submit_abandoned.py``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import pytest

from bulkpipe import (
    ErrorType,
    InvalidArgument,
    Job,
    JobStatus,
    JobStore,
    PermanentError,
    Pipeline,
    StoreError,
    SubmitLeaseLost,
)
from bulkpipe.options import JobOptions
from bulkpipe.store import Progress
from bulkpipe.testing import encoded, make_job

from .helpers import PATIENCE, QUICK

pytestmark = pytest.mark.anyio


async def even(item: Mapping[str, Any]) -> int:
    """Succeeds for an even ``n``, fails the odd ones at once."""
    if item["n"] % 2:
        raise PermanentError("odd")
    return int(item["n"])


def pipeline(store: JobStore, **kwargs: Any) -> Pipeline:
    return Pipeline(store, processors={"even": even}, default_options=QUICK, **kwargs)


def abandoned_errors(job: Job) -> list[str]:
    return [e.error for e in job.errors if e.error_type == ErrorType.SUBMIT_ABANDONED]


async def test_an_abandoned_submit_runs_its_stored_items_then_fails(any_store: JobStore) -> None:
    async with pipeline(any_store) as p:
        job = make_job(type="even", options=QUICK)
        await p.store.create_job(job, submit_lease=0.2)  # a submitter that then died
        await p.store.add_batches(job.id, [encoded(3), encoded(2, 3)])
        done = await p.wait(job.id, timeout=PATIENCE)
    assert done.status is JobStatus.FAILED
    assert done.sealed
    assert (done.total_items, done.succeeded_items, done.failed_items) == (5, 3, 2)
    assert abandoned_errors(done) == [
        "the submitter stopped renewing its submit lease after 5 items were stored; they "
        "ran: 3 succeeded, 2 failed"
    ]


async def test_an_abandoned_submit_with_no_items_ends_at_once(any_store: JobStore) -> None:
    async with pipeline(any_store) as p:
        job = make_job(type="even", options=QUICK)
        await p.store.create_job(job, submit_lease=0.2)
        done = await p.wait(job.id, timeout=PATIENCE)
    assert (done.status, done.total_items) == (JobStatus.FAILED, 0)
    assert abandoned_errors(done) == [
        "the submitter stopped renewing its submit lease before any item was stored"
    ]


async def test_a_slow_submit_that_renews_its_lease_completes(any_store: JobStore) -> None:
    async def trickle(params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for n in range(6):
            yield {"id": f"item-{n}", "n": 2 * n}
            await anyio.sleep(0.5)  # 3 s in all: three leases, past a sweep

    opts = JobOptions.model_validate({**QUICK.model_dump(), "batch_size": 1})
    async with pipeline(any_store, submit_lease=1.0, sources={"trickle": trickle}) as p:
        job = await p.submit("even", source="trickle", options=opts)
        done = await p.wait(job.id, timeout=PATIENCE)
    assert (done.status, done.succeeded_items) == (JobStatus.COMPLETED, 6)
    assert abandoned_errors(done) == []


class _RenewalsFail:
    """A store whose ``renew_submit`` always fails, as if this submitter's renewals never
    reached it; everything else is the wrapped store's."""

    def __init__(self, inner: JobStore) -> None:
        self._inner = inner
        self.renewals = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def renew_submit(self, job_id: str, lease_seconds: float) -> Progress:
        self.renewals += 1
        raise StoreError("the store did not answer (a test)")


async def test_a_submitter_whose_lease_expired_gets_submit_lease_lost(
    any_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = _RenewalsFail(any_store)
    ended = anyio.Event()

    async def items() -> AsyncIterator[dict[str, Any]]:
        for n in range(2):
            yield {"id": f"item-{n}", "n": 2 * n}
        await ended.wait()  # until a worker has sealed the job as abandoned and ended it
        for n in range(2, 4):
            yield {"id": f"item-{n}", "n": 2 * n}

    opts = JobOptions.model_validate({**QUICK.model_dump(), "batch_size": 2})
    async with pipeline(store, submit_lease=1.0) as p:  # type: ignore[arg-type]
        p.events.subscribe(lambda _job_id, _status: ended.set())
        with caplog.at_level(logging.WARNING, "bulkpipe"), pytest.raises(SubmitLeaseLost) as raised:
            await p.submit("even", items(), options=opts)
        job = await p.get(raised.value.job_id)
    assert raised.value.stored == 2
    assert "submit the rest again" in str(raised.value)
    assert store.renewals >= 1
    assert "renewing its submit lease failed" in caplog.text
    assert (job.status, job.total_items, job.succeeded_items) == (JobStatus.FAILED, 2, 2)
    assert len(abandoned_errors(job)) == 1


@pytest.mark.parametrize("lease", [0.5, 3601, float("nan"), float("inf"), "30", True])
def test_submit_lease_is_checked(lease: Any) -> None:
    with pytest.raises(InvalidArgument, match="submit_lease must be 1 to 3600 seconds"):
        Pipeline(submit_lease=lease)


def test_submit_lease_bounds_are_taken() -> None:
    assert Pipeline(submit_lease=1).submit_lease == 1.0
    assert Pipeline(submit_lease=3600.0).submit_lease == 3600.0
