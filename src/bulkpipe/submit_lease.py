"""The submit lease: how a job being submitted shows that its submitter is alive.

``Pipeline.submit`` creates the job with a submit lease (``JobStore.create_job(...,
submit_lease=...)``) and, while it writes the items, renews it every third of the lease
(:class:`SubmitLeases`: one task per pipeline renews all of its submits). Should the
submitter die or hang, the lease expires and a worker's sweep (``bulkpipe.sweeps``) seals the
job as it stands, marked abandoned: the items stored run, then the job ends failed with
``SubmitAbandoned``. A renewal that fails on a store error is retried (one WARNING each); a
renewal that answers that the job has ended or was sealed stops the writing.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import Any

import anyio
import attrs

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


@attrs.define(eq=False)
class HeldLease:
    """One submit being renewed: what the renewal learned once the job ended or was sealed."""

    scope: anyio.CancelScope
    on_ended: Callable[[], None] | None
    ended: Progress | None = None


class SubmitLeases:
    """Renews the submit leases of the jobs a pipeline is submitting, every third of the lease,
    from one task (:meth:`run`, which the pipeline starts) for all of them.

    A submit holds its lease while it writes (:meth:`held`). When a renewal answers that the
    job has ended or is sealed (a worker found the lease expired and sealed it as abandoned),
    ``on_ended`` is called (the writer's ``stop``, which ends the writing), else the block is
    cancelled; the :class:`HeldLease` then says what was learned. A renewal that fails on a
    store error is retried at the next round, with a WARNING."""

    def __init__(self, store: JobStore, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._held: dict[str, HeldLease] = {}
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    @contextlib.contextmanager
    def held(self, job_id: str, on_ended: Callable[[], None] | None = None) -> Iterator[HeldLease]:
        """Renew the job's submit lease while the block runs; the block is cancelled (and
        left quietly) if the job ends or is sealed meanwhile."""
        with anyio.CancelScope() as scope:
            lease = HeldLease(scope=scope, on_ended=on_ended)
            self._held[job_id] = lease
            try:
                yield lease
            finally:
                del self._held[job_id]

    async def run(self) -> None:
        """Renew every held lease each third of the lease, until :meth:`stop`."""
        every = self.lease_seconds / 3
        with anyio.CancelScope() as self._scope:
            if self._stopped:
                return
            while True:
                await anyio.sleep(every)
                for job_id, lease in list(self._held.items()):
                    await self._renew(job_id, lease, every)

    def stop(self) -> None:
        """End :meth:`run`."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def _renew(self, job_id: str, lease: HeldLease, every: float) -> None:
        try:
            progress = await self.store.renew_submit(job_id, self.lease_seconds)
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
            return
        if (progress.status.is_terminal or progress.sealed) and lease.ended is None:
            lease.ended = progress
            if lease.on_ended is not None:
                lease.on_ended()  # the writer stops itself, closing its source
            else:
                lease.scope.cancel()


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
