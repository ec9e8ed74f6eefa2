"""A processor that blocks the event loop: leases survive it and the watchdog names it.

Real worker processes (``tests/procs/worker_main.py``) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bulkpipe import JobOptions, JobStatus, Pipeline

from .multiproc import WorkerProcess, client, processed
from .pg import POSTGRES_URL
from .test_multiprocess import wait_terminal

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def batch_claims(url: str, job_id: str) -> list[int]:
    """The store's claims counter of every batch of a job, in batch order."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(
                "SELECT b.claims FROM bulkpipe_batches b JOIN bulkpipe_jobs j ON j.seq = b.job "
                "WHERE j.id = ? ORDER BY b.batch_no",
                (job_id,),
            ).fetchall()
        return [claims for (claims,) in rows]
    import psycopg

    prefix = parse_qs(urlsplit(url).query)["prefix"][0]
    with psycopg.connect(POSTGRES_URL) as pg:
        rows = pg.execute(
            f"SELECT b.claims FROM {prefix}batches b JOIN {prefix}jobs j ON j.seq = b.job "
            "WHERE j.id = %s ORDER BY b.batch_no",
            (job_id,),
        ).fetchall()
    return [claims for (claims,) in rows]


def test_a_loop_blocking_processor_keeps_its_leases(store_url: str, tmp_path: Path) -> None:
    """lease_timeout=1 s, each item blocks its worker's loop for 3 s, two workers: before the
    heartbeat had a thread of its own, every lease expired under the block and the other
    worker claimed the batch again (items ran twice, a job could livelock)."""
    n = 4

    async def go(p: Pipeline) -> str:
        items = ({"id": i, "ms": 1, "block_ms": 3000} for i in range(n))
        options = JobOptions(batch_size=1, concurrency=1)
        # Before the workers start, so that both compete for its batches from the start.
        job = await p.submit("sleepy", items, options=options, allow_unserved=True)
        return job.id

    job_id = client(store_url, go)
    workers = [WorkerProcess(store_url, tmp_path, lease_timeout=1.0) for _ in range(2)]
    try:
        for worker in workers:
            worker.ready()
        job = wait_terminal(store_url, job_id, timeout=90)
    finally:
        codes = [worker.terminate() for worker in workers]
    assert job.status == JobStatus.COMPLETED
    assert codes == [0, 0], [w.err for w in workers]
    assert batch_claims(store_url, job_id) == [1] * n
    counts = processed(tmp_path)
    assert sorted(counts) == [str(i) for i in range(n)]
    assert set(counts.values()) == {1}, counts
    # The watchdog named the job and the processor, with how long the loop was blocked.
    logs = "".join(w.err for w in workers)
    assert f"while running job {job_id} (processor 'sleepy')" in logs, logs
    blocked = [float(s) for s in re.findall(r"the event loop was blocked for ([0-9.]+) s", logs)]
    assert len(blocked) == n, logs  # one warning per episode
    assert all(2.5 <= s <= 3.5 for s in blocked), blocked
