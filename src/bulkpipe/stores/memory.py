"""An in-process job store: the executable specification of the :class:`JobStore` protocol."""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Collection, Sequence

import attrs

from .._snapshot import MAX_ERRORS, build_job, errors_from_rows, outcome_from_row
from ..errors import StoreError
from ..models import ItemOutcome, Job, JobStatus, ProcessingError
from ..options import JobOptions
from ..store import (
    BatchReport,
    ClaimedBatch,
    EncodedItem,
    JobSpec,
    Lease,
    OutcomeRow,
    Page,
    Progress,
    RenewResult,
)
from ._closed import refuse_closed
from ._finish import check_finish_status, may_finish
from ._memory_housekeeping import MemoryHousekeeping
from ._workers import MemoryWorkerRegistry, Registered

_PENDING, _LEASED, _DONE = 0, 1, 2


@attrs.define(slots=True, eq=False)
class _Batch:
    no: int
    items: list[EncodedItem] | None  # dropped once the batch is done
    state: int = _PENDING
    token: int = 0
    owner: str | None = None
    expires: float = 0.0
    claims: int = 0
    finished: set[str] = attrs.Factory(set)


@attrs.define(slots=True, eq=False)
class _Job:
    seq: int
    id: str
    type: str
    options: JobOptions
    priority: int
    retry_of: str | None
    owner: str | None
    source: str | None
    params: dict[str, object] | None
    created_at: float
    idempotency_key: str | None = None
    submit_expires: float | None = None  # the submit lease, by time.monotonic()
    abandoned: bool = False
    status: JobStatus = JobStatus.PENDING
    sealed: bool = False
    started_at: float | None = None
    updated_at: float | None = None
    completed_at: float | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    errors: list[ProcessingError] = attrs.Factory(list)
    error_count: int = 0
    ids: set[str] = attrs.Factory(set)
    batches: list[_Batch] = attrs.Factory(list)
    pending: deque[_Batch] = attrs.Factory(deque)
    leased: dict[int, _Batch] = attrs.Factory(dict)
    open_batches: int = 0
    outcomes: list[OutcomeRow] = attrs.Factory(list)
    failed_pos: list[int] = attrs.Factory(list)
    failed_items: list[EncodedItem] = attrs.Factory(list)

    def spec(self) -> JobSpec:
        return JobSpec(id=self.id, type=self.type, options=self.options, priority=self.priority)

    def progress(self, lost: tuple[int, ...] = ()) -> Progress:
        return Progress(
            status=self.status,
            sealed=self.sealed,
            total=self.total,
            succeeded=self.succeeded,
            failed=self.failed,
            open_batches=self.open_batches,
            lost=lost,
            abandoned=self.abandoned,
        )

    def snapshot(self) -> Job:
        return build_job(
            id=self.id,
            type=self.type,
            status=self.status,
            options=self.options,
            priority=self.priority,
            retry_of=self.retry_of,
            owner=self.owner,
            source=self.source,
            params=self.params,
            sealed=self.sealed,
            total=self.total,
            succeeded=self.succeeded,
            failed=self.failed,
            rejected=self.rejected,
            errors=list(self.errors),
            error_count=self.error_count,
            created_at=self.created_at,
            started_at=self.started_at,
            updated_at=self.updated_at,
            completed_at=self.completed_at,
            idempotency_key=self.idempotency_key,
        )


class MemoryStore(MemoryHousekeeping[_Job], MemoryWorkerRegistry):
    """Keeps jobs, items and outcomes in this process's memory.

    Fast and dependency-free, for tests, notebooks and one-shot runs; everything is lost when
    the process exits. Safe for any number of workers on one event loop (every method runs
    without yielding, so it is atomic); not shared between processes or threads. To save
    memory, a succeeded item's payload is dropped once its batch is done (only failed items
    can be retried).
    """

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._active: dict[str, _Job] = {}
        self._keys: dict[tuple[str | None, str], str] = {}  # (owner, idempotency key) -> id
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._locks: dict[str, tuple[str, float]] = {}
        self._workers: dict[str, Registered] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(jobs={len(self._jobs)})"

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the data stays until the store is garbage-collected."""

    # -- submission -------------------------------------------------------------------------

    async def create_job(self, job: Job, *, submit_lease: float | None = None) -> Job:
        key = job.idempotency_key
        if key is not None and (found := self._keys.get((job.owner, key))) is not None:
            return self._jobs[found].snapshot()
        if job.id in self._jobs:
            raise StoreError(f"a job with id {job.id!r} already exists in this store")
        state = _Job(
            seq=next(self._seq),
            id=job.id,
            type=job.type,
            options=job.options,
            priority=job.priority,
            retry_of=job.retry_of,
            owner=job.owner,
            source=job.source,
            params=dict(job.params) if job.params is not None else None,
            created_at=job.created_at.timestamp(),
            idempotency_key=key,
        )
        if submit_lease is not None:
            state.submit_expires = time.monotonic() + submit_lease
        if key is not None:
            self._keys[(job.owner, key)] = job.id
        self._jobs[job.id] = state
        self._active[job.id] = state
        return job

    async def add_batch(self, job_id: str, items: Sequence[EncodedItem]) -> list[str]:
        return await self.add_batches(job_id, (items,))

    async def add_batches(self, job_id: str, batches: Sequence[Sequence[EncodedItem]]) -> list[str]:
        job = self._job(job_id)
        refuse_closed(job_id, job.status.value, job.sealed)
        ids = job.ids
        duplicates: list[str] = []
        for items in batches:
            fresh: list[EncodedItem] = []
            for item in items:
                if item[0] in ids:
                    duplicates.append(item[0])
                else:
                    ids.add(item[0])
                    fresh.append(item)
            if fresh:
                batch = _Batch(no=len(job.batches), items=fresh)
                job.batches.append(batch)
                job.pending.append(batch)
                job.open_batches += 1
                job.total += len(fresh)
        return duplicates

    async def add_errors(
        self, job_id: str, errors: Sequence[ProcessingError], rejected: int
    ) -> None:
        job = self._job(job_id)
        refuse_closed(job_id, job.status.value, job.sealed, items=False)
        room = MAX_ERRORS - len(job.errors)
        job.errors.extend(errors[: max(0, room)])
        job.error_count += len(errors)
        job.rejected += rejected

    async def seal_job(self, job_id: str) -> Progress:
        job = self._job(job_id)
        job.sealed = True
        job.submit_expires = None
        job.ids = set()  # only needed to refuse repeated ids while items arrive
        return job.progress()

    async def renew_submit(self, job_id: str, lease_seconds: float) -> Progress:
        job = self._job(job_id)
        if job.submit_expires is not None and not job.sealed and not job.status.is_terminal:
            job.submit_expires = time.monotonic() + lease_seconds
        return job.progress()

    async def abandon_expired_submits(self, limit: int = 100) -> list[tuple[str, Progress]]:
        now = time.monotonic()
        expired = sorted(
            (j for j in self._active.values() if not j.sealed and j.submit_expires is not None),
            key=lambda j: j.submit_expires or 0.0,
        )
        found: list[tuple[str, Progress]] = []
        for job in expired[: max(limit, 0)]:
            if job.submit_expires is None or job.submit_expires > now:
                break
            job.sealed, job.abandoned, job.submit_expires = True, True, None
            job.ids = set()
            found.append((job.id, job.progress()))
        return found

    # -- work -------------------------------------------------------------------------------

    async def claim_batch(
        self,
        *,
        worker_id: str,
        lease_seconds: float,
        job_id: str | None = None,
        exclude: Collection[str] = (),
        types: Collection[str] | None = None,
    ) -> ClaimedBatch | None:
        now = time.monotonic()
        if job_id is not None:
            job = self._active.get(job_id)
            candidates = [job] if job is not None else []
        else:
            candidates = sorted(
                (
                    j
                    for j in self._active.values()
                    if j.id not in exclude and (types is None or j.type in types)
                ),
                key=lambda j: (-j.priority, j.seq),
            )
        for job in candidates:
            batch = self._claimable(job, now)
            if batch is None:
                continue
            batch.state = _LEASED
            batch.token = next(self._tokens)
            batch.owner = worker_id
            batch.expires = now + lease_seconds
            batch.claims += 1
            job.leased[batch.no] = batch
            if job.status is JobStatus.PENDING:
                job.status = JobStatus.PROCESSING
                job.started_at = time.time()
            assert batch.items is not None
            finished = batch.finished
            items = [it for it in batch.items if it[0] not in finished] if finished else batch.items
            return ClaimedBatch(
                job=job.spec(),
                lease=Lease(job_id=job.id, batch_no=batch.no, token=batch.token),
                items=list(items),
                claims=batch.claims,
            )
        return None

    @staticmethod
    def _claimable(job: _Job, now: float) -> _Batch | None:
        if job.pending:
            return job.pending.popleft()
        for batch in job.leased.values():
            if batch.expires <= now:
                return batch
        return None

    async def progress(self, job_id: str) -> Progress:
        return self._job(job_id).progress()

    async def record(self, job_id: str, reports: Sequence[BatchReport]) -> Progress:
        job = self._job(job_id)
        if job.status.is_terminal:
            return job.progress()
        lost: list[int] = []
        now = time.time()
        for report in reports:
            lease = report.lease
            batch = job.leased.get(lease.batch_no)
            if batch is None or batch.token != lease.token:
                lost.append(lease.batch_no)
                continue
            self._store_outcomes(job, batch, report.outcomes)
            if report.done:
                assert batch.items is not None
                missing = len(batch.items) - len(batch.finished)
                if missing:
                    raise StoreError(
                        f"batch {batch.no} of job {job_id!r} was reported done with {missing} "
                        "items lacking an outcome; this is a scheduler bug"
                    )
                batch.state = _DONE
                batch.items = None
                batch.finished = set()
                batch.owner = None
                del job.leased[batch.no]
                job.open_batches -= 1
        if reports:  # an empty record is a read, as progress() is
            job.updated_at = now
        return job.progress(tuple(lost))

    @staticmethod
    def _store_outcomes(job: _Job, batch: _Batch, rows: Sequence[OutcomeRow]) -> None:
        finished = batch.finished
        outcomes = job.outcomes
        by_id: dict[str, EncodedItem] | None = None  # built once per call, at the first failure
        for row in rows:
            if row.item_id in finished:
                continue  # an item keeps its first final outcome
            finished.add(row.item_id)
            if row.ok:
                job.succeeded += 1
            else:
                job.failed += 1
                job.error_count += 1
                job.failed_pos.append(len(outcomes))
                if by_id is None:
                    assert batch.items is not None
                    by_id = {it[0]: it for it in batch.items}
                item = by_id.get(row.item_id)
                if item is not None:
                    job.failed_items.append(item)
                if len(job.errors) < MAX_ERRORS:
                    job.errors.extend(errors_from_rows((row,), 1))
            outcomes.append(row)

    async def renew_leases(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        now = time.monotonic()
        lost: list[Lease] = []
        ended: set[str] = set()
        for lease in leases:
            job = self._jobs.get(lease.job_id)
            if job is None or job.status.is_terminal:
                ended.add(lease.job_id)
                lost.append(lease)
                continue
            batch = job.leased.get(lease.batch_no)
            if batch is None or batch.token != lease.token:
                lost.append(lease)
                continue
            batch.expires = now + lease_seconds
        return RenewResult(lost=tuple(lost), ended_jobs=frozenset(ended))

    async def release(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            job = self._jobs.get(lease.job_id)
            if job is None:
                continue
            batch = job.leased.get(lease.batch_no)
            if batch is None or batch.token != lease.token:
                continue
            del job.leased[batch.no]
            batch.state = _PENDING
            batch.owner = None
            # A graceful release gives its claim back (JobOptions.max_claims counts the
            # claims that ended in a crash), except the first, as in every store.
            batch.claims = max(batch.claims - 1, 1)
            # Back to the front, keeping the pending batches in batch order.
            pending = job.pending
            at = 0
            while at < len(pending) and pending[at].no < batch.no:
                at += 1
            pending.insert(at, batch)

    async def finish_job(
        self, job_id: str, status: JobStatus, error: ProcessingError | None = None
    ) -> tuple[Job, bool]:
        check_finish_status(status)
        job = self._job(job_id)
        if not may_finish(job, status):
            return job.snapshot(), False
        now = time.time()
        if error is not None:
            if len(job.errors) < MAX_ERRORS:
                job.errors.append(error)
            job.error_count += 1
        job.status = status
        job.completed_at = now
        job.updated_at = now
        if job.started_at is None:
            job.started_at = now
        del self._active[job_id]
        job.pending.clear()
        job.leased.clear()
        job.ids = set()
        return job.snapshot(), True

    # -- reading ----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        return self._job(job_id).snapshot()

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        owner: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        jobs = sorted(self._jobs.values(), key=lambda j: j.seq, reverse=True)
        if status is not None:
            jobs = [j for j in jobs if j.status is status]
        if owner is not None:
            jobs = [j for j in jobs if j.owner == owner]
        return [j.snapshot() for j in jobs[offset : offset + limit]]

    async def read_outcomes(
        self,
        job_id: str,
        *,
        failed: bool | None = None,
        cursor: int | None = None,
        limit: int = 1000,
        max_bytes: int | None = None,
    ) -> Page[ItemOutcome]:
        job = self._job(job_id)
        start = 0 if cursor is None else cursor
        outcomes = job.outcomes
        budget = _Budget(max_bytes)
        rows: list[ItemOutcome] = []
        if failed is True:
            positions = job.failed_pos
            i = bisect.bisect_left(positions, start)
            end = min(i + max(limit, 0), len(positions))
            while i < end:
                row = outcomes[positions[i]]
                if not budget.admits(row, first=not rows):
                    break
                rows.append(outcome_from_row(*row))
                i += 1
            more = i < len(positions)
            # A page that leaves rows (even one of limit=0, with none) never ends the reading.
            last = positions[i - 1] + 1 if rows else start
            return Page(rows=rows, cursor=last if more else None)
        pos = start
        while pos < len(outcomes) and len(rows) < limit:
            row = outcomes[pos]
            if failed is None or row.ok:
                if not budget.admits(row, first=not rows):
                    break
                rows.append(outcome_from_row(*row))
            pos += 1
        if failed is False:
            while pos < len(outcomes) and not outcomes[pos].ok:
                pos += 1  # so the cursor is None when no succeeded row is left
        return Page(rows=rows, cursor=pos if pos < len(outcomes) else None)


class _Budget:
    """What is left of a page's ``max_bytes`` (None: no budget)."""

    def __init__(self, max_bytes: int | None) -> None:
        self.left = max_bytes

    def admits(self, row: OutcomeRow, *, first: bool) -> bool:
        """Whether ``row`` fits (the page's first row always does); counts it if so."""
        if self.left is None:
            return True
        size = _size(row)
        if not first and size > self.left:
            return False
        self.left -= size
        return True


def _size(row: OutcomeRow) -> int:
    """The bytes a row counts against a page's ``max_bytes``: UTF-8 of id, result and error."""
    size = 0
    for text in (row.item_id, row.result, row.error):
        if text is not None:
            # isascii() is O(1); only other text is encoded (surrogatepass: never raises)
            size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return size
