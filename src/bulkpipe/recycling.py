"""A worker's recycling limits: ``max_items`` (items claimed, counted per batch) and
``max_memory`` (resident memory, checked once a heartbeat).

:class:`Recycling` keeps the counts and decides when a limit is reached; the worker then
claims nothing more, lets its open batches finish and stops (``Worker._drain``), and
:attr:`Recycling.limit_reached` tells its caller which limit it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .errors import InvalidArgument
from .watchdog import resident_memory

log = logging.getLogger("bulkpipe.worker")


class Recycling:
    """The ``max_items`` and ``max_memory`` limits of one worker (None: no limit);
    ``reached`` is called once, when either is reached (the worker wakes its claim loop)."""

    def __init__(
        self,
        worker_id: str,
        max_items: int | None,
        max_memory: int | None,
        reached: Callable[[], None],
    ) -> None:
        if max_items is not None and max_items < 1:
            raise InvalidArgument(
                f"max_items must be 1 or more, or None, not {max_items}; pass None for a "
                "worker that never recycles on items"
            )
        if max_memory is not None and max_memory < 1:
            raise InvalidArgument(
                f"max_memory must be a positive number of bytes, or None, not {max_memory}; "
                "e.g. 2 * 1024**3 for 2 GiB"
            )
        self.worker_id = worker_id
        self.max_items = max_items
        self.max_memory = max_memory
        self._reached = reached
        #: Items of the batches claimed so far (counted per batch, for ``max_items``).
        self.items_claimed = 0
        #: ``"max_items"`` or ``"max_memory"`` once that limit was reached, else None.
        self.limit_reached: str | None = None
        #: Whether a limit was reached and the worker is to claim nothing more.
        self.draining = False

    def claimed(self, items: int) -> None:
        """A batch of ``items`` items was claimed."""
        self.items_claimed += items
        if self.max_items is not None and self.items_claimed >= self.max_items:
            self.reach("max_items", f"{self.items_claimed} items claimed")

    def check_memory(self) -> None:
        """Once a heartbeat: recycle when resident memory reached ``max_memory``."""
        if self.max_memory is not None:
            rss = resident_memory()
            if rss is not None and rss >= self.max_memory:
                self.reach("max_memory", f"resident memory {rss / 2**20:.0f} MB")

    def reach(self, limit: str, what: str) -> None:
        """``limit`` was reached (``what`` says how, for the log)."""
        if self.limit_reached is not None:
            return
        if limit == "max_memory" and not self.items_claimed:
            # Over the limit before any work: recycling would only start over, again and again.
            log.warning(
                "worker %s: max_memory is below this worker's memory before any work (%s); "
                "not recycling for it: raise the limit",
                self.worker_id,
                what,
            )
            self.max_memory = None
            return
        self.limit_reached = limit
        self.draining = True
        log.info(
            "worker %s: %s reached (%s); claiming nothing more, finishing open batches",
            self.worker_id,
            limit,
            what,
        )
        self._reached()
