"""The contract every :class:`bulkpipe.JobStore` must meet, as tests a store author can reuse.

Import this module from test code only: it needs pytest, and :func:`store_state_machine` needs
hypothesis (both in the ``dev`` extra). Nothing in bulkpipe itself imports it.

Two pieces prove a store:

* :class:`StoreContract`, a pytest base class of small example tests. Subclass it in a
  ``Test*`` class and provide a fresh, empty, opened store, either by overriding
  :meth:`StoreContract.make_store` (the base ``store`` fixture opens and closes it) or by
  overriding the ``store`` fixture itself when the store needs other fixtures::

      class TestSQLiteStore(StoreContract):
          @pytest.fixture
          async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
              store = SQLiteStore(tmp_path / "jobs.db")
              await store.open()
              yield store
              await store.close()

  The tests are marked ``anyio``; run them under anyio's pytest plugin with an
  ``anyio_backend`` fixture (bulkpipe's own suite runs each on asyncio and trio).

* :func:`store_state_machine`, a hypothesis state machine that drives a store through random
  sequences of calls and checks it against a small pure-Python model::

      TestSQLiteStateful = store_state_machine(lambda: SQLiteStore(":memory:"))

The helpers (:func:`make_job`, :func:`encoded`, :func:`ok_row`, :func:`fail_row`, ...) build
the records the store protocol takes, with sensible defaults.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import unittest
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio
import attrs
import pytest

from ._snapshot import MAX_ERRORS
from .errors import JobNotFound, StoreError
from .items import encode_json
from .models import ItemOutcome, ItemStatus, Job, JobStatus, ProcessingError
from .options import JobOptions
from .store import (
    BatchReport,
    ClaimedBatch,
    EncodedItem,
    JobStore,
    Lease,
    OutcomeRow,
    Page,
    Progress,
)

if TYPE_CHECKING:
    from hypothesis import settings as Settings

__all__ = [
    "LONG_LEASE",
    "StoreContract",
    "StoreFactory",
    "add_job",
    "claim",
    "decoded",
    "encoded",
    "fail_row",
    "job_error",
    "make_job",
    "ok_row",
    "read_all_outcomes",
    "report",
    "store_state_machine",
]

T = TypeVar("T")

#: A lease long enough never to expire during a test, in seconds.
LONG_LEASE = 3600.0

#: Builds a fresh, empty store: unopened (the caller opens and closes it), or an async
#: context manager that yields it opened.
StoreFactory = Callable[[], JobStore | AbstractAsyncContextManager[JobStore]]


# -- helpers ------------------------------------------------------------------------------------


def make_job(
    *,
    id: str | None = None,
    type: str = "demo",
    priority: int = 0,
    options: JobOptions | None = None,
    created_at: datetime | None = None,
    retry_of: str | None = None,
    owner: str | None = None,
    source: str | None = None,
    params: dict[str, Any] | None = None,
) -> Job:
    """A new pending job, as ``Pipeline.submit`` hands it to ``create_job``."""
    return Job(
        id=id or uuid.uuid4().hex,
        type=type,
        status=JobStatus.PENDING,
        progress=0.0,
        total_items=0,
        processed_items=0,
        succeeded_items=0,
        failed_items=0,
        errors=[],
        error_count=0,
        options=options or JobOptions(),
        priority=priority,
        retry_of=retry_of,
        owner=owner,
        source=source,
        params=params,
        created_at=created_at or datetime.now(UTC),
    )


def encoded(n: int, start: int = 0, *, prefix: str = "item-") -> list[EncodedItem]:
    """``n`` stored items with ids ``item-<start>`` on and small JSON payloads."""
    return [
        (f"{prefix}{i}", encode_json({"id": f"{prefix}{i}", "n": i, "tags": ["x", i % 3]}))
        for i in range(start, start + n)
    ]


def ok_row(item_id: str, result: Any = None, *, attempts: int = 1) -> OutcomeRow:
    """A succeeded outcome; ``result`` is a Python value, stored as JSON (None: no result)."""
    now = time.time()
    return OutcomeRow(
        item_id=item_id,
        ok=True,
        result=None if result is None else encode_json(result),
        error=None,
        error_type=None,
        attempts=attempts,
        started_at=now - 0.01,
        finished_at=now,
    )


def fail_row(
    item_id: str, error: str = "boom", error_type: str = "ValueError", *, attempts: int = 1
) -> OutcomeRow:
    """A failed outcome."""
    now = time.time()
    return OutcomeRow(
        item_id=item_id,
        ok=False,
        result=None,
        error=error,
        error_type=error_type,
        attempts=attempts,
        started_at=now - 0.01,
        finished_at=now,
    )


def job_error(item_id: str | None = None, error: str = "rejected") -> ProcessingError:
    """A job-level error, as ``add_errors`` and ``finish_job`` take."""
    return ProcessingError(
        item_id=item_id, error=error, error_type="InvalidItem", timestamp=datetime.now(UTC)
    )


def report(
    claimed: ClaimedBatch | Lease,
    rows: Sequence[OutcomeRow] | None = None,
    *,
    done: bool = True,
) -> BatchReport:
    """A report for a claimed batch; by default every claimed item succeeded."""
    lease = claimed if isinstance(claimed, Lease) else claimed.lease
    if rows is None:
        assert isinstance(claimed, ClaimedBatch), "pass rows when reporting on a bare lease"
        rows = [ok_row(item_id) for item_id, _ in claimed.items]
    return BatchReport(lease=lease, outcomes=list(rows), done=done)


async def add_job(
    store: JobStore, *batches: Sequence[EncodedItem], seal: bool = False, **fields: Any
) -> Job:
    """Create a job (``fields`` go to :func:`make_job`), add ``batches``, optionally seal it."""
    job = make_job(**fields)
    await store.create_job(job)
    for batch in batches:
        await store.add_batch(job.id, batch)
    if seal:
        await store.seal_job(job.id)
    return job


async def claim(
    store: JobStore,
    job_id: str | None = None,
    *,
    worker_id: str = "w1",
    lease_seconds: float = LONG_LEASE,
    exclude: Collection[str] = (),
    types: Collection[str] | None = None,
) -> ClaimedBatch:
    """Claim a batch that the test expects to be there."""
    claimed = await store.claim_batch(
        worker_id=worker_id,
        lease_seconds=lease_seconds,
        job_id=job_id,
        exclude=exclude,
        types=types,
    )
    assert claimed is not None, "expected a batch to claim, got None"
    return claimed


async def read_all_outcomes(
    store: JobStore, job_id: str, *, failed: bool | None = None, limit: int = 1000
) -> list[ItemOutcome]:
    """Every outcome of a job, following cursors."""
    return await _read_all(
        lambda cursor: store.read_outcomes(job_id, failed=failed, cursor=cursor, limit=limit)
    )


async def _read_all(read: Callable[[int | None], Awaitable[Page[T]]]) -> list[T]:
    """Follow cursors to the end, checking that they increase and that no page is empty."""
    rows: list[T] = []
    cursor: int | None = None
    while True:
        page = await read(cursor)
        if cursor is not None:
            assert page.rows, f"cursor {cursor} led to an empty page; the previous cursor was None"
            assert page.cursor is None or page.cursor > cursor, "cursors must increase"
        rows.extend(page.rows)
        if page.cursor is None:
            return rows
        cursor = page.cursor


def decoded(items: Sequence[EncodedItem]) -> list[tuple[str, Any]]:
    """Items with their payloads parsed, so that stores may re-format the JSON text."""
    return [(item_id, json.loads(payload)) for item_id, payload in items]


def _near(a: datetime | None, b: datetime, slack: float = 0.001) -> bool:
    return a is not None and abs((a - b).total_seconds()) <= slack


def _epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# -- the example-based contract -----------------------------------------------------------------

_T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _at(seconds: int) -> datetime:
    return _T0 + timedelta(seconds=seconds)


_UNKNOWN = "no-such-job"
_GHOST_LEASE = Lease(job_id=_UNKNOWN, batch_no=0, token=1)

_JOB_ID_CALLS: dict[str, Callable[[JobStore], Awaitable[object]]] = {
    "add_batch": lambda s: s.add_batch(_UNKNOWN, encoded(1)),
    "add_batches": lambda s: s.add_batches(_UNKNOWN, [encoded(1), encoded(1, 1)]),
    "add_errors": lambda s: s.add_errors(_UNKNOWN, [job_error()], 1),
    "seal_job": lambda s: s.seal_job(_UNKNOWN),
    "record": lambda s: s.record(_UNKNOWN, [report(_GHOST_LEASE, [ok_row("item-0")])]),
    "record_empty": lambda s: s.record(_UNKNOWN, []),
    "finish_job": lambda s: s.finish_job(_UNKNOWN, JobStatus.CANCELLED),
    "get_job": lambda s: s.get_job(_UNKNOWN),
    "read_outcomes": lambda s: s.read_outcomes(_UNKNOWN),
    "read_failed_items": lambda s: s.read_failed_items(_UNKNOWN),
}


class StoreContract:
    """Example tests of every :class:`JobStore` semantic; subclass it to test a store.

    Override :meth:`make_store`, or the ``store`` fixture, to provide a fresh, empty store.
    ``short_lease`` and ``lease_wait`` set the lease-expiry tests' timing; raise them for a
    store whose clock is coarse.
    """

    short_lease: ClassVar[float] = 0.05
    lease_wait: ClassVar[float] = 0.1

    def make_store(self) -> JobStore:
        """A new, unopened, empty store."""
        raise NotImplementedError(
            f"{type(self).__name__}: override make_store() or the store fixture"
        )

    @pytest.fixture
    async def store(self) -> AsyncIterator[JobStore]:
        """A fresh store, opened for the test and closed after it."""
        store = self.make_store()
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    # -- jobs -----------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_create_and_get_job(self, store: JobStore) -> None:
        options = JobOptions(batch_size=7, max_retries=1, id_key="key")
        job = make_job(
            type="scoring",
            priority=3,
            options=options,
            retry_of="old-job",
            owner="team-a",
            source="nodes",
            params={"limit": 5, "tags": ["a"]},
        )
        await store.create_job(job)
        got = await store.get_job(job.id)
        assert (got.id, got.type, got.status, got.priority) == (
            job.id,
            "scoring",
            JobStatus.PENDING,
            3,
        )
        assert got.options == options
        assert (got.retry_of, got.owner) == ("old-job", "team-a")
        assert (got.source, got.params) == ("nodes", job.params)
        assert not got.sealed
        assert (got.total_items, got.processed_items, got.succeeded_items) == (0, 0, 0)
        assert (got.failed_items, got.rejected_items, got.error_count) == (0, 0, 0)
        assert got.errors == []
        assert got.result is None
        assert _near(got.created_at, job.created_at)
        assert got.started_at is None
        assert got.completed_at is None

    @pytest.mark.anyio
    async def test_create_job_twice_raises_store_error(self, store: JobStore) -> None:
        job = await add_job(store)
        with pytest.raises(StoreError):
            await store.create_job(job)

    @pytest.mark.anyio
    async def test_list_jobs_newest_first(self, store: JobStore) -> None:
        jobs = [await add_job(store, created_at=_at(i)) for i in range(4)]
        listed = await store.list_jobs()
        assert [j.id for j in listed] == [j.id for j in reversed(jobs)]

    @pytest.mark.anyio
    async def test_list_jobs_filters_by_status(self, store: JobStore) -> None:
        a, b, c = [await add_job(store, created_at=_at(i)) for i in range(3)]
        await store.finish_job(a.id, JobStatus.CANCELLED)
        await store.finish_job(c.id, JobStatus.CANCELLED)
        cancelled = await store.list_jobs(status=JobStatus.CANCELLED)
        assert [j.id for j in cancelled] == [c.id, a.id]
        assert [j.id for j in await store.list_jobs(status=JobStatus.PENDING)] == [b.id]
        assert await store.list_jobs(status=JobStatus.COMPLETED) == []

    @pytest.mark.anyio
    async def test_list_jobs_filters_by_owner(self, store: JobStore) -> None:
        a = await add_job(store, owner="ann", created_at=_at(0))
        await add_job(store, owner="bob", created_at=_at(1))
        c = await add_job(store, owner="ann", created_at=_at(2))
        await add_job(store, created_at=_at(3))
        await store.finish_job(c.id, JobStatus.CANCELLED)
        assert [j.id for j in await store.list_jobs(owner="ann")] == [c.id, a.id]
        assert [j.id for j in await store.list_jobs(owner="ann", limit=1, offset=1)] == [a.id]
        pending = await store.list_jobs(owner="ann", status=JobStatus.PENDING)
        assert [j.id for j in pending] == [a.id]
        assert await store.list_jobs(owner="eve") == []
        assert len(await store.list_jobs()) == 4

    @pytest.mark.anyio
    async def test_list_jobs_offset_and_limit(self, store: JobStore) -> None:
        jobs = [await add_job(store, created_at=_at(i)) for i in range(5)]
        newest_first = [j.id for j in reversed(jobs)]
        assert [j.id for j in await store.list_jobs(limit=2)] == newest_first[:2]
        assert [j.id for j in await store.list_jobs(limit=2, offset=2)] == newest_first[2:4]
        assert [j.id for j in await store.list_jobs(limit=2, offset=4)] == newest_first[4:]
        assert await store.list_jobs(offset=5) == []

    @pytest.mark.anyio
    @pytest.mark.parametrize("method", sorted(_JOB_ID_CALLS))
    async def test_unknown_job_id_raises_job_not_found(self, store: JobStore, method: str) -> None:
        await add_job(store, encoded(2))
        with pytest.raises(JobNotFound) as info:
            await _JOB_ID_CALLS[method](store)
        assert info.value.job_id == _UNKNOWN

    @pytest.mark.anyio
    async def test_claim_unknown_job_id_finds_nothing(self, store: JobStore) -> None:
        await add_job(store, encoded(2))
        # Either answer is acceptable: there is nothing of that job to claim.
        with contextlib.suppress(JobNotFound):
            got = await store.claim_batch(worker_id="w1", lease_seconds=LONG_LEASE, job_id=_UNKNOWN)
            assert got is None

    @pytest.mark.anyio
    async def test_release_ignores_unknown_job(self, store: JobStore) -> None:
        await store.release([_GHOST_LEASE])

    # -- submission -----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_add_batch_numbers_batches_from_zero(self, store: JobStore) -> None:
        job = await add_job(store)
        for start in (0, 3, 6):
            assert await store.add_batch(job.id, encoded(3, start)) == []
        assert (await store.get_job(job.id)).total_items == 9
        for no, start in enumerate((0, 3, 6)):
            claimed = await claim(store, job.id)
            assert claimed.lease.batch_no == no
            assert decoded(claimed.items) == decoded(encoded(3, start))
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None

    @pytest.mark.anyio
    async def test_add_batch_refuses_ids_the_job_already_has(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3))
        refused = await store.add_batch(job.id, encoded(4, 1))  # 1, 2 are repeats
        assert refused == ["item-1", "item-2"]
        assert (await store.get_job(job.id)).total_items == 5
        await claim(store, job.id)
        second = await claim(store, job.id)
        assert decoded(second.items) == decoded(encoded(2, 3))

    @pytest.mark.anyio
    async def test_add_batch_refuses_ids_repeated_in_one_call(self, store: JobStore) -> None:
        job = await add_job(store)
        first, second = encoded(2)
        again = (first[0], encode_json({"id": first[0], "second": True}))
        refused = await store.add_batch(job.id, [first, second, again, again])
        assert refused == [first[0], first[0]]
        claimed = await claim(store, job.id)
        assert decoded(claimed.items) == decoded([first, second])  # the first payload is kept
        assert (await store.get_job(job.id)).total_items == 2

    @pytest.mark.anyio
    async def test_add_batch_of_only_repeats_makes_no_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        assert await store.add_batch(job.id, encoded(2)) == ["item-0", "item-1"]
        assert await store.add_batch(job.id, []) == []
        await store.add_batch(job.id, encoded(1, 2))
        assert (await claim(store, job.id)).lease.batch_no == 0
        assert (await claim(store, job.id)).lease.batch_no == 1
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None
        progress = await store.record(job.id, [])
        assert (progress.total, progress.open_batches) == (3, 2)

    @pytest.mark.anyio
    async def test_seal_returns_progress(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(3, 2))
        progress = await store.seal_job(job.id)
        assert progress == Progress(
            status=JobStatus.PENDING, sealed=True, total=5, succeeded=0, failed=0, open_batches=2
        )
        assert (await store.get_job(job.id)).sealed

    @pytest.mark.anyio
    async def test_add_batch_after_seal_raises_store_error(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), seal=True)
        with pytest.raises(StoreError):
            await store.add_batch(job.id, encoded(2, 2))
        assert (await store.get_job(job.id)).total_items == 2

    @pytest.mark.anyio
    async def test_add_batch_on_terminal_job_stores_nothing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        before, _ = await store.finish_job(job.id, JobStatus.CANCELLED)
        assert await store.add_batch(job.id, encoded(3)) == []
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_add_batches_numbers_on_across_calls_and_add_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        assert await store.add_batches(job.id, [encoded(2, 2), encoded(1, 4)]) == []
        assert await store.add_batch(job.id, encoded(1, 5)) == []
        assert await store.add_batches(job.id, [encoded(2, 6)]) == []
        starts_sizes = [(0, 2), (2, 2), (4, 1), (5, 1), (6, 2)]
        for no, (start, size) in enumerate(starts_sizes):
            claimed = await claim(store, job.id)
            assert claimed.lease.batch_no == no
            assert decoded(claimed.items) == decoded(encoded(size, start))
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None
        progress = await store.record(job.id, [])
        assert (progress.total, progress.open_batches) == (8, 5)

    @pytest.mark.anyio
    async def test_add_batches_refuses_repeats_within_and_across_batches_and_calls(
        self, store: JobStore
    ) -> None:
        job = await add_job(store, encoded(2))  # item-0, item-1
        i0, i1, i2, i3, i4, i5 = encoded(6)
        i2_again = (i2[0], encode_json({"id": i2[0], "second": True}))
        refused = await store.add_batches(job.id, [[i1, i2, i2_again], [i2_again, i3, i0], [i4]])
        assert refused == [i1[0], i2[0], i2[0], i0[0]]
        assert await store.add_batches(job.id, [[i3, i5]]) == [i3[0]]
        batches = [await claim(store, job.id) for _ in range(5)]
        assert [c.lease.batch_no for c in batches] == [0, 1, 2, 3, 4]
        # The first payload of item-2 is kept.
        assert [decoded(c.items) for c in batches[1:]] == [decoded([i]) for i in (i2, i3, i4, i5)]
        assert (await store.get_job(job.id)).total_items == 6

    @pytest.mark.anyio
    async def test_add_batches_all_repeat_batch_makes_no_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        batches = [encoded(2), encoded(1, 2), encoded(1), [], encoded(1, 3)]
        assert await store.add_batches(job.id, batches) == ["item-0", "item-1", "item-0"]
        assert await store.add_batches(job.id, [encoded(2)]) == ["item-0", "item-1"]
        await store.add_batch(job.id, encoded(1, 4))
        claims = [await claim(store, job.id) for _ in range(4)]
        assert [c.lease.batch_no for c in claims] == [0, 1, 2, 3]
        assert [c.items[0][0] for c in claims[1:]] == ["item-2", "item-3", "item-4"]
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None
        progress = await store.record(job.id, [])
        assert (progress.total, progress.open_batches) == (5, 4)

    @pytest.mark.anyio
    async def test_add_batches_of_nothing_is_a_no_op(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        assert await store.add_batches(job.id, []) == []
        assert await store.add_batches(job.id, [[], []]) == []
        progress = await store.record(job.id, [])
        assert (progress.total, progress.open_batches) == (2, 1)
        await store.add_batches(job.id, [encoded(1, 2)])
        await claim(store, job.id)
        assert (await claim(store, job.id)).lease.batch_no == 1

    @pytest.mark.anyio
    async def test_add_batches_after_seal_raises_store_error(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), seal=True)
        with pytest.raises(StoreError):
            await store.add_batches(job.id, [encoded(1, 2), encoded(1, 3)])
        assert (await store.get_job(job.id)).total_items == 2

    @pytest.mark.anyio
    async def test_add_batches_on_terminal_job_stores_nothing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        before, _ = await store.finish_job(job.id, JobStatus.CANCELLED)
        assert await store.add_batches(job.id, [encoded(3), encoded(2, 3)]) == []
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_add_errors_keeps_the_first_errors_and_counts_all(self, store: JobStore) -> None:
        job = await add_job(store)
        errors = [job_error(f"e{i}", f"error {i}") for i in range(MAX_ERRORS + 5)]
        await store.add_errors(job.id, errors[:3], rejected=3)
        await store.add_errors(job.id, errors[3:], rejected=len(errors) - 3)
        await store.add_errors(job.id, [], rejected=2)
        got = await store.get_job(job.id)
        assert [e.item_id for e in got.errors] == [f"e{i}" for i in range(MAX_ERRORS)]
        assert got.errors[0].error == "error 0"
        assert got.error_count == MAX_ERRORS + 5
        assert got.rejected_items == MAX_ERRORS + 7

    # -- claiming -------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_claim_finds_nothing_in_an_empty_store(self, store: JobStore) -> None:
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None
        await add_job(store)
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None

    @pytest.mark.anyio
    async def test_claim_returns_the_job_spec_lease_and_items(self, store: JobStore) -> None:
        options = JobOptions(batch_size=3, concurrency=2)
        job = await add_job(store, encoded(3), type="scoring", priority=2, options=options)
        claimed = await claim(store, worker_id="w7")
        assert (claimed.job.id, claimed.job.type, claimed.job.priority) == (job.id, "scoring", 2)
        assert claimed.job.options == options
        assert (claimed.lease.job_id, claimed.lease.batch_no) == (job.id, 0)
        assert claimed.claims == 1
        assert decoded(claimed.items) == decoded(encoded(3))

    @pytest.mark.anyio
    async def test_claim_orders_by_priority_then_creation(self, store: JobStore) -> None:
        low_old = await add_job(store, encoded(1), priority=0, created_at=_at(0))
        high_old = await add_job(store, encoded(1), priority=5, created_at=_at(1))
        high_new = await add_job(store, encoded(1), priority=5, created_at=_at(2))
        low_new = await add_job(store, encoded(1), priority=0, created_at=_at(3))
        negative = await add_job(store, encoded(1), priority=-1, created_at=_at(4))
        order = [(await claim(store)).job.id for _ in range(5)]
        assert order == [high_old.id, high_new.id, low_old.id, low_new.id, negative.id]
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None

    @pytest.mark.anyio
    async def test_claim_takes_a_jobs_pending_batches_in_order(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2), created_at=_at(0))
        other = await add_job(store, encoded(1), created_at=_at(1))
        first = [await claim(store) for _ in range(3)]
        assert [(c.job.id, c.lease.batch_no) for c in first] == [(job.id, n) for n in range(3)]
        assert (await claim(store)).job.id == other.id

    @pytest.mark.anyio
    async def test_claim_filters_by_type(self, store: JobStore) -> None:
        a = await add_job(store, encoded(1), encoded(1, 1), type="a", created_at=_at(0))
        b = await add_job(store, encoded(1), type="b", created_at=_at(1))
        assert (await claim(store, types={"b"})).job.id == b.id
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, types=[]) is None
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, types=["c"]) is None
        assert (await claim(store, types=["a", "c"])).job.id == a.id
        assert (await claim(store, types=None)).job.id == a.id

    @pytest.mark.anyio
    async def test_claim_skips_excluded_jobs(self, store: JobStore) -> None:
        a = await add_job(store, encoded(1), created_at=_at(0))
        b = await add_job(store, encoded(1), created_at=_at(1))
        assert (await claim(store, exclude={a.id})).job.id == b.id
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, exclude=[a.id]) is None
        assert (await claim(store)).job.id == a.id

    @pytest.mark.anyio
    async def test_claim_of_a_given_job(self, store: JobStore) -> None:
        await add_job(store, encoded(1), priority=9)
        wanted = await add_job(store, encoded(1), priority=0)
        claimed = await claim(store, wanted.id)
        assert claimed.job.id == wanted.id
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=wanted.id) is None

    @pytest.mark.anyio
    async def test_first_claim_moves_job_to_processing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1))
        await claim(store)
        got = await store.get_job(job.id)
        assert got.status is JobStatus.PROCESSING
        assert got.started_at is not None
        assert got.started_at >= job.created_at - timedelta(seconds=1)
        await claim(store)
        again = await store.get_job(job.id)
        assert (again.status, again.started_at) == (JobStatus.PROCESSING, got.started_at)
        assert (await store.record(job.id, [])).status is JobStatus.PROCESSING

    @pytest.mark.anyio
    async def test_tokens_strictly_increase(self, store: JobStore) -> None:
        first = await add_job(store, encoded(1), encoded(1, 1))
        await add_job(store, encoded(1))
        tokens = [(await claim(store)).lease.token for _ in range(3)]
        await store.add_batch(first.id, encoded(1, 5))
        released = await claim(store, first.id)
        await store.release([released.lease])
        tokens.append((await claim(store, first.id)).lease.token)
        assert tokens == sorted(set(tokens))

    @pytest.mark.anyio
    async def test_unexpired_lease_is_not_claimed_again(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        await claim(store, lease_seconds=LONG_LEASE)
        assert await store.claim_batch(worker_id="w2", lease_seconds=1) is None
        assert await store.claim_batch(worker_id="w2", lease_seconds=1, job_id=job.id) is None

    @pytest.mark.anyio
    async def test_expired_lease_is_claimed_again(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        first = await claim(store, lease_seconds=self.short_lease)
        await anyio.sleep(self.lease_wait)
        second = await claim(store, worker_id="w2")
        assert (second.lease.job_id, second.lease.batch_no) == (job.id, 0)
        assert second.lease.token > first.lease.token
        assert second.claims == 2
        assert decoded(second.items) == decoded(encoded(2))

    @pytest.mark.anyio
    async def test_zero_lease_expires_at_once(self, store: JobStore) -> None:
        await add_job(store, encoded(1))
        first = await claim(store, lease_seconds=0)
        second = await claim(store, worker_id="w2", lease_seconds=0)
        third = await claim(store, worker_id="w3")
        assert first.lease.token < second.lease.token < third.lease.token
        assert third.claims == 3

    @pytest.mark.anyio
    async def test_pending_batches_go_before_expired_leases(self, store: JobStore) -> None:
        await add_job(store, encoded(1), encoded(1, 1))
        assert (await claim(store, lease_seconds=0)).lease.batch_no == 0
        assert (await claim(store)).lease.batch_no == 1
        assert (await claim(store)).lease.batch_no == 0

    @pytest.mark.anyio
    async def test_claim_again_returns_only_items_without_outcome(self, store: JobStore) -> None:
        job = await add_job(store, encoded(4))
        first = await claim(store, lease_seconds=0)
        rows = [ok_row("item-0"), fail_row("item-2")]
        await store.record(job.id, [report(first, rows, done=False)])
        second = await claim(store)
        assert decoded(second.items) == decoded([encoded(4)[1], encoded(4)[3]])
        assert second.claims == 2

    @pytest.mark.anyio
    async def test_terminal_job_is_never_claimed(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2))
        await claim(store, lease_seconds=0)
        await store.finish_job(job.id, JobStatus.CANCELLED)
        assert await store.claim_batch(worker_id="w1", lease_seconds=1) is None
        assert await store.claim_batch(worker_id="w1", lease_seconds=1, job_id=job.id) is None

    # -- recording ------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_record_stores_outcomes_and_counts(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3), encoded(2, 3), seal=True)
        claimed = await claim(store)
        rows = [ok_row("item-0"), fail_row("item-1", "bad", "KeyError", attempts=3)]
        rows.append(ok_row("item-2"))
        progress = await store.record(job.id, [report(claimed, rows)])
        assert progress == Progress(
            status=JobStatus.PROCESSING,
            sealed=True,
            total=5,
            succeeded=2,
            failed=1,
            open_batches=1,
        )
        got = await store.get_job(job.id)
        assert (got.succeeded_items, got.failed_items, got.processed_items) == (2, 1, 3)
        assert got.progress == pytest.approx(60.0)
        assert got.error_count == 1
        [error] = got.errors
        assert (error.item_id, error.error, error.error_type) == ("item-1", "bad", "KeyError")
        assert error.retry_count == 2
        assert got.updated_at is not None

    @pytest.mark.anyio
    async def test_record_with_a_stale_token_is_lost(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(1, 2))
        stale = await claim(store, lease_seconds=0)
        current = await claim(store, job.id, lease_seconds=0)
        assert current.lease.batch_no == 1
        fresh = await claim(store, job.id)
        assert fresh.lease.batch_no == 0
        progress = await store.record(job.id, [report(stale), report(current, done=False)])
        assert progress.lost == (0,)
        assert (progress.succeeded, progress.open_batches) == (1, 2)
        assert [o.item_id for o in await read_all_outcomes(store, job.id)] == ["item-2"]
        progress = await store.record(job.id, [report(fresh)])
        assert (progress.lost, progress.succeeded, progress.open_batches) == ((), 3, 1)

    @pytest.mark.anyio
    async def test_a_stale_and_a_current_report_of_one_batch_in_one_call(
        self, store: JobStore
    ) -> None:
        # One worker may hold a batch twice: its lease expired and it claimed it again.
        job = await add_job(store, encoded(2))
        stale = await claim(store, lease_seconds=0)
        current = await claim(store, job.id)
        assert current.lease.batch_no == stale.lease.batch_no
        progress = await store.record(
            job.id, [report(current, [], done=False), report(stale, done=False)]
        )
        assert progress.lost == (0,)
        assert (progress.succeeded, progress.failed) == (0, 0)  # the stale rows were refused
        assert await read_all_outcomes(store, job.id) == []

    @pytest.mark.anyio
    async def test_record_on_a_released_batch_is_lost(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        claimed = await claim(store)
        await store.release([claimed.lease])
        progress = await store.record(job.id, [report(claimed)])
        assert (progress.lost, progress.succeeded, progress.open_batches) == ((0,), 0, 1)

    @pytest.mark.anyio
    async def test_record_on_a_done_batch_is_lost(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed)])
        progress = await store.record(job.id, [report(claimed, [fail_row("item-0")])])
        assert (progress.lost, progress.succeeded, progress.failed) == ((0,), 2, 0)

    @pytest.mark.anyio
    async def test_first_outcome_wins(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [fail_row("item-0")], done=False)])
        rows = [ok_row("item-0"), ok_row("item-1", 1), fail_row("item-1"), ok_row("item-2")]
        progress = await store.record(job.id, [report(claimed, rows)])
        assert (progress.succeeded, progress.failed, progress.open_batches) == (2, 1, 0)
        outcomes = await read_all_outcomes(store, job.id)
        assert [(o.item_id, o.status) for o in outcomes] == [
            ("item-0", ItemStatus.FAILED),
            ("item-1", ItemStatus.SUCCEEDED),
            ("item-2", ItemStatus.SUCCEEDED),
        ]
        assert outcomes[1].result == 1
        got = await store.get_job(job.id)
        assert (got.error_count, len(got.errors)) == (1, 1)

    @pytest.mark.anyio
    async def test_done_closes_the_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(2, 2))
        one, two = await claim(store), await claim(store)
        assert (await store.record(job.id, [report(one)])).open_batches == 1
        progress = await store.record(job.id, [report(two, [ok_row("item-2")], done=False)])
        assert progress.open_batches == 1
        progress = await store.record(job.id, [report(two, [ok_row("item-3")])])
        assert (progress.open_batches, progress.succeeded) == (0, 4)
        assert await store.claim_batch(worker_id="w1", lease_seconds=0) is None

    @pytest.mark.anyio
    async def test_record_on_a_terminal_job_writes_nothing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        claimed = await claim(store)
        before, _ = await store.finish_job(job.id, JobStatus.CANCELLED)
        progress = await store.record(job.id, [report(claimed)])
        assert progress.status is JobStatus.CANCELLED
        assert (progress.succeeded, progress.failed, progress.open_batches) == (0, 0, 1)
        assert await read_all_outcomes(store, job.id) == []
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_record_nothing_reads_progress(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(1, 2))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [fail_row("item-0")], done=False)])
        before = await store.get_job(job.id)
        progress = await store.record(job.id, [])
        assert progress == Progress(
            status=JobStatus.PROCESSING,
            sealed=False,
            total=3,
            succeeded=0,
            failed=1,
            open_batches=2,
        )
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_failed_outcomes_fill_the_capped_error_list(self, store: JobStore) -> None:
        n = MAX_ERRORS + 3
        job = await add_job(store, encoded(n))
        claimed = await claim(store)
        rows = [fail_row(item_id, f"error {i}") for i, (item_id, _) in enumerate(claimed.items)]
        await store.add_errors(job.id, [job_error()], rejected=1)
        await store.record(job.id, [report(claimed, rows)])
        got = await store.get_job(job.id)
        assert got.error_count == n + 1
        assert len(got.errors) == MAX_ERRORS
        assert got.errors[0].item_id is None
        assert got.errors[1].error == "error 0"

    # -- leases ---------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_renew_extends_held_leases(self, store: JobStore) -> None:
        await add_job(store, encoded(1))
        claimed = await claim(store, lease_seconds=self.short_lease)
        result = await store.renew_leases("w1", [claimed.lease], LONG_LEASE)
        assert (result.lost, result.ended_jobs) == ((), frozenset())
        await anyio.sleep(self.lease_wait)
        assert await store.claim_batch(worker_id="w2", lease_seconds=1) is None

    @pytest.mark.anyio
    async def test_renew_can_shorten_a_lease(self, store: JobStore) -> None:
        await add_job(store, encoded(1))
        claimed = await claim(store)
        await store.renew_leases("w1", [claimed.lease], 0)
        assert (await claim(store, worker_id="w2")).lease.batch_no == 0

    @pytest.mark.anyio
    async def test_renew_reports_lost_leases(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2))
        stale = await claim(store, lease_seconds=0)
        held = await claim(store, worker_id="w2")
        done = await claim(store, worker_id="w2")
        reclaimed = await claim(store, worker_id="w2")
        assert reclaimed.lease.batch_no == stale.lease.batch_no
        await store.record(job.id, [report(done)])
        leases = [stale.lease, held.lease, done.lease, reclaimed.lease]
        result = await store.renew_leases("w1", leases, LONG_LEASE)
        assert set(result.lost) == {stale.lease, done.lease}
        assert len(result.lost) == 2
        assert result.ended_jobs == frozenset()

    @pytest.mark.anyio
    async def test_renew_reports_ended_and_missing_jobs(self, store: JobStore) -> None:
        ended = await add_job(store, encoded(1))
        running = await add_job(store, encoded(1))
        a = await claim(store, ended.id)
        b = await claim(store, running.id)
        await store.finish_job(ended.id, JobStatus.CANCELLED)
        result = await store.renew_leases("w1", [a.lease, b.lease, _GHOST_LEASE], LONG_LEASE)
        assert result.ended_jobs == frozenset({ended.id, _UNKNOWN})
        assert set(result.lost) == {a.lease, _GHOST_LEASE}

    @pytest.mark.anyio
    async def test_release_makes_the_batch_claimable_at_once(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), encoded(1, 1), encoded(1, 2))
        zero, one = await claim(store), await claim(store)
        await store.release([zero.lease, one.lease])
        again = [await claim(store, worker_id="w2") for _ in range(3)]
        assert [c.lease.batch_no for c in again] == [0, 1, 2]
        assert [c.claims for c in again] == [2, 2, 1]
        assert again[0].lease.token > one.lease.token
        assert (await store.get_job(job.id)).status is JobStatus.PROCESSING

    @pytest.mark.anyio
    async def test_release_keeps_recorded_outcomes(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [ok_row("item-1")], done=False)])
        await store.release([claimed.lease])
        again = await claim(store)
        assert [item_id for item_id, _ in again.items] == ["item-0", "item-2"]
        progress = await store.record(job.id, [report(again)])
        assert (progress.succeeded, progress.open_batches) == (3, 0)

    @pytest.mark.anyio
    async def test_release_with_a_stale_token_does_nothing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1))
        stale = await claim(store, lease_seconds=0)
        current = await claim(store, worker_id="w2")
        await store.release([stale.lease])
        assert await store.claim_batch(worker_id="w3", lease_seconds=1) is None
        progress = await store.record(job.id, [report(current)])
        assert (progress.lost, progress.succeeded) == ((), 1)

    # -- finishing ------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_finish_job_happens_exactly_once(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), seal=True)
        claimed = await claim(store)
        await store.record(job.id, [report(claimed)])
        done, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        assert done.status is JobStatus.COMPLETED
        assert done.completed_at is not None
        assert done.started_at is not None
        assert done.completed_at >= done.started_at
        again, changed = await store.finish_job(job.id, JobStatus.CANCELLED, job_error())
        assert not changed
        assert again == done
        assert await store.get_job(job.id) == done

    @pytest.mark.anyio
    async def test_finish_job_completed_is_refused_until_every_outcome_is_in(
        self, store: JobStore
    ) -> None:
        job = await add_job(store, encoded(2), encoded(1, 2))

        async def refused() -> None:
            before = await store.get_job(job.id)
            got, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
            assert not changed
            assert got == before
            assert await store.get_job(job.id) == before

        await refused()  # not sealed, no outcome
        first = await claim(store)
        await store.record(job.id, [report(first)])
        await refused()  # not sealed, though every batch so far is done
        await store.seal_job(job.id)
        second = await claim(store)
        await refused()  # a batch is leased
        await store.record(job.id, [report(second, [], done=False)])
        await refused()  # ... and holds no outcome
        await store.record(job.id, [report(second)])
        done, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        assert (done.status, done.succeeded_items, done.total_items) == (JobStatus.COMPLETED, 3, 3)

    @pytest.mark.anyio
    async def test_finish_job_completes_a_sealed_empty_job(self, store: JobStore) -> None:
        job = await add_job(store, seal=True)
        done, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        assert done.status is JobStatus.COMPLETED

    @pytest.mark.anyio
    async def test_finish_job_may_fail_or_cancel_an_incomplete_job(self, store: JobStore) -> None:
        failing = await add_job(store, encoded(2), seal=True)
        cancelled = await add_job(store, encoded(2))
        for job, status in ((failing, JobStatus.FAILED), (cancelled, JobStatus.CANCELLED)):
            done, changed = await store.finish_job(job.id, status)
            assert changed
            assert done.status is status

    @pytest.mark.anyio
    async def test_finish_job_sets_started_at_when_never_claimed(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1))
        done, changed = await store.finish_job(job.id, JobStatus.CANCELLED)
        assert changed
        assert done.started_at is not None
        assert done.completed_at is not None

    @pytest.mark.anyio
    async def test_finish_job_appends_its_error(self, store: JobStore) -> None:
        job = await add_job(store)
        await store.add_errors(job.id, [job_error("x")], rejected=1)
        error = job_error(None, "the source broke")
        done, _ = await store.finish_job(job.id, JobStatus.FAILED, error)
        assert done.status is JobStatus.FAILED
        assert [e.error for e in done.errors] == ["rejected", "the source broke"]
        assert done.error_count == 2

    @pytest.mark.anyio
    async def test_finish_job_needs_a_terminal_status(self, store: JobStore) -> None:
        job = await add_job(store)
        with pytest.raises(ValueError, match="terminal"):
            await store.finish_job(job.id, JobStatus.PROCESSING)
        assert (await store.get_job(job.id)).status is JobStatus.PENDING

    @pytest.mark.anyio
    async def test_terminal_snapshot_has_a_summary(self, store: JobStore) -> None:
        job = await add_job(store, encoded(4), seal=True)
        await store.add_errors(job.id, [job_error()], rejected=1)
        claimed = await claim(store)
        rows = [*map(ok_row, ["item-0", "item-1", "item-2"]), fail_row("item-3")]
        await store.record(job.id, [report(claimed, rows)])
        running = await store.get_job(job.id)
        assert running.result is None
        done, _ = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert done.progress == 100.0
        assert done.result is not None
        summary = done.result
        assert (summary.total, summary.succeeded, summary.failed, summary.rejected) == (4, 3, 1, 1)
        assert summary.success_rate == pytest.approx(75.0)
        assert summary.duration >= 0

    @pytest.mark.anyio
    async def test_progress_of_a_job_stopped_early(self, store: JobStore) -> None:
        job = await add_job(store, encoded(4), seal=True)
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [ok_row("item-0")], done=False)])
        assert (await store.get_job(job.id)).progress == pytest.approx(25.0)
        done, _ = await store.finish_job(job.id, JobStatus.FAILED)
        assert done.progress == pytest.approx(25.0)
        assert done.result is not None
        assert (done.result.total, done.result.succeeded, done.result.failed) == (4, 1, 0)
        assert done.result.success_rate == pytest.approx(100.0)

    # -- reading --------------------------------------------------------------------------------

    async def _mixed_outcomes(self, store: JobStore) -> tuple[str, list[tuple[str, bool]]]:
        """A job with 7 outcomes recorded in two reports; returns (job id, (id, ok) in order)."""
        job = await add_job(store, encoded(4), encoded(3, 4))
        first, second = await claim(store), await claim(store)
        order = [("item-5", False), ("item-1", True), ("item-0", False), ("item-6", True)]
        order += [("item-2", True), ("item-4", True), ("item-3", False)]
        for lease, part in ((second, order[:1]), (first, order[1:3]), (second, order[3:4])):
            rows = [ok_row(i, {"i": i}) if ok else fail_row(i) for i, ok in part]
            await store.record(job.id, [report(lease, rows, done=False)])
        rest = [ok_row(i, {"i": i}) if ok else fail_row(i) for i, ok in order[4:]]
        await store.record(
            job.id,
            [
                report(first, rest[:1], done=False),
                report(second, rest[1:2]),
                report(first, rest[2:]),
            ],
        )
        return job.id, order

    @pytest.mark.anyio
    @pytest.mark.parametrize("failed", [None, True, False])
    @pytest.mark.parametrize("limit", [1, 2, 3, 1000])
    async def test_read_outcomes_pages_in_recording_order(
        self, store: JobStore, failed: bool | None, limit: int
    ) -> None:
        job_id, order = await self._mixed_outcomes(store)
        expected = [(i, ok) for i, ok in order if failed is None or ok is not failed]
        rows = await read_all_outcomes(store, job_id, failed=failed, limit=limit)
        assert [(o.item_id, o.status is ItemStatus.SUCCEEDED) for o in rows] == expected

    @pytest.mark.anyio
    async def test_read_outcomes_of_a_job_without_outcomes(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        for failed in (None, True, False):
            page = await store.read_outcomes(job.id, failed=failed)
            assert (page.rows, page.cursor) == ([], None)
        page2 = await store.read_failed_items(job.id)
        assert (page2.rows, page2.cursor) == ([], None)

    @pytest.mark.anyio
    async def test_outcomes_round_trip(self, store: JobStore) -> None:
        results: list[Any] = [
            {"nested": {"a": [1, 2.5, "é", None, True]}, "n": -3},
            "text",
            0,
            [],
            None,
        ]
        job = await add_job(store, encoded(len(results) + 1))
        claimed = await claim(store)
        rows = [ok_row(f"item-{i}", r, attempts=i + 1) for i, r in enumerate(results)]
        failure = fail_row(f"item-{len(results)}", "it broke: ünïcode", "RuntimeError", attempts=4)
        await store.record(job.id, [report(claimed, [*rows, failure])])
        outcomes = await read_all_outcomes(store, job.id)
        assert [o.result for o in outcomes] == [*results, None]
        for outcome, row in zip(outcomes, [*rows, failure], strict=True):
            assert outcome.item_id == row.item_id
            assert outcome.attempts == row.attempts
            assert _near(outcome.started_at, _epoch(row.started_at))
            assert _near(outcome.finished_at, _epoch(row.finished_at))
        assert all(o.status is ItemStatus.SUCCEEDED for o in outcomes[:-1])
        assert all(o.error is None and o.error_type is None for o in outcomes[:-1])
        last = outcomes[-1]
        assert (last.status, last.error, last.error_type) == (
            ItemStatus.FAILED,
            "it broke: ünïcode",
            "RuntimeError",
        )

    @pytest.mark.anyio
    @pytest.mark.parametrize("limit", [1, 2, 1000])
    async def test_read_failed_items_pages(self, store: JobStore, limit: int) -> None:
        job_id, order = await self._mixed_outcomes(store)
        payloads = dict(encoded(7))
        expected = [(i, payloads[i]) for i, ok in order if not ok]
        rows = await _read_all(
            lambda cursor: store.read_failed_items(job_id, cursor=cursor, limit=limit)
        )
        assert decoded(rows) == decoded(expected)


# -- the state machine --------------------------------------------------------------------------

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
            if job.sealed and not job.terminal:
                with pytest.raises(StoreError):
                    add()
                return
            if job.terminal:  # sealed too: a StoreError or nothing stored, either will do
                with contextlib.suppress(StoreError):
                    assert add() == []
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
                leases.append(_GHOST_LEASE)
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
                return await _read_all(
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
                return [
                    (await store.get_job(j.id), await store.record(j.id, [])) for j in self.jobs
                ]

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
