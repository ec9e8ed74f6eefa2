"""A worker's entry in the store's worker registry (``JobStore.register_worker`` and the rest).

A worker registers when it starts serving, with the processor names it serves, and is listed
(``Pipeline.workers()``, ``bulkpipe workers``, ``GET /workers``) while its registration is
live. Its heartbeat refreshes the registration every heartbeat interval, with a time to live
of :data:`TTL_BEATS` intervals: from the heartbeat thread on a store that has one (so a worker
whose event loop is blocked is still listed), else from the loop. A refresh that finds the
registration gone (deleted after a long outage) registers again. A graceful stop unregisters;
a killed worker stops being listed once its registration expires.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from .models import WorkerInfo
from .outage import StoreOutage, store_failure
from .store import JobStore

if TYPE_CHECKING:
    from .heartbeat import HeartbeatThread

log = logging.getLogger("bulkpipe.worker")

#: A registration lives this many heartbeat intervals after the worker was last seen.
TTL_BEATS = 3

#: Seconds a graceful stop waits for the store to take the unregistration.
UNREGISTER_WAIT = 5.0


class Registration:
    """One worker's registration: what it says about the worker, and the store calls that
    keep it (store failures are noted in ``outage``, never raised)."""

    def __init__(
        self, store: JobStore, worker_id: str, interval: float, outage: StoreOutage
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.ttl = TTL_BEATS * interval
        self.outage = outage
        self.processors: list[str] = []
        self.started_at = datetime.now(UTC)
        self._key = object()  # this registration's key in the outage record
        self._registered = False  # the last registering call succeeded

    def info(self, in_flight: int = 0) -> WorkerInfo:
        """The worker as it registers now."""
        return WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            processors=self.processors,
            started_at=self.started_at,
            last_seen=datetime.now(UTC),
            in_flight=in_flight,
        )

    def serves(self, names: set[str]) -> bool:
        """Set the processor names served; return whether they changed."""
        wanted = sorted(names)
        changed, self.processors = wanted != self.processors, wanted
        return changed

    async def register(self, in_flight: int = 0) -> None:
        """Register (again); a store that does not answer is noted, and the next heartbeat
        registers again."""
        self._registered = False
        try:
            await self.store.register_worker(self.info(in_flight), self.ttl)
        except Exception as exc:
            if not store_failure(exc):
                raise
            self.outage.failed("registering the worker", exc, self._key)
            return
        self._registered = True
        self.outage.answered(self._key)

    async def beat(self, names: set[str], in_flight: int, thread: HeartbeatThread | None) -> None:
        """Once a heartbeat, on the loop: register again when the processor names served
        changed (one was registered since) or the last registering failed, else refresh here
        or hand ``in_flight`` to the heartbeat thread, which refreshes."""
        if self.serves(names) or not self._registered:
            await self.register(in_flight)
        elif thread is None:
            await self.refresh(in_flight)
        else:
            thread.in_flight = in_flight

    async def refresh(self, in_flight: int) -> None:
        """Refresh the registration from the event loop (a store without a heartbeat thread)."""
        try:
            seen = await self.store.worker_seen(self.worker_id, in_flight, self.ttl)
        except Exception as exc:
            if not store_failure(exc):
                raise
            self.outage.failed("refreshing the worker's registration", exc, self._key)
            return
        self.outage.answered(self._key)
        if not seen:
            await self.register(in_flight)

    async def unregister(self) -> None:
        """Remove the registration (a graceful stop), waiting at most
        :data:`UNREGISTER_WAIT` seconds; on failure it simply expires."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(UNREGISTER_WAIT):
            try:
                await self.store.unregister_worker(self.worker_id)
            except Exception as exc:
                if not store_failure(exc):
                    raise
                log.debug("worker %s: unregistering failed: %s", self.worker_id, exc)
        self.outage.forget(self._key)
