"""A hypothesis state machine that checks a store against a small pure-Python model."""

from __future__ import annotations

import contextlib
import functools
import json
import unittest
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
import pytest

from .._snapshot import MAX_ERRORS
from ..errors import JobClosed
from ..items import encode_json
from ..models import ItemStatus, Job, JobStatus
from ..store import BatchReport, EncodedItem, JobStore, Lease, OutcomeRow, Progress
from .helpers import (
    GHOST_LEASE,
    LONG_LEASE,
    decoded,
    fail_row,
    job_error,
    make_job,
    ok_row,
    read_all_outcomes,
    read_pages,
)

if TYPE_CHECKING:
    from hypothesis import settings as Settings

T = TypeVar("T")

#: Builds a fresh, empty store: unopened (the caller opens and closes it), or an async
#: context manager that yields it opened.
StoreFactory = Callable[[], JobStore | AbstractAsyncContextManager[JobStore]]

_PENDING, _LEASED, _DONE = "pending", "leased", "done"
_TYPES = ("a", "b")


@attrs.define(eq=False)
class _ModelBatch:
    no: int
    items: list[str]
    state: str = _PENDING
    token: int = 0
    expired: bool = False
    claims: int = 0
    finished: set[str] = attrs.Factory(set)


@attrs.define(eq=False)
class _ModelJob:
    id: str
    type: str
    priority: int
    seq: int
    status: JobStatus = JobStatus.PENDING
    sealed: bool = False
    started: bool = False
    error_count: int = 0
    next_item: int = 0
    payloads: dict[str, str] = attrs.Factory(dict)  # every stored item, by id
    batches: list[_ModelBatch] = attrs.Factory(list)
    outcomes: list[tuple[str, bool, Any]] = attrs.Factory(list)  # (id, ok, result) in order
    frozen: Job | None = None  # the snapshot taken when the job ended

    @property
    def terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def complete(self) -> bool:
        """Whether ``finish_job(COMPLETED)`` may complete the job."""
        return (
            self.sealed
            and all(b.state == _DONE for b in self.batches)
            and len(self.outcomes) == len(self.payloads)
        )

    def progress(self, lost: tuple[int, ...] = ()) -> Progress:
        succeeded = sum(1 for _, ok, _ in self.outcomes if ok)
        return Progress(
            status=self.status,
            sealed=self.sealed,
            total=len(self.payloads),
            succeeded=succeeded,
            failed=len(self.outcomes) - succeeded,
            open_batches=sum(1 for b in self.batches if b.state != _DONE),
            lost=lost,
        )

    def claimable(self) -> list[_ModelBatch]:
        """The batches a claim may return: the first pending one, else any expired lease."""
        if self.terminal:
            return []
        pending = [b for b in self.batches if b.state == _PENDING]
        if pending:
            return pending[:1]
        return [b for b in self.batches if b.state == _LEASED and b.expired]

    def holds(self, lease: Lease) -> _ModelBatch | None:
        """The batch, if ``lease`` is its current lease on a live job."""
        if self.terminal or lease.batch_no >= len(self.batches):
            return None
        batch = self.batches[lease.batch_no]
        return batch if batch.state == _LEASED and batch.token == lease.token else None


def store_state_machine(
    factory: StoreFactory,
    *,
    backend: str = "asyncio",
    settings: Settings | None = None,
) -> type[unittest.TestCase]:
    """A hypothesis stateful test of the stores ``factory`` builds, run on ``backend``.

    ``factory`` is called once per test case and must return a fresh, empty store: an
    unopened one (the machine opens and closes it) or an async context manager that yields
    an opened one. Assign the result to a ``Test*`` name in a test module. Leases expire by
    ``lease_seconds=0``, so the store must treat a lease whose expiry is now as expired.
    """
    from hypothesis import HealthCheck
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        initialize,
        invariant,
        precondition,
        rule,
    )

    job_index = st.integers(0, 2)

    class StoreMachine(RuleBasedStateMachine):
        """Random calls on one store, each checked against :class:`_ModelJob` records."""

        def __init__(self) -> None:
            super().__init__()
            self.jobs: list[_ModelJob] = []
            self.leases: list[Lease] = []  # every lease ever issued, current or stale
            self.top_token = 0
            self.step = 0
            self._stack = contextlib.ExitStack()
            try:
                portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal(backend))
                self.portal = portal
                made = factory()
                if isinstance(made, AbstractAsyncContextManager):
                    self.store = self._stack.enter_context(portal.wrap_async_context_manager(made))
                else:
                    self.store = made
                    self.call(made.open)
                    self._stack.callback(self.call, made.close)
            except BaseException:
                self._stack.close()
                raise

        def teardown(self) -> None:
            self._stack.close()

        def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
            return self.portal.call(functools.partial(fn, *args, **kwargs))

        def job(self, index: int) -> _ModelJob:
            return self.jobs[index % len(self.jobs)]

        def some_lease(self, job_id: str | None = None) -> st.SearchStrategy[Lease]:
            """A lease, of ``job_id`` if given; half the time one that is still held."""
            leases = [x for x in self.leases if job_id is None or x.job_id == job_id]
            jobs = {j.id: j for j in self.jobs}
            held = [x for x in leases if jobs[x.job_id].holds(x) is not None]
            any_lease = st.sampled_from(leases)
            return st.one_of(st.sampled_from(held), any_lease) if held else any_lease

        # -- rules ------------------------------------------------------------------------------

        @initialize(
            specs=st.lists(
                st.tuples(st.integers(-1, 1), st.sampled_from(_TYPES)), min_size=1, max_size=3
            )
        )
        def create_jobs(self, specs: list[tuple[int, str]]) -> None:
            now = datetime.now(UTC)
            for seq, (priority, type_) in enumerate(specs):
                job = make_job(
                    id=f"job{seq}-{uuid.uuid4().hex[:8]}",
                    type=type_,
                    priority=priority,
                    created_at=now + timedelta(milliseconds=seq),
                )
                self.call(self.store.create_job, job)
                self.jobs.append(_ModelJob(id=job.id, type=type_, priority=priority, seq=seq))

        def draw_items(
            self, job: _ModelJob, data: st.DataObject, earlier: Sequence[str] = ()
        ) -> list[EncodedItem]:
            """New ids, maybe with ids the job (or ``earlier`` batches of the call) has and a
            repeat of a new one, in random order."""
            fresh = [f"i{job.next_item + k}" for k in range(data.draw(st.integers(0, 4)))]
            job.next_item += len(fresh)
            known = sorted({*job.payloads, *earlier})
            ids = fresh + (data.draw(st.lists(st.sampled_from(known), max_size=2)) if known else [])
            repeat: bool = data.draw(st.booleans())
            if fresh and repeat:
                ids.append(fresh[0])
            ids = data.draw(st.permutations(ids))
            self.step += 1
            return [
                (i, encode_json({"id": i, "step": self.step, "k": k})) for k, i in enumerate(ids)
            ]

        def check_add(
            self, job: _ModelJob, batches: list[list[EncodedItem]], add: Callable[[], list[str]]
        ) -> None:
            """Call ``add`` (which adds ``batches``) and check it against the model."""
            if job.sealed or job.terminal:  # nothing is stored
                with pytest.raises(JobClosed):
                    add()
                return
            refused = add()
            expected: list[str] = []
            for items in batches:
                accepted: list[str] = []
                for item_id, payload in items:
                    if item_id in job.payloads:
                        expected.append(item_id)
                    else:
                        job.payloads[item_id] = payload
                        accepted.append(item_id)
                if accepted:
                    job.batches.append(_ModelBatch(no=len(job.batches), items=accepted))
            assert refused == expected

        @rule(index=job_index, data=st.data())
        def add_batch(self, index: int, data: st.DataObject) -> None:
            job = self.job(index)
            items = self.draw_items(job, data)
            self.check_add(job, [items], lambda: self.call(self.store.add_batch, job.id, items))

        @rule(index=job_index, data=st.data(), count=st.integers(0, 3))
        def add_batches(self, index: int, data: st.DataObject, count: int) -> None:
            job = self.job(index)
            batches: list[list[EncodedItem]] = []
            for _ in range(count):
                earlier = [item_id for items in batches for item_id, _ in items]
                batches.append(self.draw_items(job, data, earlier))
            self.check_add(job, batches, lambda: self.call(self.store.add_batches, job.id, batches))

        @rule(index=job_index)
        def seal(self, index: int) -> None:
            job = self.job(index)
            if job.terminal:
                return  # unspecified whether a terminal job can still be sealed
            job.sealed = True
            assert self.call(self.store.seal_job, job.id) == job.progress()

        @rule(
            worker=st.sampled_from(["w1", "w2"]),
            expire_at_once=st.booleans(),
            of_job=st.none() | job_index,
            exclude=st.sets(job_index, max_size=2),
            types=st.none() | st.sets(st.sampled_from(_TYPES)),
        )
        def claim(
            self,
            worker: str,
            expire_at_once: bool,
            of_job: int | None,
            exclude: set[int],
            types: set[str] | None,
        ) -> None:
            lease_seconds = 0.0 if expire_at_once else LONG_LEASE
            if of_job is not None:
                order = [self.job(of_job)]
                got = self.call(
                    self.store.claim_batch,
                    worker_id=worker,
                    lease_seconds=lease_seconds,
                    job_id=order[0].id,
                )
            else:
                excluded = {self.job(i).id for i in exclude}
                order = sorted(
                    (
                        j
                        for j in self.jobs
                        if j.id not in excluded and (types is None or j.type in types)
                    ),
                    key=lambda j: (-j.priority, j.seq),
                )
                got = self.call(
                    self.store.claim_batch,
                    worker_id=worker,
                    lease_seconds=lease_seconds,
                    exclude=excluded,
                    types=types,
                )
            expected = next(((j, j.claimable()) for j in order if j.claimable()), None)
            if expected is None:
                assert got is None
                return
            job, candidates = expected
            assert got is not None, f"expected a batch of {job.id}, got None"
            assert got.lease.job_id == job.id
            assert (got.job.id, got.job.type, got.job.priority) == (job.id, job.type, job.priority)
            assert got.lease.batch_no in [b.no for b in candidates]
            batch = job.batches[got.lease.batch_no]
            missing = [(i, job.payloads[i]) for i in batch.items if i not in batch.finished]
            assert decoded(got.items) == decoded(missing)
            assert got.claims == batch.claims + 1
            assert got.lease.token > self.top_token
            self.top_token = got.lease.token
            self.leases.append(got.lease)
            batch.state, batch.token = _LEASED, got.lease.token
            batch.expired = expire_at_once
            batch.claims += 1
            if job.status is JobStatus.PENDING:
                job.status = JobStatus.PROCESSING
                job.started = True

        @precondition(lambda self: bool(self.leases))
        @rule(data=st.data())
        def record(self, data: st.DataObject) -> None:
            first = data.draw(self.some_lease())
            job = next(j for j in self.jobs if j.id == first.job_id)
            leases = [first, *data.draw(st.lists(self.some_lease(job.id), max_size=1))]
            reports: list[BatchReport] = []
            for lease in leases:
                batch = job.batches[lease.batch_no]
                ids = data.draw(
                    st.lists(st.sampled_from(batch.items), max_size=len(batch.items) + 1)
                )
                missing = set(batch.items) - batch.finished - set(ids)
                done = not missing and data.draw(st.booleans())
                rows: list[OutcomeRow] = []
                for item_id in ids:
                    self.step += 1
                    result = {"step": self.step}
                    rows.append(
                        ok_row(item_id, result) if data.draw(st.booleans()) else fail_row(item_id)
                    )
                reports.append(BatchReport(lease=lease, outcomes=rows, done=done))
            got = self.call(self.store.record, job.id, reports)
            if job.terminal:
                assert attrs.evolve(got, lost=()) == job.progress()
                return
            lost: list[int] = []
            for report_ in reports:
                held = job.holds(report_.lease)
                if held is None:
                    lost.append(report_.lease.batch_no)
                    continue
                for row in report_.outcomes:
                    if row.item_id not in held.finished:
                        held.finished.add(row.item_id)
                        value = json.loads(row.result) if row.result is not None else None
                        job.outcomes.append((row.item_id, row.ok, value))
                        job.error_count += not row.ok
                if report_.done:
                    held.state = _DONE
            assert got == job.progress(tuple(lost))

        @precondition(lambda self: bool(self.leases))
        @rule(data=st.data(), expire_at_once=st.booleans(), ghost=st.booleans())
        def renew(self, data: st.DataObject, expire_at_once: bool, ghost: bool) -> None:
            leases = data.draw(st.lists(self.some_lease(), unique=True, min_size=1, max_size=3))
            if ghost:
                leases.append(GHOST_LEASE)
            lease_seconds = 0.0 if expire_at_once else LONG_LEASE
            got = self.call(self.store.renew_leases, "w1", leases, lease_seconds)
            jobs = {j.id: j for j in self.jobs}
            ended = {lease.job_id for lease in leases if lease.job_id not in jobs}
            ended |= {
                lease.job_id
                for lease in leases
                if lease.job_id in jobs and jobs[lease.job_id].terminal
            }
            lost: set[Lease] = set()
            for lease in leases:
                batch = jobs[lease.job_id].holds(lease) if lease.job_id in jobs else None
                if batch is None:
                    lost.add(lease)
                else:
                    batch.expired = expire_at_once
            assert set(got.lost) == lost
            assert len(got.lost) == len(lost)
            assert got.ended_jobs == frozenset(ended)

        @precondition(lambda self: bool(self.leases))
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            leases = data.draw(st.lists(self.some_lease(), unique=True, min_size=1, max_size=3))
            self.call(self.store.release, leases)
            jobs = {j.id: j for j in self.jobs}
            for lease in leases:
                batch = jobs[lease.job_id].holds(lease)
                if batch is not None:
                    batch.state, batch.expired = _PENDING, False
                    batch.claims = max(batch.claims - 1, 1)  # a release gives its claim back

        @rule(
            index=job_index,
            status=st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]),
            with_error=st.booleans(),
        )
        def finish(self, index: int, status: JobStatus, with_error: bool) -> None:
            job = self.job(index)
            error = job_error(None, "stopped") if with_error else None
            got, changed = self.call(self.store.finish_job, job.id, status, error)
            if job.terminal:
                assert not changed
                assert got == job.frozen
                return
            if status is JobStatus.COMPLETED and not job.complete:
                assert not changed  # refused: a job completes only with every outcome in
                assert got.status is job.status
                assert got.completed_at is None
                return
            assert changed
            assert got.status is status
            assert got.completed_at is not None
            job.status = status
            job.started = True
            job.error_count += with_error
            job.frozen = got

        @rule(index=job_index, failed=st.sampled_from([None, True, False]), limit=st.integers(1, 4))
        def read_outcomes(self, index: int, failed: bool | None, limit: int) -> None:
            job = self.job(index)
            rows = self.call(read_all_outcomes, self.store, job.id, failed=failed, limit=limit)
            expected = [o for o in job.outcomes if failed is None or o[1] is not failed]
            got = [(o.item_id, o.status is ItemStatus.SUCCEEDED, o.result) for o in rows]
            assert got == expected

        @rule(index=job_index, limit=st.integers(1, 3))
        def read_failed_items(self, index: int, limit: int) -> None:
            job = self.job(index)
            store = self.store

            async def read_all() -> list[EncodedItem]:
                return await read_pages(
                    lambda cursor: store.read_failed_items(job.id, cursor=cursor, limit=limit)
                )

            expected = [(i, job.payloads[i]) for i, ok, _ in job.outcomes if not ok]
            assert decoded(self.call(read_all)) == decoded(expected)

        # -- invariants -------------------------------------------------------------------------

        @invariant()
        def snapshots_match_the_model(self) -> None:
            store = self.store

            async def read() -> list[tuple[Job, Progress]]:
                # One portal call per step: crossing threads costs more than the reads.
                return [(await store.get_job(j.id), await store.progress(j.id)) for j in self.jobs]

            for job, (snap, stored) in zip(self.jobs, self.call(read), strict=True):
                progress = job.progress()
                assert stored == progress
                assert (snap.status, snap.sealed, snap.total_items) == (
                    job.status,
                    job.sealed,
                    progress.total,
                )
                assert (snap.succeeded_items, snap.failed_items) == (
                    progress.succeeded,
                    progress.failed,
                )
                assert snap.processed_items == len(job.outcomes)
                assert snap.error_count == job.error_count
                assert len(snap.errors) == min(job.error_count, MAX_ERRORS)
                assert (snap.started_at is not None) == job.started
                assert (snap.completed_at is not None) == job.terminal
                assert (snap.result is not None) == job.terminal
                if job.frozen is not None:
                    assert snap == job.frozen, "a terminal job changed"

    StoreMachine.TestCase.settings = settings or hypothesis_settings(
        max_examples=50,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return StoreMachine.TestCase
