"""Helpers for tests that run real worker processes (``tests/procs/worker_main.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio

from bulkpipe import Pipeline
from bulkpipe.stores import open_store

WORKER = Path(__file__).parent / "procs" / "worker_main.py"

T = TypeVar("T")


def client(url: str, fn: Callable[[Pipeline], Awaitable[T]]) -> T:
    """Run ``fn`` with a client-only pipeline (no in-process workers) on ``url``."""

    async def main() -> T:
        async with Pipeline(store=open_store(url), workers=0) as pipeline:
            return await fn(pipeline)

    return anyio.run(main)


class WorkerProcess:
    """One ``worker_main.py`` process; ``ready()`` waits until it has started."""

    def __init__(
        self,
        url: str,
        log_dir: Path,
        *,
        lease_timeout: float = 2.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = {
            **os.environ,
            "LEASE_TIMEOUT": str(lease_timeout),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), url, str(log_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ready(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise AssertionError(f"worker did not start: {line!r} {self.err}")

    err = ""

    def _reap(self, timeout: float) -> None:
        try:
            _, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.err = self.proc.communicate(timeout=10)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self._reap(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit (SIGKILL after ``timeout``), return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self._reap(timeout)
        return self.proc.returncode


def processed(log_dir: Path) -> Counter[str]:
    """How many times each item id was processed, over every worker's log."""
    counts: Counter[str] = Counter()
    for log in log_dir.glob("*.log"):
        counts.update(line for line in log.read_text().splitlines() if line)
    return counts
