"""A counting gate whose waiters are served highest priority first (``max_in_flight``)."""

from __future__ import annotations

import heapq
import itertools

import anyio

from .errors import InvalidArgument


class PriorityGate:
    """Admits at most ``capacity`` holders; when full, the highest-priority waiter goes next
    (first come, first served among equals)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InvalidArgument(
                f"max_in_flight must be at least 1, not {capacity}; pass None for no limit "
                "across jobs"
            )
        self.capacity = capacity
        self._free = capacity
        self._waiters: list[tuple[int, int, anyio.Event]] = []
        self._order = itertools.count()

    @property
    def in_use(self) -> int:
        """How many holders there are now."""
        return self.capacity - self._free

    def contended(self, priority: int) -> bool:
        """Whether a waiter of at least ``priority`` is queued (so a holder should yield)."""
        return bool(self._waiters) and -self._waiters[0][0] >= priority

    async def acquire(self, priority: int) -> None:
        """Wait for a place."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        event = anyio.Event()
        entry = (-priority, next(self._order), event)
        heapq.heappush(self._waiters, entry)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # the place was handed over as we were cancelled
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        """Give a place back, straight to the best waiter if there is one."""
        if self._waiters:
            heapq.heappop(self._waiters)[2].set()
        else:
            self._free += 1


class GateSlot:
    """One holder's place at a :class:`PriorityGate` (a lane's, at one priority): it knows
    whether it holds a place, so the place is given back exactly once however its holder ends."""

    __slots__ = ("gate", "held", "priority")

    def __init__(self, gate: PriorityGate, priority: int) -> None:
        self.gate = gate
        self.priority = priority
        #: Whether this slot holds a place at the gate now.
        self.held = False

    async def acquire(self) -> None:
        """Wait for a place (at once if this slot holds one already)."""
        if not self.held:
            await self.gate.acquire(self.priority)
            self.held = True

    def release(self) -> None:
        """Give the place back, if this slot holds one."""
        if self.held:
            self.held = False
            self.gate.release()
