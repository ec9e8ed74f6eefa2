"""The store-wide chores of a serving :class:`~bulkpipe.Worker`: :class:`Sweeps`.

Every serving worker does them from its heartbeat, so they go on as long as one worker runs:

- **abandoned submits**, every :data:`ABANDON_SWEEP_INTERVAL` seconds: a job whose submit lease
  expired (its submitter died or hung) is sealed as it stands and marked abandoned
  (``JobStore.abandon_expired_submits``); its stored items still run, then the lifecycle ends
  it failed with ``SubmitAbandoned`` (at once when nothing is left to run);
- **orphans**, every ``lease_timeout``: a sealed job whose every batch is done but whose final
  status was never written (the worker that recorded the last batch died first) is settled.

A sweep whose store does not answer notes the outage and returns; the next one tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection

import anyio

from .lifecycle import Lifecycle
from .models import JobStatus
from .outage import StoreOutage, store_failure
from .store import JobStore

log = logging.getLogger("bulkpipe.worker")

#: Seconds between two looks for expired submit leases (so an abandoned submit ends within its
#: lease plus about this, and the heartbeat's pace).
ABANDON_SWEEP_INTERVAL = 2.0

#: Jobs sealed as abandoned per store call.
_ABANDON_PAGE = 100
_ORPHAN_PAGE = 100

_Sweep = Callable[[], Awaitable[None]]


class Sweeps:
    """The chores of one worker (see the module docstring); :meth:`run_due` runs those due.

    ``running`` is the worker's live set of jobs it has a runner for (left to those runners).
    """

    def __init__(
        self,
        who: str,
        store: JobStore,
        lifecycle: Lifecycle,
        outage: StoreOutage,
        running: Collection[str],
        orphan_interval: float,
    ) -> None:
        self.who = who
        self.store = store
        self.lifecycle = lifecycle
        self.outage = outage
        self.running = running
        self.orphan_interval = orphan_interval
        now = anyio.current_time()
        self._next_orphans = now + orphan_interval
        self._next_abandon = now + ABANDON_SWEEP_INTERVAL

    async def run_due(self) -> None:
        """Run the sweeps whose time has come."""
        if anyio.current_time() >= self._next_abandon:
            self._next_abandon = anyio.current_time() + ABANDON_SWEEP_INTERVAL
            await self._guarded("looking for abandoned submits", self.end_abandoned)
        if anyio.current_time() >= self._next_orphans:
            self._next_orphans = anyio.current_time() + self.orphan_interval
            await self._guarded("looking for unsettled jobs", self.settle_orphans)

    async def _guarded(self, what: str, sweep: _Sweep) -> None:
        try:
            await sweep()
        except Exception as exc:
            if not store_failure(exc):
                raise
            self.outage.failed(what, exc)
            return
        self.outage.answered()

    async def end_abandoned(self) -> None:
        """Seal the jobs whose submit lease expired, as abandoned, and end those with nothing
        left to run (the runners of the others end them after their last batch)."""
        while True:
            found = await self.store.abandon_expired_submits(_ABANDON_PAGE)
            for job_id, progress in found:
                log.warning(
                    "%s: job %s was abandoned by its submitter (its submit lease expired) after "
                    "%d items were stored; it is sealed, and ends failed once they have run",
                    self.who,
                    job_id,
                    progress.total,
                )
                await self.lifecycle.settle(job_id, progress)
            if len(found) < _ABANDON_PAGE:
                return

    async def settle_orphans(self) -> None:
        """Settle sealed jobs whose every batch is done but whose final status was never
        written (the worker that recorded the last batch died before it could write it)."""
        for status in (JobStatus.PROCESSING, JobStatus.PENDING):
            offset = 0
            while True:
                jobs = await self.store.list_jobs(status=status, limit=_ORPHAN_PAGE, offset=offset)
                for job in jobs:
                    if job.id in self.running or not job.sealed:
                        continue
                    if job.processed_items < job.total_items:
                        continue
                    progress = await self.store.progress(job.id)
                    if await self.lifecycle.settle(job.id, progress) is not None:
                        log.info("%s: ended job %s left unsettled", self.who, job.id)
                if len(jobs) < _ORPHAN_PAGE:
                    break
                offset += _ORPHAN_PAGE
