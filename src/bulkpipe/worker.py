"""A worker: claims batches from a store and runs them, until stopped."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .error_types import ErrorType
from .errors import StoreError
from .gate import PriorityGate
from .heartbeat import HeartbeatThread
from .lifecycle import JobEvents, Lifecycle
from .outage import StoreOutage, store_failure
from .processors import ProcessorRegistry
from .recycling import Recycling
from .registration import Registration
from .runner import JobRunner
from .store import ClaimedBatch, JobStore, Lease, SupportsHeartbeatStore
from .sweeps import Sweeps
from .watchdog import LoopWatchdog
from .worker_checks import check_timing

log = logging.getLogger("bulkpipe.worker")

#: The signals that stop a worker that handles signals: the first gracefully, a second at once.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

T = TypeVar("T")


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Serves every job in a store whose processor it knows, until cancelled or :meth:`stop`.

    A job's ``concurrency`` and ``batch_size`` bound what *each* worker runs of it, so N workers
    run up to N times as much of one job. Batches are claimed under a lease of
    ``lease_timeout`` seconds that a heartbeat renews; a batch whose lease expires (its worker
    died) is claimed again by another worker.

    On a store with a heartbeat capability (SQLite, PostgreSQL:
    :class:`~bulkpipe.store.SupportsHeartbeatStore`) the heartbeat runs on a thread of its own,
    with its own connection, so a processor that blocks the event loop does not lose its
    leases. ``blocked_loop_threshold`` (seconds, None: off) is how long the event loop may go
    without running before a watchdog logs a WARNING naming the jobs and processors running
    (``bulkpipe.watchdog``).

    Recycling: with ``max_items`` (items claimed, counted per batch) or ``max_memory`` (bytes
    of resident memory, checked once a heartbeat) the worker, once either is reached, claims
    nothing more, lets its open batches finish (up to their jobs' ``timeout``), records and
    releases, and :meth:`run` returns with :attr:`limit_reached` saying which limit it was, for
    the caller to start afresh (``bulkpipe worker`` restarts its loop, re-executes itself for
    memory, or exits for a supervisor).

    When the store stops answering, the worker keeps what it has not recorded in memory and
    retries with capped exponential backoff and jitter, logging once that the store is
    unreachable and once that it is back, and goes on by itself when it is. With
    ``give_up_after`` (seconds; default: never) :meth:`serve` and :meth:`run` end with a
    :class:`~bulkpipe.StoreError` once the store has not answered for that long.

    Each job this worker ends (completes, fails) is announced on ``events``
    (:class:`~bulkpipe.lifecycle.JobEvents`; a pipeline passes the one it shares with all of
    its workers), as ``listener(job_id, status)``.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        processors: Mapping[str, object] | None = None,
        lease_timeout: float = 30.0,
        poll_interval: float = 0.5,
        max_in_flight: int | None = None,
        worker_id: str | None = None,
        registry: ProcessorRegistry | None = None,
        gate: PriorityGate | None = None,
        blocked_loop_threshold: float | None = 1.0,
        max_items: int | None = None,
        max_memory: int | None = None,
        give_up_after: float | None = None,
        events: JobEvents | None = None,
    ) -> None:
        check_timing(
            lease_timeout=lease_timeout,
            poll_interval=poll_interval,
            give_up_after=give_up_after,
            blocked_loop_threshold=blocked_loop_threshold,
        )
        self.store = store
        #: Ends jobs (completing, failing) and announces it on ``events`` (shared with the
        #: pipeline that made this worker; else one of its own).
        self.lifecycle = Lifecycle(store, events)
        self.registry = registry if registry is not None else ProcessorRegistry(processors)
        if registry is not None and processors:
            for name, processor in processors.items():
                registry.register(name, processor)
        self.blocked_loop_threshold = blocked_loop_threshold
        #: Whether :meth:`stop` was called (a signal, the caller): then do not recycle.
        self.stop_requested = False
        self.lease_timeout = lease_timeout
        self.poll_interval = poll_interval
        self.worker_id = worker_id or _default_worker_id()
        #: The ``max_items`` / ``max_memory`` limits and what was claimed towards them.
        self.recycling = Recycling(self.worker_id, max_items, max_memory, self.wake)
        self.gate = (
            gate
            if gate is not None
            else (PriorityGate(max_in_flight) if max_in_flight is not None else None)
        )
        self.give_up_after = give_up_after
        #: Whether the store answers; shared with this worker's job runners.
        self.outage = StoreOutage(f"worker {self.worker_id}", store, give_up_after)
        self._gave_up: StoreError | None = None
        self._stop_event = anyio.Event()
        # Jobs whose runner failed, not claimed again here until the time.monotonic() given.
        self._cooling: dict[str, float] = {}
        self.runners: dict[str, JobRunner] = {}
        self._running_jobs: set[str] = set()  # jobs with a runner, or about to have one
        self._stopped_jobs: set[str] = set()
        self._stopping = False
        self._wake = anyio.Event()
        self._served = anyio.Event()
        #: The lease-renewing thread while serving on a store that allows one.
        self.heartbeat_thread: HeartbeatThread | None = None
        #: The blocked-loop watchdog while serving (None when ``blocked_loop_threshold`` is).
        self.watchdog: LoopWatchdog | None = None
        self._interval = min(self.lease_timeout / 3, 1.0)  # between heartbeats
        #: This worker's entry in the store's worker registry.
        self.registration = Registration(store, self.worker_id, self._interval, self.outage)

    def __repr__(self) -> str:
        return f"Worker(id={self.worker_id!r}, store={self.store!r})"

    @property
    def limit_reached(self) -> str | None:
        """``"max_items"`` or ``"max_memory"`` once that limit was reached, else None."""
        return self.recycling.limit_reached

    @property
    def items_claimed(self) -> int:
        """Items of the batches claimed so far (counted per batch, for ``max_items``)."""
        return self.recycling.items_claimed

    # -- public -----------------------------------------------------------------------------

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the store, serve jobs until :meth:`stop` (or cancellation), then close it.

        With ``handle_signals`` (main thread only), SIGTERM or SIGINT stops the worker
        gracefully: it claims nothing more, records what finished, releases its other batches
        and returns. A second signal stops it at once; its leases then expire and other
        workers take the batches over. ``await task_group.start(worker.run)`` returns once the
        worker is serving (and handling signals).
        """
        await self.store.open()
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    await tg.start(self._watch_signals, tg.cancel_scope)
                await tg.start(self.serve)
                task_status.started()
                await self._served.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.registry.teardown()
                await self.store.close()

    async def _watch_signals(
        self, scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            # Blocked by a worker that re-executed itself (bulkpipe worker --max-memory):
            # handled now, so a signal that came meanwhile is delivered here.
            if hasattr(signal, "pthread_sigmask"):  # not on Windows
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            task_status.started()
            async for signum in signals:
                if self._stopping:
                    log.warning("worker %s: second signal; stopping at once", self.worker_id)
                    scope.cancel()
                    return
                log.info(
                    "worker %s: %s received; stopping gracefully",
                    self.worker_id,
                    signal.Signals(signum).name,
                )
                self.stop()

    def stop(self) -> None:
        """Stop gracefully: claim nothing more, record what finished, release the rest."""
        self.stop_requested = True
        self._halt()

    def _halt(self) -> None:
        self._stopping = True
        self._stop_event.set()
        self.wake()

    def wake(self, job_id: str | None = None) -> None:
        """Tell the worker there may be new work (a submit in this process). New batches of a
        job it already runs only wake that job's runner, not the claim loop."""
        runner = self.runners.get(job_id) if job_id is not None else None
        if runner is not None:
            runner.more_work()
            return
        self._wake.set()
        self._wake = anyio.Event()

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim and run batches on an open store until stopped (or, with ``give_up_after``,
        until the store has not answered for that long: then raise :class:`StoreError`)."""
        installed = set(self.registry.installed())
        self._gave_up = None
        graceful = False
        self.registration.serves(self.registry.names_with(installed))
        await self.registration.register()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat, installed)
            if self.give_up_after is not None:
                tg.start_soon(self._watch_outage, tg.cancel_scope)
            task_status.started()
            try:
                failures = 0
                while not self._stopping:
                    if self.recycling.draining:  # a recycling limit was reached
                        await self._drain()
                        continue
                    exclude = self._running_jobs | self._stopped_jobs | self._cooled()
                    types = self.registry.names_with(installed)
                    try:
                        claimed = await self.store.claim_batch(
                            worker_id=self.worker_id,
                            lease_seconds=self.lease_timeout,
                            exclude=exclude,
                            types=types,
                        )
                    except Exception as exc:
                        if not store_failure(exc):
                            raise
                        failures += 1
                        self.outage.failed("claiming a batch", exc)
                        with anyio.move_on_after(self.outage.delay(failures)):
                            await self._stop_event.wait()
                        continue
                    failures = 0
                    self.outage.answered()
                    if claimed is None:
                        await self.wait_for_work()
                        continue
                    self._start(claimed, tg)
                graceful = self._gave_up is None
            finally:
                for runner in list(self.runners.values()):
                    runner.stop()
                if self._gave_up is None:
                    with anyio.CancelScope(shield=True):
                        for runner in list(self.runners.values()):
                            with anyio.move_on_after(self.lease_timeout):
                                await runner.finished.wait()
                tg.cancel_scope.cancel()
        if graceful:  # the heartbeat thread has stopped: nothing registers it again
            await self.registration.unregister()
        self._served.set()  # then run() cancels, and closes the store
        if self._gave_up is not None:
            raise self._gave_up

    async def _watch_outage(self, scope: anyio.CancelScope) -> None:
        """Stop serving once the store has not answered for ``give_up_after`` seconds."""
        limit = self.give_up_after
        assert limit is not None
        while True:
            await anyio.sleep(min(1.0, limit / 4))
            if self.outage.down_for() >= limit:
                break
        self._gave_up = self.outage.gave_up()
        self._stopping = True
        self._stop_event.set()
        scope.cancel()

    @property
    def gave_up(self) -> bool:
        """Whether the worker stopped because the store did not answer for ``give_up_after``."""
        return self._gave_up is not None

    async def until_answered(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` until the store answers (see :meth:`StoreOutage.until_answered`)."""
        return await self.outage.until_answered(what, call)

    def _cooled(self) -> set[str]:
        if not self._cooling:
            return set()
        now = time.monotonic()
        for job_id in [j for j, until in self._cooling.items() if until <= now]:
            del self._cooling[job_id]
        return set(self._cooling)

    def _start(self, claimed: ClaimedBatch, tg: TaskGroup) -> None:
        self._claimed(claimed)
        self._running_jobs.add(claimed.job.id)
        tg.start_soon(self._run_job, claimed, name=f"bulkpipe job {claimed.job.id}")

    async def _run_job(self, claimed: ClaimedBatch) -> None:
        spec = claimed.job
        try:
            await self._run_claimed(claimed)
        except Exception:
            # A bug, or a job this worker cannot run: keep serving the other jobs. Its batches
            # go back when their leases expire; this worker leaves the job alone for a while.
            log.exception(
                "worker %s: running job %s failed; not claiming it here for %g s",
                self.worker_id,
                spec.id,
                self.lease_timeout,
            )
            self._cooling[spec.id] = time.monotonic() + self.lease_timeout
        finally:
            self._running_jobs.discard(spec.id)
            self.wake()

    async def _run_claimed(self, claimed: ClaimedBatch) -> None:
        spec = claimed.job
        if spec.options_error is not None:
            # The stored row cannot be read: fail the job, never the worker.
            await self.store.release([claimed.lease])
            _, changed = await self.lifecycle.fail(
                spec.id, ErrorType.UNREADABLE_JOB, spec.options_error
            )
            if changed:  # once, though several workers may claim it at the same time
                log.error("job %s: %s; the job was marked failed", spec.id, spec.options_error)
            return
        try:
            processor = await self.registry.ready(spec.type)
        except Exception as exc:
            log.exception("job %s: processor %r could not be loaded", spec.id, spec.type)
            why = f"processor {spec.type!r} could not be set up: {type(exc).__name__}: {exc}"
            at = datetime.now(UTC)
            await self.until_answered(
                f"releasing a batch of job {spec.id}", lambda: self.store.release([claimed.lease])
            )
            await self.until_answered(
                f"failing job {spec.id}",
                lambda: self.lifecycle.fail(spec.id, ErrorType.PROCESSOR_SETUP_ERROR, why, at=at),
            )
            return
        if spec.id in self._stopped_jobs:  # cancelled while the claim was on its way back
            await self.until_answered(
                f"releasing a batch of job {spec.id}", lambda: self.store.release([claimed.lease])
            )
            return
        runner = JobRunner(self, spec, processor)
        self.runners[spec.id] = runner
        try:
            await runner.run(claimed)
        finally:
            del self.runners[spec.id]

    async def claim(self, job_id: str) -> ClaimedBatch | None:
        """Claim the next batch of one job this worker already runs."""
        if self._stopping or self.recycling.draining or job_id in self._stopped_jobs:
            return None
        claimed = await self.store.claim_batch(
            worker_id=self.worker_id,
            lease_seconds=self.lease_timeout,
            job_id=job_id,
        )
        if claimed is not None:
            self._claimed(claimed)
        return claimed

    async def wait_for_work(self, event: anyio.Event | None = None) -> None:
        """Sleep until woken (new work in this process) or the poll interval passes."""
        with anyio.move_on_after(self.poll_interval):
            await (event or self._wake).wait()

    async def stop_job(self, job_id: str) -> None:
        """Stop running a job here (it is being cancelled): cancel its items, record what
        finished, and claim nothing more of it."""
        self._stopped_jobs.add(job_id)
        runner = self.runners.get(job_id)
        if runner is not None:
            runner.stop()
            await runner.finished.wait()

    def _claimed(self, claimed: ClaimedBatch) -> None:
        """A batch was claimed: the heartbeat thread renews it from now on (a processor could
        block the loop before the next heartbeat tick), and it counts towards ``max_items``."""
        if self.heartbeat_thread is not None:
            self.heartbeat_thread.hold(claimed.lease)
        self.recycling.claimed(len(claimed.items))

    async def _drain(self) -> None:
        """Let the open batches finish (up to their jobs' timeout), then stop gracefully."""
        timeout = max((r.options.timeout for r in self.runners.values()), default=0.0)
        with anyio.move_on_after(timeout + self.poll_interval):
            while self._running_jobs and not self._stopping:
                for runner in list(self.runners.values()):
                    if not runner.leases():  # idle, waiting for more of its job: end it now
                        runner.stop()
                await self.wait_for_work()  # a job ending here wakes it
        self._halt()

    def _describe_running(self) -> str:
        """What runs here, per job ("" for nothing; read by the watchdog thread while the loop
        is blocked)."""
        runners = dict(self.runners)  # one C-level copy: safe against the loop changing it
        return ", ".join(
            f"job {job_id} (processor {runner.spec.type!r})" for job_id, runner in runners.items()
        )

    def in_flight(self) -> int:
        """Items of the batches this worker holds that have no outcome yet."""
        return sum(b.left for r in self.runners.values() for b in r.open if not b.closed)

    async def _heartbeat(self, installed: set[str]) -> None:
        """Renew leases, act on lost leases and ended jobs, watch the loop, settle orphans,
        refresh the registration."""
        interval = self._interval
        try:
            # Before the first checkpoint: the claim loop, started with this task, has its
            # first lease held by the thread as soon as its claim returns.
            second = (
                self.store.heartbeat_store()
                if isinstance(self.store, SupportsHeartbeatStore)
                else None
            )
            if second is not None:
                self.heartbeat_thread = HeartbeatThread(
                    second,
                    worker_id=self.worker_id,
                    lease_seconds=self.lease_timeout,
                    interval=interval,
                    registration=self.registration,
                )
                self.heartbeat_thread.start()
            async with anyio.create_task_group() as tg:
                if self.blocked_loop_threshold is not None:
                    self.watchdog = LoopWatchdog(
                        self.blocked_loop_threshold,
                        self._describe_running,
                        f"worker {self.worker_id}",
                    )
                    tg.start_soon(self.watchdog.run)
                await self._beat(interval, installed)
        finally:
            thread, self.heartbeat_thread = self.heartbeat_thread, None
            if thread is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(thread.stop)

    async def _beat(self, interval: float, installed: set[str]) -> None:
        thread = self.heartbeat_thread
        key = object()  # the renewals' key in the outage record: "back" waits for them too
        sweeps = Sweeps(
            f"worker {self.worker_id}",
            self.store,
            self.lifecycle,
            self.outage,
            self._running_jobs,
            self.lease_timeout,
        )
        while True:
            await anyio.sleep(interval)
            self.recycling.check_memory()
            names = self.registry.names_with(installed)
            await self.registration.beat(names, self.in_flight(), thread)
            await sweeps.run_due()  # abandoned submits, unsettled jobs (bulkpipe.sweeps)
            leases = [lease for runner in self.runners.values() for lease in runner.leases()]
            if thread is not None:
                thread.reconcile(leases)
                news = thread.take()
                lost, ended = news.lost, news.ended
                if news.error is not None:
                    self.outage.failed("renewing leases", news.error, key, started=news.started)
                elif news.answered:
                    self.outage.answered(key)
            elif not leases:
                self.outage.forget(key)
                continue
            else:
                try:
                    result = await self.store.renew_leases(
                        self.worker_id, leases, self.lease_timeout
                    )
                except Exception as exc:
                    # Keep the normal pace, not a backoff: leases expire meanwhile. A failed
                    # renewal is not a lost lease; the fencing decides that once it is back.
                    self.outage.failed("renewing leases", exc, key)
                    continue
                self.outage.answered(key)
                lost, ended = list(result.lost), set(result.ended_jobs)
            if lost or ended:
                self._renewed(lost, ended)

    def _renewed(self, lost: list[Lease], ended: set[str]) -> None:
        """Act on what a renewal learned: stop runners of ended jobs, drop lost batches."""
        for runner in list(self.runners.values()):
            if runner.spec.id in ended:
                runner.stop(ended=True)
            elif lost:
                runner.lose([lease for lease in lost if lease.job_id == runner.spec.id])
