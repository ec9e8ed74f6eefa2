"""The real ``bulkpipe`` console script, as a user runs it: separate processes sharing a SQLite
store, signals, exit codes, and what reaches stdout and stderr when they are not terminals.

Each process costs about half a second of interpreter start, so these are few and broad.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import anyio
import pytest

from bulkpipe import JobStatus
from bulkpipe.demo import generate_nodes
from bulkpipe.stores import open_store

from .helpers import CREATED

BULKPIPE = Path(sys.executable).with_name("bulkpipe")
ENV = {key: value for key, value in os.environ.items() if key != "BULKPIPE_STORE"}

pytestmark = pytest.mark.subprocess


def bulkpipe(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the console script to its end."""
    return subprocess.run(
        [str(BULKPIPE), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def start(*args: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """The console script running in the background; killed on the way out if still running."""
    with subprocess.Popen(
        [str(BULKPIPE), *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The lines of ``stream`` as a thread reads them (so a test can wait with a timeout)."""
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=read, daemon=True).start()
    return found


def assert_one_error_line(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Exit 2 and exactly one ``bulkpipe: error:`` line on stderr, no traceback."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not CREATED.fullmatch(line)]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("bulkpipe: error: ")
    assert fragment in lines[0]


def test_console_script_is_installed() -> None:
    assert BULKPIPE.exists(), f"{BULKPIPE} is missing: install the project (pip install -e .)"


def test_demo_on_the_default_store_prints_no_progress_when_piped(tmp_path: Path) -> None:
    done = bulkpipe("demo", "--nodes", "300", "--latency", "0", "--retry-delay", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Top 10 opportunities" in done.stdout
    assert done.stderr == ""
    assert (tmp_path / "bulkpipe.db").exists()


def test_submit_then_a_worker_process_runs_it_and_stops_on_sigterm(tmp_path: Path) -> None:
    items = tmp_path / "nodes.jsonl"
    items.write_text("".join(json.dumps(node) + "\n" for node in generate_nodes(400)))
    with start(
        "worker", "--poll-interval", "0.1", "--log-level", "warning", cwd=tmp_path
    ) as worker:
        submitted = bulkpipe(
            "submit", "full_analysis", str(items), "--batch-size", "50", cwd=tmp_path
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        watched = bulkpipe("watch", job_id, "--interval", "0.1", cwd=tmp_path)
        assert watched.returncode == 0, watched.stderr
        assert f"job {job_id} completed: 400 items, 400 succeeded" in watched.stdout
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 0, stderr
    assert "stopped" in stderr
    exported = bulkpipe("results", job_id, "--format", "csv", cwd=tmp_path)
    assert exported.returncode == 0
    assert len(exported.stdout.splitlines()) == 401


def test_mistakes_get_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_one_error_line(bulkpipe("status", "nope", cwd=tmp_path), "job 'nope' not found")
    unreachable = "postgresql://postgres@127.0.0.1:1/x"
    assert_one_error_line(bulkpipe("list", "--store", unreachable, cwd=tmp_path), "127.0.0.1")
    assert_one_error_line(
        bulkpipe("submit", "scoring", "missing.jsonl", cwd=tmp_path), "missing.jsonl"
    )


async def _statuses(url: str) -> list[JobStatus]:
    store = open_store(url)
    await store.open()
    try:
        return [job.status for job in await store.list_jobs()]
    finally:
        await store.close()


def test_ctrl_c_stops_a_waiting_command_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with start("demo", "--nodes", "50", "--latency", "5", "--store", url, cwd=tmp_path) as demo:
        deadline = time.monotonic() + 30
        while not (tmp_path / "jobs.db").exists() or anyio.run(_statuses, url) != [
            JobStatus.PROCESSING
        ]:
            assert time.monotonic() < deadline, "the demo job never started"
            time.sleep(0.05)
        began = time.monotonic()
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=20)
    assert demo.returncode == 130, stderr
    assert stderr.strip() == "bulkpipe: error: interrupted"
    assert time.monotonic() - began < 5  # in-flight items were cancelled, not awaited
    assert anyio.run(_statuses, url) == [JobStatus.CANCELLED]  # the demo cancels its job


def test_serve_answers_http_until_sigterm(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with start("serve", "--port", "0", "--store", url, cwd=tmp_path) as server:
        assert server.stderr is not None
        lines = lines_of(server.stderr)
        address = None
        while address is None:
            line = lines.get(timeout=30)
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            address = found.group(0) if found else None
        with urllib.request.urlopen(f"{address}/jobs", timeout=10) as response:
            assert response.status == 200
            assert "application/json" in response.headers["content-type"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
