"""Lease renewal on a thread of its own, safe from a blocked event loop.

A worker renews its leases every ``min(lease_timeout / 3, 1)`` seconds. Done on the worker's
event loop, a processor that blocks the loop (``time.sleep`` in ``async def``) also stops the
renewals: the leases expire, other workers claim the batches again and items run twice (a job
can livelock). :class:`HeartbeatThread` renews from a daemon thread that runs its own asyncio
loop with its own store object (:meth:`bulkpipe.store.SupportsHeartbeatStore.heartbeat_store`),
so a merely slow processor keeps its leases.

The loop and the thread share only a lock-guarded set of held leases: the worker adds a lease
when it claims a batch (:meth:`hold`) and, once a tick, hands the leases its runners hold
(:meth:`reconcile`), which drops the batches they closed. A lease is renewed until the loop
drops it or the store says it is lost; the thread hands lost leases and ended jobs back
(:meth:`take`) for the loop to act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Collection

from .store import JobStore, Lease

log = logging.getLogger("bulkpipe.worker")


class RenewalState:
    """Logs a heartbeat's store state changes once each (unreachable, reachable again)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reachable = True

    def failed(self, exc: BaseException, every: float) -> None:
        if self.reachable:
            self.reachable = False
            log.warning(
                "%s: cannot renew leases, the store is unreachable (%s: %s); trying again "
                "every %.1f s (leases expire if it stays down longer than the lease timeout)",
                self.name,
                type(exc).__name__,
                exc,
                every,
            )

    def succeeded(self) -> None:
        if not self.reachable:
            self.reachable = True
            log.warning("%s: the store is reachable again; leases renewed", self.name)


class HeartbeatThread:
    """Renews a worker's leases from a daemon thread with its own store connection.

    ``store`` must be a fresh, unopened store object (the thread opens and closes it on its own
    loop); ``interval`` is the seconds between renewals.
    """

    def __init__(
        self, store: JobStore, *, worker_id: str, lease_seconds: float, interval: float
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._lock = threading.Lock()
        self._held: dict[Lease, bool] = {}  # lease -> seen in a runner since it was claimed
        self._lost: list[Lease] = []
        self._ended: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._state = RenewalState(f"worker {worker_id} (heartbeat thread)")
        self._thread = threading.Thread(
            target=self._main, name=f"bulkpipe heartbeat {worker_id}", daemon=True
        )
        #: Successful renewals so far (for tests).
        self.renewals = 0

    # -- the event loop's side --------------------------------------------------------------

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def hold(self, lease: Lease) -> None:
        """Renew ``lease`` from now on (a batch was just claimed)."""
        with self._lock:
            self._held.setdefault(lease, False)

    def reconcile(self, current: Collection[Lease]) -> None:
        """``current`` are the leases the runners hold now: keep renewing those, and stop
        renewing the ones a runner held before and has closed since."""
        with self._lock:
            for lease in current:
                self._held[lease] = True
            for lease in [lease for lease, seen in self._held.items() if seen]:
                if lease not in current:
                    del self._held[lease]

    def take(self) -> tuple[list[Lease], set[str]]:
        """Lost leases and ended jobs learned since the last call."""
        with self._lock:
            lost, self._lost = self._lost, []
            ended, self._ended = self._ended, set()
        return lost, ended

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for it (blocking: call it in a
        thread). A thread still inside a store call is left to end by itself (a daemon)."""
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed already
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopping.is_set():
            return
        try:
            while not await self._wait():
                try:
                    await self.store.open()
                    break
                except Exception as exc:
                    self._state.failed(exc, self.interval)
            while not await self._wait():
                await self._renew()
        finally:
            try:
                await self.store.close()
            except Exception:
                log.debug("%s: closing the heartbeat store failed", self._state.name, exc_info=True)

    async def _wait(self) -> bool:
        """Sleep for one interval; return whether the thread is to stop."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.interval)
        return self._stop.is_set() or self._stopping.is_set()

    async def _renew(self) -> None:
        with self._lock:
            leases = list(self._held)
        if not leases:
            return
        try:
            result = await self.store.renew_leases(self.worker_id, leases, self.lease_seconds)
        except Exception as exc:
            self._state.failed(exc, self.interval)
            return
        self._state.succeeded()
        self.renewals += 1
        if not result.lost and not result.ended_jobs:
            return
        with self._lock:
            for lease in result.lost:
                self._held.pop(lease, None)
            self._lost.extend(result.lost)
            self._ended |= result.ended_jobs
