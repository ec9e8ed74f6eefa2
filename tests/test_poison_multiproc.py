"""Real worker processes that keep dying on one batch: ``max_claims`` stops the crash loop.

Each test runs on SQLite and on PostgreSQL (the ``store_url`` fixture in conftest.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bulkpipe import ItemOutcome, Job, JobOptions, JobStatus, Pipeline

from .multiproc import WorkerProcess, client, processed

pytestmark = pytest.mark.subprocess


def test_workers_that_keep_dying_on_a_batch_are_stopped_by_max_claims(
    store_url: str, tmp_path: Path
) -> None:
    n, poison, max_claims = 40, 12, 2
    items: list[dict[str, Any]] = [{"id": i, "ms": 5} for i in range(n)]
    # Batch 2 holds items 10-14; item 12 kills its process (after 10 and 11 are recorded).
    items[poison] = {"id": poison, "ms": 400, "exit": 3}
    options = JobOptions(
        batch_size=5,
        concurrency=1,
        item_concurrency=1,
        max_claims=max_claims,
        progress_interval=0.1,
        retry_delay=0.0,
    )

    async def submit(p: Pipeline) -> str:
        return (await p.submit("sleepy", items, options=options, allow_unserved=True)).id

    async def get(p: Pipeline) -> Job:
        return await p.get(job_id)

    async def outcomes(p: Pipeline) -> list[ItemOutcome]:
        return [o async for o in p.outcomes(job_id)]

    job_id = client(store_url, submit)
    workers = [WorkerProcess(store_url, tmp_path, lease_timeout=1.0) for _ in range(2)]
    deaths: list[int] = []
    deadline = time.monotonic() + 120
    try:
        while not (job := client(store_url, get)).status.is_terminal:
            assert time.monotonic() < deadline, f"job still {job.status} after {deaths=}"
            for i, worker in enumerate(workers):
                if worker.proc.poll() is not None:  # a supervisor restarts dead workers
                    deaths.append(worker.terminate())
                    workers[i] = WorkerProcess(store_url, tmp_path, lease_timeout=1.0)
                    # Handling SIGTERM before the job can end (the finally stops it).
                    workers[i].ready()
            time.sleep(0.1)
    finally:
        codes = [worker.terminate() for worker in workers]
    assert codes == [0, 0], [w.err for w in workers]

    assert job.status is JobStatus.COMPLETED
    assert deaths == [3] * max_claims  # claimed twice, both holders died; not run a third time
    assert processed(tmp_path)[str(poison)] == max_claims
    found = client(store_url, outcomes)
    by_id = {o.item_id: o for o in found}
    assert len(found) == len(by_id) == n  # one outcome per item
    failed = {item_id for item_id, o in by_id.items() if o.error_type is not None}
    assert failed == {"12", "13", "14"}  # the rest of batch 2; its first items were recorded
    for item_id in failed:
        assert by_id[item_id].error_type == "BatchKeptCrashing"
        assert f"claimed {max_claims + 1} times" in (by_id[item_id].error or "")
    assert (job.succeeded_items, job.failed_items) == (n - 3, 3)
