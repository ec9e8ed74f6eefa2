"""Real worker processes sharing one durable store: SIGKILL, four workers, cancel, SIGTERM.

Each test runs on SQLite and on PostgreSQL (the ``store_url`` fixture in conftest.py).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from bulkpipe import Job, JobOptions, JobStatus, Pipeline

from .multiproc import WorkerProcess, client, processed

pytestmark = pytest.mark.subprocess


def submit(url: str, n: int, ms: int, *, allow_unserved: bool = False, **options: Any) -> str:
    async def go(p: Pipeline) -> str:
        job = await p.submit(
            "sleepy",
            ({"id": i, "ms": ms} for i in range(n)),
            options=JobOptions(**options),
            allow_unserved=allow_unserved,
        )
        return job.id

    return client(url, go)


def get(url: str, job_id: str) -> Job:
    async def go(p: Pipeline) -> Job:
        return await p.get(job_id)

    return client(url, go)


def wait_terminal(url: str, job_id: str, timeout: float) -> Job:
    async def go(p: Pipeline) -> Job:
        return await p.wait(job_id, timeout=timeout)

    return client(url, go)


def outcome_ids(url: str, job_id: str) -> list[str]:
    async def go(p: Pipeline) -> list[str]:
        return [o.item_id async for o in p.outcomes(job_id)]

    return client(url, go)


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(store_url: str, tmp_path: Path) -> None:
    n, kills, concurrency, batch_size = 6000, 20, 2, 20
    job_id = submit(  # before any worker runs: the first one starts on a full job
        store_url,
        n,
        10,
        allow_unserved=True,
        batch_size=batch_size,
        concurrency=concurrency,
        progress_interval=0.2,
    )
    rng = random.Random(7)
    for _ in range(kills):
        worker = WorkerProcess(store_url, tmp_path, lease_timeout=1.0)
        worker.ready()
        time.sleep(rng.uniform(0.0, 0.35))
        worker.kill()
    survivor = WorkerProcess(store_url, tmp_path, lease_timeout=1.0)
    try:
        survivor.ready()
        job = wait_terminal(store_url, job_id, timeout=120)
    finally:
        code = survivor.terminate()
    assert code == 0, survivor.err

    assert job.status is JobStatus.COMPLETED
    assert (job.succeeded_items, job.failed_items, job.total_items) == (n, 0, n)
    ids = outcome_ids(store_url, job_id)
    assert len(ids) == n
    assert set(ids) == {str(i) for i in range(n)}
    runs = processed(tmp_path)
    assert set(runs) == {str(i) for i in range(n)}
    # At-least-once: only what a killed worker held (at most 2 x concurrency batches: the
    # ones in flight and the ones claimed ahead) can run again.
    reruns = sum(runs.values()) - n
    assert reruns <= kills * 2 * concurrency * batch_size


def test_four_workers_share_one_job_without_duplicates(store_url: str, tmp_path: Path) -> None:
    n = 1200
    workers = [WorkerProcess(store_url, tmp_path) for _ in range(4)]
    try:
        for w in workers:
            w.ready()
        job_id = submit(store_url, n, 10, batch_size=10, concurrency=1)
        job = wait_terminal(store_url, job_id, timeout=120)
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0, 0, 0]
    assert job.status is JobStatus.COMPLETED
    assert job.succeeded_items == n
    runs = processed(tmp_path)
    assert len(runs) == n
    assert set(runs.values()) == {1}
    assert sum(1 for log in tmp_path.glob("*.log") if log.read_text()) == 4  # all took part


@pytest.mark.slow
def test_cancel_from_another_process_stops_every_worker(store_url: str, tmp_path: Path) -> None:
    workers = [WorkerProcess(store_url, tmp_path) for _ in range(2)]
    try:
        for w in workers:
            w.ready()
        job_id = submit(store_url, 20000, 20, batch_size=10, concurrency=2)
        deadline = time.monotonic() + 30
        while sum(processed(tmp_path).values()) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)

        async def cancel(p: Pipeline) -> Job:
            return await p.cancel(job_id)

        job = client(store_url, cancel)
        assert job.status is JobStatus.CANCELLED
        time.sleep(2.0)  # every worker stops starting items of the job within 2 s
        settled = sum(processed(tmp_path).values())
        time.sleep(1.0)
        assert sum(processed(tmp_path).values()) == settled
        assert settled < 20000
        assert get(store_url, job_id).status is JobStatus.CANCELLED
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0]


def test_sigterm_releases_batches_for_others(store_url: str, tmp_path: Path) -> None:
    n = 600
    first = WorkerProcess(store_url, tmp_path, lease_timeout=60.0)
    first.ready()
    job_id = submit(store_url, n, 20, batch_size=20, concurrency=2)
    deadline = time.monotonic() + 30
    while not processed(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.terminate() == 0  # graceful: finishes or releases its batches, exits 0
    second = WorkerProcess(store_url, tmp_path, lease_timeout=60.0)
    second.ready()
    try:
        # Released batches are claimable at once: no waiting for the 60 s lease to expire.
        job = wait_terminal(store_url, job_id, timeout=30)
    finally:
        assert second.terminate() == 0
    assert job.status is JobStatus.COMPLETED
    assert job.succeeded_items == n
    assert len(outcome_ids(store_url, job_id)) == n
