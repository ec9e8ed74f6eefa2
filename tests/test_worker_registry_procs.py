"""Real worker processes in the registry: a ``WorkerProcess`` (tests/procs/worker_main.py) shows
up in ``bulkpipe workers --json`` with its pid and processors, and is gone once it stops; a
SIGKILLed one stops being listed once its registration expires."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bulkpipe.cli import cli

from .multiproc import WorkerProcess

pytestmark = pytest.mark.subprocess

#: The worker's lease timeout: a heartbeat every 1/3 s, a registration living 1 s.
LEASE = 1.0


def listed(url: str) -> list[dict[str, Any]]:
    """``bulkpipe workers --json`` on ``url``."""
    result = CliRunner().invoke(cli, ["workers", "--json", "--store", url])
    assert result.exit_code == 0, result.output
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def wait_for(url: str, want: set[int], timeout: float = 15.0) -> list[dict[str, Any]]:
    """Poll the listing until the pids listed are ``want``."""
    deadline = time.monotonic() + timeout
    while True:
        found = listed(url)
        if {w["pid"] for w in found} == want:
            return found
        assert time.monotonic() < deadline, f"listed {found}, wanted pids {want}"
        time.sleep(0.1)


def test_a_worker_process_is_listed_while_it_serves(store_url: str, tmp_path: Path) -> None:
    worker = WorkerProcess(store_url, tmp_path, lease_timeout=LEASE)
    try:
        worker.ready()  # registered before it says so
        (info,) = listed(store_url)
        assert info["pid"] == worker.proc.pid
        assert "sleepy" in info["processors"]
        assert info["id"].split(":")[1] == str(worker.proc.pid)
    finally:
        code = worker.terminate()
    assert code == 0, worker.err
    assert listed(store_url) == []  # a graceful stop unregisters at once


def test_a_killed_worker_drops_out_when_its_registration_expires(
    store_url: str, tmp_path: Path
) -> None:
    killed = WorkerProcess(store_url, tmp_path, lease_timeout=LEASE)
    alive = WorkerProcess(store_url, tmp_path, lease_timeout=LEASE)
    try:
        killed.ready()
        alive.ready()
        wait_for(store_url, {killed.proc.pid, alive.proc.pid})
        pid = killed.proc.pid
        killed.kill()
        assert pid in {w["pid"] for w in listed(store_url)}  # nothing unregistered it
        started = time.monotonic()
        wait_for(store_url, {alive.proc.pid})
        assert time.monotonic() - started < 5 * LEASE  # within about its 1 s time to live
    finally:
        assert alive.terminate() == 0, alive.err
