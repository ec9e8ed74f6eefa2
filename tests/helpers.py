"""Helpers shared by the engine tests: processors that keep count, small waits."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from bulkpipe import ItemOutcome, JobOptions, Pipeline

#: Options that keep tests quick: no backoff pause, frequent progress writes.
QUICK = JobOptions(retry_delay=0.0, retry_delay_max=0.0, progress_interval=0.05)

#: The line ``bulkpipe submit`` prints on stderr as soon as its job exists.
CREATED = re.compile(r"job [0-9a-f]{32} created")

#: Upper bound on any one wait in a test; generous, since the test machines are noisy.
PATIENCE = 10.0


def make_items(count: int, prefix: str = "item-") -> list[dict[str, Any]]:
    """``count`` items with ids ``prefix0``, ``prefix1``... and their index under ``n``."""
    return [{"id": f"{prefix}{n}", "n": n} for n in range(count)]


def quick(**changes: Any) -> JobOptions:
    """:data:`QUICK` with some options changed."""
    return JobOptions.model_validate({**QUICK.model_dump(), **changes})


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    what: str,
    timeout: float = PATIENCE,
) -> None:
    """Poll ``check`` until it is true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = anyio.current_time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.01)


async def outcome_map(pipeline: Pipeline, job_id: str) -> dict[str, ItemOutcome]:
    """Every outcome of the job by item id; fails if an item has more than one."""
    found: dict[str, ItemOutcome] = {}
    async for outcome in pipeline.outcomes(job_id):
        assert outcome.item_id not in found, f"two outcomes for {outcome.item_id}"
        found[outcome.item_id] = outcome
    return found


class Tracker:
    """Counts a processor's calls and the items it has in flight, remembering the peak."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self.started: list[str] = []
        self.finished: list[tuple[str, float]] = []  # (item id, time.monotonic())
        self.cancelled: list[str] = []

    @contextmanager
    def running(self, item_id: str) -> Iterator[None]:
        """Count one call of ``item_id`` while the block runs."""
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.append(item_id)
        ok = False
        try:
            yield
            ok = True
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(item_id)
            raise
        finally:
            self.in_flight -= 1
            if ok:
                self.finished.append((item_id, time.monotonic()))
