"""The submit lease: how a job being submitted shows that its submitter is alive.

``Pipeline.submit`` creates the job with a submit lease (``JobStore.create_job(...,
submit_lease=...)``) and, while it writes the items, renews it every third of the lease
(:func:`write_under_lease`). Should the submitter die or hang, the lease expires and a worker's
sweep (``bulkpipe.sweeps``) seals the job as it stands, marked abandoned: the items stored run,
then the job ends failed with ``SubmitAbandoned``. A renewal that fails on a store error is
retried (one WARNING each); a renewal that answers that the job has ended or was sealed stops
the writing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

import anyio

from .errors import InvalidArgument, JobNotFound, SubmitLeaseLost
from .outage import store_failure
from .store import JobStore, Progress

log = logging.getLogger("bulkpipe.pipeline")

#: The shortest and longest submit lease ``Pipeline`` takes, in seconds.
MIN_SUBMIT_LEASE, MAX_SUBMIT_LEASE = 1.0, 3600.0


def check_submit_lease(seconds: float) -> float:
    """``seconds`` as a float if it is a valid submit lease; :class:`InvalidArgument` if not."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or not MIN_SUBMIT_LEASE <= seconds <= MAX_SUBMIT_LEASE
    ):
        raise InvalidArgument(
            f"submit_lease must be {MIN_SUBMIT_LEASE:g} to {MAX_SUBMIT_LEASE:g} seconds, not "
            f"{seconds!r}; it is how long a job being submitted outlives a submitter that "
            "stopped renewing it"
        )
    return float(seconds)


async def write_under_lease(
    store: JobStore,
    job_id: str,
    lease_seconds: float,
    write: Callable[[], Awaitable[None]],
    on_ended: Callable[[], None] | None = None,
) -> Progress | None:
    """Run ``write()`` while renewing the job's submit lease every third of it.

    When a renewal answers that the job has ended or is sealed (a worker found the lease
    expired and sealed it as abandoned), call ``on_ended`` (the writer's ``stop``) and cancel
    ``write``; return that progress. None once ``write`` has returned. What ``write`` raises
    is raised."""
    ended: Progress | None = None
    failure: Exception | None = None

    async def renew(scope: anyio.CancelScope) -> None:
        nonlocal ended
        every = lease_seconds / 3
        while True:
            await anyio.sleep(every)
            try:
                progress = await store.renew_submit(job_id, lease_seconds)
            except JobNotFound:
                return  # deleted meanwhile: the writer learns it from its next call
            except Exception as exc:
                if not store_failure(exc):
                    raise
                log.warning(
                    "job %s: renewing its submit lease failed (%s: %s); trying again in %.1f s",
                    job_id,
                    type(exc).__name__,
                    exc,
                    every,
                )
                continue
            if progress.status.is_terminal or progress.sealed:
                ended = progress
                if on_ended is not None:
                    on_ended()
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(renew, tg.cancel_scope)
        try:
            await write()
        except Exception as exc:
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return ended


async def lease_lost(store: JobStore, job_id: str, read: int) -> SubmitLeaseLost | None:
    """After writing the items failed: the error to raise if that is because a worker sealed
    the job as abandoned meanwhile (its lease expired), else None (also if the store cannot
    tell now)."""
    try:
        progress = await store.progress(job_id)
    except Exception:
        return None
    return SubmitLeaseLost(job_id, progress.total, read) if progress.abandoned else None


async def close_unread(stream: Iterable[Any] | AsyncIterable[Any]) -> None:
    """Close a source that will not be read (an idempotent repeat): an async generator's
    ``aclose()``, a generator's ``close()``; other iterables are left alone."""
    aclose = getattr(stream, "aclose", None)
    if callable(aclose):
        await aclose()
        return
    close = getattr(stream, "close", None)
    if callable(close) and hasattr(stream, "gi_frame"):
        close()
