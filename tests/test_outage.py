"""Real processes ride out a 25 s PostgreSQL outage (issue 13, finding 3).

A loopback TCP proxy (``tests/outage_support.py``) stands in front of the shared PostgreSQL
server; going "down" it closes every connection and refuses new ones, which is what the
processes see when the server goes away. The shared server itself is never touched. Two
``worker_main.py`` processes, then ``bulkpipe serve --workers 1``, are pointed at the proxy.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bulkpipe import JobStatus
from bulkpipe.demo import generate_nodes

from .conftest import POSTGRES_URL, drop_prefixed, postgres_or_skip
from .multiproc import WorkerProcess
from .outage_support import TcpProxy, tcp_proxy
from .pg import unique_prefix, with_params
from .test_cli_subprocess import lines_of, start
from .test_multiprocess import get, outcome_ids, submit, wait_terminal

pytestmark = [pytest.mark.subprocess, pytest.mark.slow, pytest.mark.postgres]

OUTAGE = 25.0
UNREACHABLE = "the store is unreachable"
BACK = "the store is reachable again"


@pytest.fixture
def prefix() -> Iterator[str]:
    postgres_or_skip()
    name = unique_prefix()
    yield name
    drop_prefixed(name)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    parts = urlsplit(POSTGRES_URL)
    with tcp_proxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as running:
        yield running


def proxied(proxy: TcpProxy, prefix: str) -> str:
    """The PostgreSQL URL, through the proxy, with the test's table prefix."""
    parts = urlsplit(POSTGRES_URL)
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}127.0.0.1:{proxy.port}"
    return with_params(parts._replace(netloc=netloc).geturl(), prefix=prefix)


def test_two_workers_survive_an_outage_and_finish_the_job(
    tmp_path: Path, prefix: str, proxy: TcpProxy
) -> None:
    direct = with_params(POSTGRES_URL, prefix=prefix)
    n = 3000
    # Creates the tables before the workers open the store.
    job_id = submit(direct, 0, 1, allow_unserved=True)
    logs = [tmp_path / f"worker{i}.txt" for i in range(2)]  # not *.log: those count items
    workers = [
        WorkerProcess(
            proxied(proxy, prefix), tmp_path, env={"LOG_LEVEL": "info", "LOG_FILE": str(log)}
        )
        for log in logs
    ]
    try:
        for worker in workers:
            worker.ready()
        job_id = submit(direct, n, 40, batch_size=10, concurrency=1)
        deadline = time.monotonic() + 60
        while get(direct, job_id).processed_items < n // 5:
            assert time.monotonic() < deadline, "the job did not get going"
            time.sleep(0.1)
        proxy.go_down()
        time.sleep(OUTAGE)
        alive = [w.proc.poll() is None for w in workers]
        proxy.come_back()
        assert alive == [True, True], "a worker exited during the outage"
        assert get(direct, job_id).processed_items < n, "the outage was not in the middle"
        job = wait_terminal(direct, job_id, timeout=120)
        assert [w.proc.poll() for w in workers] == [None, None]
    finally:
        codes = [w.terminate() for w in workers]
    errs = [w.err for w in workers]
    assert codes == [0, 0], errs
    assert job.status is JobStatus.COMPLETED
    assert (job.processed_items, job.succeeded_items) == (n, n)
    counts = Counter(outcome_ids(direct, job_id))
    assert len(counts) == n
    assert set(counts.values()) == {1}
    for log in logs:  # each worker logs the outage once and its end once
        text = log.read_text()
        assert text.count(UNREACHABLE) == 1, text
        assert text.count(BACK) == 1, text


def _request(
    url: str, body: dict[str, Any] | None = None, timeout: float = 60
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _lower(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _lower(exc.headers), json.loads(exc.read())


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _wait_completed(address: str, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, job = _request(f"{address}/jobs/{job_id}")
        if status == 200 and job["status"] == "completed":
            return job
        assert time.monotonic() < deadline, (status, job)
        time.sleep(0.2)


def test_serve_answers_503_during_an_outage_and_recovers(
    tmp_path: Path, prefix: str, proxy: TcpProxy
) -> None:
    pytest.importorskip("uvicorn")
    url = proxied(proxy, prefix)
    body = {"processor": "scoring", "items": list(generate_nodes(200))}
    with start("serve", "--port", "0", "--workers", "1", "--store", url, cwd=tmp_path) as server:
        assert server.stderr is not None
        lines = lines_of(server.stderr)
        address = None
        while address is None:
            found = re.search(r"http://127\.0\.0\.1:\d+", lines.get(timeout=30))
            address = found.group(0) if found else None
        status, _, created = _request(f"{address}/jobs", body)
        assert status == 201, created
        _wait_completed(address, created["id"], 30)

        proxy.go_down()
        began = time.monotonic()
        status, headers, problem = _request(f"{address}/jobs")
        assert time.monotonic() - began < OUTAGE, "the answer came after the outage"
        assert status == 503, problem
        assert int(headers["retry-after"]) > 0
        assert problem["status"] == 503
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - began)))
        proxy.come_back()

        deadline = time.monotonic() + 40
        while (status := _request(f"{address}/jobs")[0]) != 200:
            assert time.monotonic() < deadline, f"still {status} after the store came back"
            time.sleep(0.5)
        status, _, created = _request(f"{address}/jobs", body)
        assert status == 201, created
        job = _wait_completed(address, created["id"], 40)  # the in-process worker survived
        assert job["processed_items"] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        time.sleep(0.5)  # the reading thread takes the last lines
        rest = []
        while not lines.empty():
            rest.append(lines.get())
    assert not any("Traceback" in line for line in rest), "".join(rest)
