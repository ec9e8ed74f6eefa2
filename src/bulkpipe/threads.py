"""Sync processors' threads: each lane of a job runs its sync calls in a worker thread of the
job run's own capacity limiter, and a call its lane stopped waiting for (an ``item_timeout``, a
batch deadline, a lost lease, a cancellation) still counts against the lane until its thread
returns: Python cannot stop a thread, so the bound counts threads, not awaits.

The lane learns that an abandoned thread returned from the thread itself, which schedules a
callback on the event loop without waiting for it (``call_soon_threadsafe`` on asyncio,
``run_sync_soon`` on trio); a loop that has ended is not told. Nothing here runs per item on
the event loop beyond the thread call itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeGuard

import anyio
import anyio.to_thread

from .processors import _guarded

# The states of one call (a _Call); only the thread moves NEW to RUNNING and on to RETURNED.
_NEW, _RUNNING, _WATCHED, _SKIPPED, _RETURNED = range(5)


def _loop_waker() -> Callable[[Callable[[], None]], None]:
    """A thread-safe, non-blocking ``schedule(callback)`` onto the running event loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio (the only other backend anyio runs on)
        import trio

        token = trio.lowlevel.current_trio_token()

        def on_trio(callback: Callable[[], None]) -> None:
            # The loop has ended: nobody is waiting any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(callback)

        return on_trio

    def on_asyncio(callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(callback)

    return on_asyncio


class _Call:
    """One sync call in a worker thread, and whether the loop still waits to hear it return."""

    __slots__ = ("_lock", "_notify", "state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notify: Callable[[], None] | None = None
        self.state = _NEW

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """In the worker thread: call ``fn`` unless its caller gave up before it started."""
        with self._lock:
            if self.state == _SKIPPED:
                return None
            self.state = _RUNNING
        try:
            return _guarded(fn, args, kwargs)
        finally:
            with self._lock:
                notify = self._notify if self.state == _WATCHED else None
                self.state = _RETURNED
            if notify is not None:
                notify()

    def abandon(self, on_return: Callable[[], None]) -> bool:
        """On the loop, once the caller stopped waiting: have ``on_return`` called on the loop
        when the thread returns; False if it need not be (it returned or never started)."""
        with self._lock:
            if self.state == _NEW:
                self.state = _SKIPPED
                return False
            if self.state == _RETURNED:
                return False
            schedule = _loop_waker()
            self._notify = partial(schedule, on_return)
            self.state = _WATCHED
            return True


class LaneThread:
    """The sync processor calls of one lane: one thread at a time, run under the job run's
    ``limiter``. A call the lane stopped waiting for stays :attr:`busy` until its thread
    returns; the lane's next call (and :meth:`wait`) waits for that."""

    __slots__ = ("_callbacks", "_returned", "fn", "limiter")

    def __init__(self, fn: Callable[..., Any], limiter: anyio.CapacityLimiter) -> None:
        self.fn = fn
        self.limiter = limiter
        self._returned: anyio.Event | None = None  # set when the abandoned thread returned
        self._callbacks: list[Callable[[], None]] = []

    @property
    def busy(self) -> bool:
        """Whether a thread this lane stopped waiting for is still running."""
        return self._returned is not None

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """Call the sync processor in a thread, once this lane's previous thread returned.

        Cancellation (a timeout) returns at once; the thread runs on and keeps the lane busy.
        """
        if self._returned is not None:
            await self.wait()
        call = _Call()
        try:
            return await anyio.to_thread.run_sync(
                partial(call.run, self.fn, args, kwargs),
                abandon_on_cancel=True,
                limiter=self.limiter,
            )
        except BaseException:
            if call.state != _RETURNED:  # the processor's own exception: nothing to wait for
                returned = anyio.Event()
                if call.abandon(partial(self._thread_returned, returned)):
                    self._returned = returned
            raise

    async def wait(self) -> None:
        """Wait until the thread this lane stopped waiting for has returned (at once if none)."""
        returned = self._returned
        if returned is not None:
            await returned.wait()

    def when_returned(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the abandoned thread returns (now, if none is running)."""
        if self._returned is None:
            callback()
        else:
            self._callbacks.append(callback)

    def _thread_returned(self, returned: anyio.Event) -> None:
        """On the loop: the abandoned thread returned."""
        if self._returned is returned:
            self._returned = None
        returned.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def busy(thread: LaneThread | None) -> TypeGuard[LaneThread]:
    """Whether ``thread`` is a lane's thread still running a call the lane stopped waiting for."""
    return thread is not None and thread.busy


class Parked:
    """Lanes waiting for their abandoned threads to return, let go all at once (when the job has
    nothing left to start, so that it can end while a hung thread runs on)."""

    __slots__ = ("_scopes",)

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()

    async def wait(self, thread: LaneThread) -> None:
        """Wait until ``thread`` returned, or until :meth:`let_go`."""
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await thread.wait()
            finally:
                self._scopes.discard(scope)

    def let_go(self) -> None:
        """Stop every :meth:`wait` now."""
        for scope in self._scopes:
            scope.cancel()
