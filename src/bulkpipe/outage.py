"""Riding out a store outage: one record of whether the store answers, shared by a worker and
its job runners, that logs each change once and paces the retries."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from .errors import BulkpipeError, StoreError
from .retry import backoff_delay

log = logging.getLogger("bulkpipe.worker")

T = TypeVar("T")

#: The first pause after a failed store call, and the most a pause grows to (seconds).
FIRST_DELAY = 0.1
MAX_DELAY = 5.0


def store_failure(exc: Exception) -> bool:
    """Whether ``exc`` from a store call means "the store did not answer; try again later":
    a :class:`StoreError`, or an error that is not bulkpipe's at all (a driver's, leaked).
    Other bulkpipe errors (an unknown job, a bad argument) are answers, not outages."""
    return isinstance(exc, StoreError) or not isinstance(exc, BulkpipeError)


class StoreOutage:
    """Whether a worker's store answers, since when it does not, and how long to wait.

    Every loop of the worker that calls the store reports each failure (:meth:`failed`) and each
    success (:meth:`answered`). The first failure while the store answered logs one WARNING
    with the error; the store is back, with one INFO saying how long it was down, once a call
    succeeds and no retrying loop (one passing a ``key``) is still failing, so that a call
    that keeps failing while others succeed logs once, not at every try. Each loop counts its
    own consecutive failures and sleeps :meth:`delay` of them between tries.
    """

    def __init__(self, who: str, store: object, give_up_after: float | None) -> None:
        self.who = who
        self.store = store
        self.give_up_after = give_up_after
        self.down_since: float | None = None  # time.monotonic() of the first failure
        self.last_error: BaseException | None = None
        self._answered_at = time.monotonic()  # the last success
        self._failing: set[object] = set()  # keys of retrying loops whose last try failed
        self._rng = random.Random()

    @property
    def down(self) -> bool:
        """Whether the store is failing (a call failed, and not every loop has got through)."""
        return self.down_since is not None

    def down_for(self) -> float:
        """Seconds since the store last answered any call (0 while it is not down)."""
        if self.down_since is None:
            return 0.0
        return time.monotonic() - max(self.down_since, self._answered_at)

    def failed(
        self, what: str, exc: BaseException, key: object = None, *, started: float | None = None
    ) -> None:
        """A store call (``what``: "claiming a batch of job ...") failed with ``exc``; a loop
        that will try again passes its ``key``. A call that ``started`` (``time.monotonic()``)
        before the store last answered is stale news (it began during an outage that is over:
        a slow retry of a call on another thread) and is ignored."""
        if started is not None and started < self._answered_at:
            return
        self.last_error = exc
        if key is not None:
            self._failing.add(key)
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        log.warning(
            "%s: the store is unreachable (%s failed: %s: %s); retrying with backoff "
            "(up to %g s between tries)%s",
            self.who,
            what,
            type(exc).__name__,
            exc,
            MAX_DELAY,
            "" if self.give_up_after is None else f"; giving up after {self.give_up_after:g} s",
            # A failure that is not the store's own (a bug) keeps its traceback, once.
            exc_info=None if isinstance(exc, StoreError) else exc,
        )

    def answered(self, key: object = None) -> None:
        """A store call succeeded (the loop ``key``'s, if given)."""
        self._answered_at = time.monotonic()
        if key is not None:
            self._failing.discard(key)
        if self.down_since is None or self._failing:
            return
        took = self._answered_at - self.down_since
        self.down_since = None
        self.last_error = None
        log.info("%s: the store is reachable again after %.1f s", self.who, took)

    def forget(self, key: object) -> None:
        """The loop ``key`` ended (it will not try again)."""
        self._failing.discard(key)

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` consecutive failures of one loop (capped, jittered)."""
        return backoff_delay(failures, FIRST_DELAY, MAX_DELAY, self._rng)

    async def until_answered(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` (a store call; ``what`` names it for the log) until the store
        answers: each failure is noted here and followed by a backoff pause."""
        failures = 0
        key = object()
        try:
            while True:
                try:
                    result = await call()
                except Exception as exc:
                    if not store_failure(exc):
                        raise
                    failures += 1
                    self.failed(what, exc, key)
                    await anyio.sleep(self.delay(failures))
                    continue
                self.answered(key)
                return result
        finally:
            self.forget(key)

    def gave_up(self) -> StoreError:
        """The error a worker that gives up ends with."""
        last = self.last_error
        cause = f"{type(last).__name__}: {last}" if last is not None else "unknown"
        return StoreError(
            f"{self.who} gave up: the store {self.store!r} did not answer for "
            f"{self.down_for():.0f} s (give_up_after={self.give_up_after:g}); last error: "
            f"{cause}; check the store, then start the worker again"
        )
