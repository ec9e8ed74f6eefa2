"""Running one job's batches inside one worker: lanes, feeding them batches, and recording.

Items flow through a fixed number of *lanes* (``concurrency`` x ``item_concurrency or
batch_size``): each lane takes the next unstarted item of any open batch, so an item starts as
soon as another finishes, and a batch is only the unit of claiming and recording, never a
barrier. Per item there is no task, lock, stream or store call; those happen per batch.

Running an item (attempts, retries, turning results and exceptions into outcome rows) is
:mod:`bulkpipe.attempts`; a claimed batch's state is :class:`~bulkpipe.batches.OpenBatch`. The
runner reaches its worker only through :class:`RunnerHost`.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .attempts import Attempts, BatchCall
from .batches import OpenBatch
from .error_types import ErrorType
from .errors import JobNotFound
from .gate import GateSlot, PriorityGate
from .lifecycle import Lifecycle, failure_ratio_exceeded
from .outage import StoreOutage, store_failure
from .processors import Adapted
from .store import BatchReport, ClaimedBatch, JobSpec, JobStore, Lease, Progress
from .threads import LaneThread, Parked, busy

log = logging.getLogger("bulkpipe.runner")

T = TypeVar("T")


class RunnerHost(Protocol):
    """What a :class:`JobRunner` needs from the worker that runs it (:class:`~bulkpipe.Worker`
    is one): the store, the shared outage record and gate, and claiming and waiting for work."""

    @property
    def store(self) -> JobStore:
        """The store the job lives in."""

    @property
    def lifecycle(self) -> Lifecycle:
        """What ends the job (completing or failing it) and tells the listeners."""

    @property
    def outage(self) -> StoreOutage:
        """The worker's record of whether the store answers."""

    @property
    def gate(self) -> PriorityGate | None:
        """The ``max_in_flight`` gate shared by the worker's jobs, if any."""

    @property
    def gave_up(self) -> bool:
        """Whether the worker stopped because the store did not answer for too long."""

    async def claim(self, job_id: str) -> ClaimedBatch | None:
        """Claim the next batch of the job (None: nothing to claim, or claiming has stopped)."""

    async def wait_for_work(self, event: anyio.Event | None = None) -> None:
        """Sleep until ``event`` is set (new work in this process) or the poll interval."""

    async def until_answered(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` (a store call named ``what``) until the store answers."""


class JobRunner:
    """Runs the batches of one job that this worker claims, until none is left or it is stopped."""

    def __init__(self, host: RunnerHost, spec: JobSpec, processor: Adapted) -> None:
        self.host = host
        self.store = host.store
        self.spec = spec
        self.options = spec.options
        self.processor = processor
        self.lane_cap = (
            1 if processor.batched else (self.options.item_concurrency or self.options.batch_size)
        )
        self.max_lanes = self.options.concurrency * self.lane_cap
        self.open: deque[OpenBatch] = deque()
        self.lanes = 0
        self.exhausted = False
        self.closing = False
        self.ended = False  # the job reached a terminal status
        self.finished = anyio.Event()
        self._idle: deque[anyio.Event] = deque()  # lanes waiting for work
        self._waking = 0  # lanes woken or spawned that have not run yet
        self._gate_waiting = 0  # lanes queued at the gate (max_in_flight)
        self._work_tg: TaskGroup | None = None
        self._need_more = anyio.Event()
        self._more = anyio.Event()  # set when this process adds batches to the job
        self._dirty = anyio.Event()
        self._work_scope = anyio.CancelScope()
        self._attempts = Attempts(processor, self.options, random.Random())
        # A sync processor's threads: as many as lanes (not anyio's default 40), each counted
        # until it returns, also when its lane stopped waiting for it (threads.py).
        self._threads = anyio.CapacityLimiter(self.max_lanes) if processor.sync else None
        self._parked = Parked()  # lanes waiting for such a thread, let go when all is started
        self._failing: tuple[str, datetime] | None = None  # a failure not yet written

    # -- control ----------------------------------------------------------------------------

    def stop(self, *, ended: bool = False) -> None:
        """Stop starting items and cancel the ones in flight; finished outcomes are still
        recorded unless the job has ``ended`` (then the store would refuse them anyway)."""
        self.ended = self.ended or ended
        self._work_scope.cancel()

    def more_work(self) -> None:
        """New batches were added to the job (in this process): claim again now."""
        self._more.set()
        self._more = anyio.Event()

    def leases(self) -> list[Lease]:
        """Leases this runner holds now (for the heartbeat)."""
        return [b.lease for b in self.open if not b.closed]

    def lose(self, lost: Sequence[Lease]) -> None:
        """Forget batches whose lease went to another worker; cancel their items."""
        tokens = {(lease.batch_no, lease.token) for lease in lost}
        for batch in self.open:
            if (batch.lease.batch_no, batch.lease.token) in tokens:
                self._drop(batch)

    def _drop(self, batch: OpenBatch) -> None:
        if not batch.closed:
            log.warning(
                "job %s: lease on batch %d lost; another worker owns it now",
                self.spec.id,
                batch.lease.batch_no,
            )
        batch.closed = True
        for scope in batch.scopes:
            scope.cancel()

    # -- main -------------------------------------------------------------------------------

    async def run(self, first: ClaimedBatch) -> None:
        """Run until the job's batches run out (or it is stopped), record, then settle."""
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._record_loop)
                with self._work_scope:
                    async with anyio.create_task_group() as work:
                        self._add(first, work)
                        work.start_soon(self._feed, work)
                self.closing = True
                self._dirty.set()
            await self._wind_down()
        finally:
            self.finished.set()

    async def _wind_down(self) -> None:
        # One try each, shielded: what fails here is done later anyway (an unreleased lease
        # expires; a job left unsettled is completed by a worker's sweep for such jobs).
        with anyio.CancelScope(shield=True):
            if self.host.outage.down or self.host.gave_up:
                return
            unfinished = [b.lease for b in self.open if not b.closed]
            try:
                if unfinished and not self.ended:
                    await self.store.release(unfinished)
                if not self.ended and not unfinished:
                    # Read afresh: a read that overlapped our last write may have returned
                    # counts from before it, and settling on those would leave the job
                    # unfinished.
                    progress = await self.store.progress(self.spec.id)
                    await self.host.lifecycle.settle(self.spec.id, progress)
            except Exception as exc:
                if not store_failure(exc):
                    raise
                self.host.outage.failed(f"winding down job {self.spec.id}", exc)

    # -- claiming ---------------------------------------------------------------------------

    def _add(self, claimed: ClaimedBatch, work: TaskGroup) -> None:
        abandon = None
        if claimed.claims > self.options.max_claims:
            # Its earlier holders died (or lost the lease) every time: running it again would
            # most likely kill this worker too. A graceful release does not count as a claim.
            abandon = (
                f"batch {claimed.lease.batch_no} was claimed {claimed.claims} times and its "
                "workers kept dying (or losing its lease) before finishing it, more than "
                f"JobOptions.max_claims={self.options.max_claims} allows; its remaining items "
                "were failed without running them again. Look for a processor that crashes "
                "the process (os._exit, a segfault, running out of memory) or blocks the event "
                "loop longer than the lease, then retry the failed items"
            )
            log.error(
                "job %s: batch %d claimed %d times (max_claims=%d); failing its %d remaining items",
                self.spec.id,
                claimed.lease.batch_no,
                claimed.claims,
                self.options.max_claims,
                len(claimed.items),
            )
        batch = OpenBatch(claimed, anyio.current_time() + self.options.timeout, abandon)
        self.open.append(batch)
        self._work_tg = work
        if not batch.items:  # every item already has an outcome (a re-claimed batch)
            self._dirty.set()
            return
        self._wake_one()

    def _wake_one(self) -> None:
        """Get one more lane going (an idle one, else a new one up to the bound).

        Lanes are woken one at a time, each waking the next once it has taken an item, so a
        batch of instant items is not met by a herd of lanes that find nothing to do.
        """
        if self._waking:
            return
        if self._idle:
            self._waking = 1
            self._idle.popleft().set()
        elif self.lanes < self.max_lanes and self._work_tg is not None:
            self._waking = 1
            self.lanes += 1
            self._work_tg.start_soon(self._lane)

    def _wake_all(self) -> None:
        while self._idle:
            self._waking += 1
            self._idle.popleft().set()

    async def _idle_wait(self) -> None:
        event = anyio.Event()
        self._idle.append(event)
        try:
            await event.wait()
        finally:
            if event.is_set():
                self._waking -= 1
            else:
                self._idle.remove(event)

    def _startable_batches(self) -> int:
        return sum(1 for b in self.open if b.startable)

    async def _feed(self, work: TaskGroup) -> None:
        concurrency = self.options.concurrency
        while True:
            if self._startable_batches() >= concurrency:
                self._need_more = anyio.Event()
                await self._need_more.wait()
                continue
            claimed = await self.host.until_answered(
                f"claiming a batch of job {self.spec.id}", self._claim
            )
            if claimed is not None:
                self._add(claimed, work)
                continue
            # Nothing to claim now: either every item is in (we are done) or more may come.
            progress = await self.host.until_answered(
                f"reading the progress of job {self.spec.id}", self._read_progress
            )
            if progress.sealed or progress.status.is_terminal:
                break
            await self.host.wait_for_work(self._more)
        self.exhausted = True
        self._wake_all()
        self._let_parked_go()

    async def _claim(self) -> ClaimedBatch | None:
        return await self.host.claim(self.spec.id)

    async def _read_progress(self) -> Progress:
        return await self.store.progress(self.spec.id)

    # -- lanes ------------------------------------------------------------------------------

    def _pick(self) -> OpenBatch | None:
        cap = self.lane_cap
        for batch in self.open:
            if batch.startable and batch.lanes < cap:
                return batch
        return None

    async def _lane(self) -> None:
        self._waking -= 1
        gate = self.host.gate
        # A gate place, kept from one segment to the next while more of this job is to start.
        slot = GateSlot(gate, self.spec.priority) if gate is not None else None
        sync = self.processor.sync
        thread = None if sync is None or self._threads is None else LaneThread(sync, self._threads)
        try:
            while True:
                if busy(thread):
                    await self._settle(thread)
                batch = self._pick()
                if batch is None:
                    if slot is not None and not busy(thread):
                        slot.release()
                    if self.exhausted:
                        self._let_parked_go()
                        return
                    self._need_more.set()
                    await self._idle_wait()
                    continue
                if self.processor.batched:
                    await self._run_batch_call(batch, thread)
                else:
                    await self._run_segment(batch, slot, thread)
                # Let others run between segments. Not before one: a lane that picked a batch
                # and then yielded could find it emptied by another and run an empty segment.
                await anyio.lowlevel.checkpoint()
        finally:
            self.lanes -= 1
            if slot is not None and busy(thread):
                thread.when_returned(slot.release)  # ended: the place is the thread's now
            elif slot is not None:
                slot.release()

    async def _settle(self, thread: LaneThread) -> None:
        """Wait, keeping the lane (and its gate place), until its abandoned sync call's thread
        returns; not once every item of the job has started: then the lane ends and its thread
        keeps the gate place until it returns (see _lane), so that the job can end."""
        if not self._all_started():
            await self._parked.wait(thread)

    def _all_started(self) -> bool:
        return self.exhausted and not any(b.startable for b in self.open)

    def _let_parked_go(self) -> None:
        if self._all_started():
            self._parked.let_go()

    def _queue_demand(self, capacity: int) -> None:
        """Queue another lane at the full gate while this job has more items to start than
        lanes queued there, so that freed places go to it by priority (not to a lower one
        only because this job's next lane was not woken yet)."""
        unstarted = sum(len(b.items) - b.next for b in self.open if b.startable)
        if self._gate_waiting < min(unstarted, capacity):
            self._wake_one()

    async def _run_segment(
        self, batch: OpenBatch, slot: GateSlot | None, thread: LaneThread | None
    ) -> None:
        """Run items of ``batch`` on this lane, holding a place of ``slot``'s gate; a sync
        call the lane stopped waiting for keeps the lane (and the place) until it returns.

        The place is kept after the segment while this job has items to start and no waiter
        of at least its priority is queued: released here, it would go to a lower-priority
        waiter first. The lane releases it however it ends.
        """
        priority = self.spec.priority
        batch.lanes += 1
        current: int | None = None
        scope = anyio.CancelScope(deadline=batch.deadline)
        batch.scopes.add(scope)
        run_item = self._attempts.run_item
        gate = None
        try:
            if slot is not None:
                gate = slot.gate
                if not slot.held:
                    self._gate_waiting += 1
                    try:
                        if gate.in_use >= gate.capacity:
                            self._queue_demand(gate.capacity)
                        await slot.acquire()
                    finally:
                        self._gate_waiting -= 1
            with scope:
                items, rows, n = batch.items, batch.rows, len(batch.items)
                while batch.next < n and not batch.closed:
                    current = batch.next
                    batch.next = current + 1
                    if current + 1 == n:
                        self._need_more.set()
                    elif not self._waking:
                        self._wake_one()
                    rows.append(await run_item(batch.ids[current], items[current], thread))
                    current = None
                    batch.left -= 1
                    if not batch.left:
                        self._dirty.set()
                    if busy(thread):  # recorded; the lane waits
                        await self._settle(thread)
                    if gate is not None and gate.contended(priority) and not busy(thread):
                        assert slot is not None
                        slot.release()
                        await slot.acquire()
            if scope.cancelled_caught and not batch.closed:
                self._time_out(batch, [] if current is None else [current], 1, None)
        finally:
            batch.scopes.discard(scope)
            batch.lanes -= 1
        if slot is None or gate is None or busy(thread):  # then _lane waits for the thread
            return
        if not self.exhausted and self._pick() is None and not gate.contended(priority):
            await anyio.lowlevel.checkpoint()  # let _feed claim the job's next batch
        if gate.contended(priority) or self._pick() is None:
            slot.release()

    def _time_out(
        self, batch: OpenBatch, running: Sequence[int], attempts: int, started: float | None
    ) -> None:
        """Fail what the batch did not finish by its deadline: the items ``running`` when it
        passed and every unstarted one."""
        batch.time_out(running, attempts, started, self.options.timeout)
        if not batch.left:
            self._dirty.set()

    async def _run_batch_call(self, batch: OpenBatch, thread: LaneThread | None) -> None:
        """One ``process_batch`` call per attempt for the batch's items (at most
        ``item_concurrency`` of them, when set, to keep the bound); retry the failed ones."""
        options = self.options
        batch.lanes += 1
        start = batch.next
        stop = len(batch.items)
        if options.item_concurrency is not None:
            stop = min(stop, start + options.item_concurrency)
        batch.next = stop
        if stop == len(batch.items):
            self._need_more.set()
        call = BatchCall(list(range(start, stop)))
        scope = anyio.CancelScope(deadline=batch.deadline)
        batch.scopes.add(scope)
        try:
            with scope:
                await self._attempts.run_batch(batch, call, thread)
            if scope.cancelled_caught and not batch.closed:
                self._time_out(batch, call.pending, call.attempt, call.started)
        finally:
            batch.scopes.discard(scope)
            batch.lanes -= 1
            if not batch.left:
                self._dirty.set()

    # -- recording --------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        tick = self.options.progress_interval / 2
        failures = 0  # consecutive failed flushes: the store does not answer
        try:
            while True:
                if failures:
                    # Unrecorded outcomes stay in memory meanwhile; more may gather.
                    await anyio.sleep(self.host.outage.delay(failures))
                else:
                    with anyio.move_on_after(tick):
                        await self._dirty.wait()
                self._dirty = anyio.Event()
                closing = self.closing
                if not await self._flush():
                    failures += 1
                    continue
                failures = 0
                if closing:
                    return
        finally:
            self.host.outage.forget(self)

    async def _flush(self) -> bool:
        """Record what finished since the last flush; False if the store did not answer (the
        outcomes are kept and sent again by the next flush)."""
        if self._failing is not None and not await self._fail_job(*self._failing):
            return False
        reports: list[tuple[OpenBatch, int, bool]] = []
        for batch in self.open:
            if batch.closed:
                continue
            n = len(batch.rows)
            done = batch.left == 0
            if n > batch.flushed or done:
                reports.append((batch, n, done))
        if not reports or self.ended:
            self._forget_finished()
            return True
        batches = [
            BatchReport(lease=b.lease, outcomes=b.rows[b.flushed : n], done=done)
            for b, n, done in reports
        ]
        for batch, _, done in reports:
            if done:
                # Nothing more to run or report; the heartbeat stops renewing it now, since
                # the store gives its lease up as the done report commits.
                batch.closed = True
        try:
            progress = await self.store.record(self.spec.id, batches)
        except JobNotFound:  # the job ended and was deleted meanwhile: as for an ended job
            self.stop(ended=True)
            return True
        except Exception as exc:
            if not store_failure(exc):
                raise
            for batch, _, done in reports:
                if done:
                    batch.closed = False
            self.host.outage.failed(f"recording outcomes of job {self.spec.id}", exc, self)
            return False
        self.host.outage.answered(self)
        for batch, n, _ in reports:
            batch.flushed = n
        lost = set(progress.lost)
        for batch in self.open:
            if batch.lease.batch_no in lost:
                self._drop(batch)
        self._forget_finished()
        if progress.status.is_terminal:
            self.stop(ended=True)
            return True
        options = self.options
        why = failure_ratio_exceeded(
            progress, options.max_failure_ratio, options.failure_ratio_min_outcomes
        )
        if why is not None:
            return await self._fail_job(why, datetime.now(UTC))
        return True

    async def _fail_job(self, message: str, at: datetime) -> bool:
        """Fail the job (too many items failed); False, to try again, if the store did not
        answer."""
        self._failing = message, at
        try:
            await self.host.lifecycle.fail(
                self.spec.id, ErrorType.FAILURE_RATIO_EXCEEDED, message, at=at
            )
        except Exception as exc:
            if not store_failure(exc):
                raise
            self.host.outage.failed(f"failing job {self.spec.id}", exc, self)
            return False
        self.host.outage.answered(self)
        self._failing = None
        self.stop(ended=True)
        return True

    def _forget_finished(self) -> None:
        while self.open and self.open[0].closed and not self.open[0].lanes:
            self.open.popleft()
        if any(b.closed and not b.lanes for b in self.open):
            self.open = deque(b for b in self.open if not (b.closed and not b.lanes))
