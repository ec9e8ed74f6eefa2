"""Noticing an event loop that does not run: a processor blocking it (``time.sleep`` or CPU work
inside ``async def``) stalls every other job, the HTTP API and the heartbeat of this process.

:class:`LoopWatchdog` runs a small task on the loop that ticks every ``min(threshold / 4, 0.1)``
seconds and a daemon thread that checks the ticks as often. One *episode* (the loop late by
more than ``threshold``) gives one WARNING, naming what ran at the time (``describe()``, which
the worker keeps per job runner, never per item), the innermost Python frame the loop thread
was in, and how long the loop was blocked. It is written when the loop runs again; a loop
still blocked after ``10 * threshold`` is reported then by the thread (and the end of the
episode at INFO).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from .errors import InvalidArgument

log = logging.getLogger("bulkpipe.watchdog")

#: How many thresholds a block lasts before the watchdog thread reports it while it goes on.
LONG_BLOCK = 10.0

# The watchdogs running, by the thread of their loop. Several workers on one loop (a Pipeline
# with workers=N) see the same blocks: the first one reports them, naming what all of them ran.
_watching: dict[int, list[LoopWatchdog]] = {}
_watching_lock = threading.Lock()


def resident_memory() -> int | None:
    """This process's resident memory in bytes (``/proc/self/statm``; elsewhere the peak from
    ``resource``), or None where neither is available."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _where(thread_id: int) -> str:
    """The innermost Python frame of a thread, as ``file:line in function``."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "unknown"
    summary = traceback.extract_stack(frame, limit=1)[-1]
    return f"{summary.filename}:{summary.lineno} in {summary.name}"


class LoopWatchdog:
    """Logs when the event loop it runs on has not run for longer than ``threshold`` seconds.

    ``describe`` returns what runs on the loop (e.g. ``"job 1a2b (processor 'resize')"``, or
    ``""`` for nothing); it is called from the watchdog thread while the loop is blocked, so it
    must only read. ``name`` starts every log line (e.g. ``"worker host:123:ab12"``). Of several
    watchdogs on one loop only the first started reports, naming what each of them runs.
    """

    def __init__(self, threshold: float, describe: Callable[[], str], name: str) -> None:
        if not threshold > 0:
            raise InvalidArgument(
                f"the watchdog threshold must be a positive number of seconds, not {threshold}"
            )
        self.threshold = threshold
        self.describe = describe
        self.name = name
        self._tick = min(threshold / 4, 0.1)
        self._last = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        # Of the episode going on (None: the loop runs): what ran, where, whether reported.
        self._episode: tuple[str, str] | None = None
        self._reported = False
        #: Episodes seen so far (for tests and metrics).
        self.episodes = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch the loop this runs on until cancelled."""
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        with _watching_lock:
            _watching.setdefault(self._loop_thread, []).append(self)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(stop,), name=f"bulkpipe watchdog {self.name}", daemon=True
        )
        thread.start()
        task_status.started()
        try:
            while True:
                await anyio.sleep(self._tick)
                with self._lock:
                    now = time.monotonic()
                    late = now - self._last - self._tick
                    self._last = now
                    episode, reported = self._episode, self._reported
                    self._episode, self._reported = None, False
                if late > self.threshold:
                    self._end(late, episode, reported)
        finally:
            stop.set()  # the thread is a daemon and exits within a tick: no join on the loop
            with _watching_lock:
                dogs = _watching[self._loop_thread]
                dogs.remove(self)
                if not dogs:
                    del _watching[self._loop_thread]

    def _lead(self) -> bool:
        """Whether this is the watchdog that reports for its loop."""
        with _watching_lock:
            dogs = _watching.get(self._loop_thread)
            return not dogs or dogs[0] is self

    def _running(self) -> str:
        """What every watchdog on this loop says runs."""
        with _watching_lock:
            dogs = list(_watching.get(self._loop_thread, [self]))
        return "; ".join(filter(None, (dog.describe() for dog in dogs))) or "nothing of bulkpipe"

    def _end(self, late: float, episode: tuple[str, str] | None, reported: bool) -> None:
        if not self._lead():
            return
        if episode is None:  # shorter than a thread check; still a block worth knowing
            episode = (self._running(), "unknown")
            self.episodes += 1
        running, where = episode
        if reported:
            log.info("%s: the event loop runs again after %.1f s blocked", self.name, late)
            return
        log.warning(
            "%s: the event loop was blocked for %.1f s (threshold %.1f s) while running %s; "
            "it was at %s. A processor that blocks (time.sleep, CPU-bound work or blocking "
            "I/O inside async def) stalls every job, the heartbeat and the HTTP API of this "
            "process: make it a plain def (it then runs in a thread) or use "
            "anyio.to_thread.run_sync",
            self.name,
            late,
            self.threshold,
            running,
            where,
        )

    def _watch(self, stop: threading.Event) -> None:
        # Half the threshold apart: often enough to catch a block while it lasts, and rarely
        # enough that waking for the GIL costs the loop nothing measurable.
        while not stop.wait(max(self._tick, self.threshold / 2)):
            with self._lock:
                blocked = time.monotonic() - self._last - self._tick
                if blocked <= self.threshold:
                    continue
                if self._episode is None:
                    if not self._lead():
                        continue
                    self.episodes += 1
                    self._episode = (self._running(), _where(self._loop_thread))
                if self._reported or blocked <= LONG_BLOCK * self.threshold:
                    continue
                self._reported = True
                running, where = self._episode
            log.warning(
                "%s: the event loop has been blocked for %.1f s and counting (threshold "
                "%.1f s) while running %s; it is at %s",
                self.name,
                blocked,
                self.threshold,
                running,
                where,
            )
