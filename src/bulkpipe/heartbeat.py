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

The thread also refreshes the worker's registration (``bulkpipe.registration``) every
interval, with the number of items in flight that the loop hands it (:attr:`in_flight`), so a
worker whose loop is blocked is still listed as live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Collection
from typing import NamedTuple, Protocol

from .models import WorkerInfo
from .store import JobStore, Lease

log = logging.getLogger("bulkpipe.worker")


class Renewals(NamedTuple):
    """What the heartbeat thread learned since the loop last asked (``HeartbeatThread.take``)."""

    lost: list[Lease]
    ended: set[str]
    error: BaseException | None  # the last failure, if the last store call failed
    started: float  # when the failed call started (time.monotonic())
    answered: bool  # whether the last store call succeeded


class Registered(Protocol):
    """What the thread needs of a worker's registration (``bulkpipe.registration``)."""

    @property
    def ttl(self) -> float: ...

    def info(self, in_flight: int = 0) -> WorkerInfo: ...


class HeartbeatThread:
    """Renews a worker's leases from a daemon thread with its own store connection.

    ``store`` must be a fresh, unopened store object (the thread opens and closes it on its own
    loop); ``interval`` is the seconds between renewals. With ``registration`` it refreshes the
    worker's registration too, as often.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        worker_id: str,
        lease_seconds: float,
        interval: float,
        registration: Registered | None = None,
    ) -> None:
        self.store = store
        self.registration = registration
        #: Items in flight on the worker, set by the loop once a tick (one int: no lock).
        self.in_flight = 0
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._lock = threading.Lock()
        self._held: dict[Lease, bool] = {}  # lease -> held since the last reconcile
        self._lost: list[Lease] = []
        self._ended: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()
        # The last store call's result, for the worker's outage record (it logs, not us).
        self._error: BaseException | None = None
        self._started = 0.0
        self._answered = False
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
            self._held.setdefault(lease, True)

    def reconcile(self, current: Collection[Lease]) -> None:
        """``current`` are the leases the runners hold now: keep renewing those, and stop
        renewing every other one, except those held since the last call (a runner may not
        list a batch it was just handed yet). A lease a runner never listed (it closed or
        dropped the batch at once) is dropped too, or it would be renewed for ever."""
        with self._lock:
            kept = {lease: False for lease, fresh in self._held.items() if fresh}
            kept.update(dict.fromkeys(current, False))
            self._held = kept

    def take(self) -> Renewals:
        """Lost leases, ended jobs and whether the store answered, since the last call."""
        with self._lock:
            news = Renewals(self._lost, self._ended, self._error, self._started, self._answered)
            self._lost, self._ended = [], set()
            self._error, self._answered = None, False
        return news

    def _result(self, error: BaseException | None, started: float) -> None:
        with self._lock:
            self._error, self._started, self._answered = error, started, error is None

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
                started = time.monotonic()
                try:
                    await self.store.open()
                    break
                except Exception as exc:
                    self._result(exc, started)
            while not await self._wait():
                await self._renew()
                await self._refresh()
        finally:
            try:
                await self.store.close()
            except Exception:
                log.debug("%s: closing the heartbeat store failed", self.worker_id, exc_info=True)

    async def _wait(self) -> bool:
        """Sleep for one interval; return whether the thread is to stop."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.interval)
        return self._stop.is_set() or self._stopping.is_set()

    async def _refresh(self) -> None:
        """Refresh the worker's registration (registering again if it is gone)."""
        registration = self.registration
        if registration is None:
            return
        started = time.monotonic()
        in_flight = self.in_flight
        try:
            if not await self.store.worker_seen(self.worker_id, in_flight, registration.ttl):
                await self.store.register_worker(registration.info(in_flight), registration.ttl)
        except Exception as exc:
            self._result(exc, started)
            return
        with self._lock:
            if self._error is None:  # a renewal that failed this tick stays the news
                self._answered = True

    async def _renew(self) -> None:
        with self._lock:
            leases = list(self._held)
        if not leases:
            return
        started = time.monotonic()
        try:
            result = await self.store.renew_leases(self.worker_id, leases, self.lease_seconds)
        except Exception as exc:
            self._result(exc, started)
            return
        self._result(None, started)
        self.renewals += 1
        if not result.lost and not result.ended_jobs:
            return
        with self._lock:
            for lease in result.lost:
                self._held.pop(lease, None)
            self._lost.extend(result.lost)
            self._ended |= result.ended_jobs
