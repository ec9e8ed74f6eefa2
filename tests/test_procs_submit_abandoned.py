"""A ``bulkpipe submit -`` killed with SIGKILL mid-stream, a worker process running: within the
submit lease and a few seconds the job is terminal, failed with ``SubmitAbandoned``, and every
item it had stored has exactly one outcome (issue 8, point 1). On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bulkpipe import ErrorType, Job, JobStatus, Pipeline

from .multiproc import WorkerProcess, client, processed

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

BULKPIPE = Path(sys.executable).with_name("bulkpipe")
SUBMIT_LEASE = 2.0
#: The lease, one abandon sweep (bulkpipe.sweeps.ABANDON_SWEEP_INTERVAL) and some slack.
ENDS_WITHIN = SUBMIT_LEASE + 2.0 + 6.0


def stored_job(url: str) -> Job | None:
    async def go(p: Pipeline) -> Job | None:
        jobs = await p.list_jobs()
        return jobs[0] if jobs else None

    return client(url, go)


def outcome_ids(url: str, job_id: str) -> list[str]:
    async def go(p: Pipeline) -> list[str]:
        return [o.item_id async for o in p.outcomes(job_id)]

    return client(url, go)


def test_a_killed_submit_ends_failed_with_submit_abandoned(store_url: str, tmp_path: Path) -> None:
    worker = WorkerProcess(store_url, tmp_path, lease_timeout=2.0)
    submitter: subprocess.Popen[bytes] | None = None
    try:
        worker.ready()
        submitter = subprocess.Popen(
            [
                str(BULKPIPE),
                "submit",
                "sleepy",
                "-",
                "--store",
                store_url,
                "--submit-lease",
                str(SUBMIT_LEASE),
                "--batch-size",
                "10",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "BULKPIPE_STORE"},
        )
        assert submitter.stdin is not None
        # Enough lines for the writer to store more than one batch while stdin stays open:
        # the first batch at once, then a store call's worth (ADD_ITEMS) once that much is
        # read; the rest waits with the reader, which blocks on the open pipe.
        lines = "".join(json.dumps({"id": f"i{n}", "ms": 1}) + "\n" for n in range(1500))
        submitter.stdin.write(lines.encode())
        submitter.stdin.flush()
        deadline = time.monotonic() + 30
        job = stored_job(store_url)
        while job is None or job.total_items < 2:
            assert time.monotonic() < deadline, "the submit stored fewer than 2 batches"
            assert submitter.poll() is None, submitter.communicate()
            time.sleep(0.05)
            job = stored_job(store_url)
        submitter.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        submitter.communicate(timeout=10)
        assert submitter.returncode == -signal.SIGKILL
        assert not job.sealed

        async def until_terminal(p: Pipeline) -> Job:
            return await p.wait(job.id, timeout=ENDS_WITHIN)

        done = client(store_url, until_terminal)
        took = time.monotonic() - killed_at
    finally:
        if submitter is not None and submitter.poll() is None:
            submitter.kill()
            submitter.communicate(timeout=10)
        code = worker.terminate()
    assert code == 0, worker.err
    assert took <= ENDS_WITHIN
    assert done.status is JobStatus.FAILED
    assert done.sealed
    (error,) = [e for e in done.errors if e.error_type == ErrorType.SUBMIT_ABANDONED]
    assert error.error.startswith(
        f"the submitter stopped renewing its submit lease after {done.total_items:,} items"
    )
    assert done.total_items >= 2
    assert done.succeeded_items == done.total_items  # every stored item ran
    ids = outcome_ids(store_url, done.id)
    assert len(ids) == len(set(ids)) == done.total_items  # exactly one outcome each
    assert set(processed(tmp_path)) == set(ids)
