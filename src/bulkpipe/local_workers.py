"""A :class:`bulkpipe.Pipeline`'s in-process workers: serving again after a failure."""

from __future__ import annotations

import logging
import random
import time

import anyio
from anyio.abc import TaskStatus

from .outage import FIRST_DELAY, MAX_DELAY
from .retry import backoff_delay
from .worker import Worker

log = logging.getLogger("bulkpipe.pipeline")


async def supervise(
    worker: Worker, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve with ``worker`` until the pipeline stops; should it fail once serving (a bug: a
    store that does not answer is waited out inside the worker), log it and serve again after
    a pause that grows while it keeps failing, so that the jobs and the HTTP API of this
    process go on."""
    status = _Started(task_status)
    failures = 0
    rng = random.Random()
    while True:
        began = time.monotonic()
        try:
            await worker.serve(task_status=status)
            return
        except Exception:
            if not status.done or worker.gave_up:
                raise
            failures = 1 if time.monotonic() - began > 60 else failures + 1
            delay = backoff_delay(failures, FIRST_DELAY, MAX_DELAY, rng)
            log.exception(
                "in-process worker %s failed; serving again in %.1f s", worker.worker_id, delay
            )
        await anyio.sleep(delay)


class _Started:
    """A task status that passes on only the first ``started()`` (a worker served again
    after a failure starts again)."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started(value)
