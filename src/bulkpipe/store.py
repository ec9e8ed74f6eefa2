"""The :class:`JobStore` protocol and the records that cross it.

A store persists jobs, items and outcomes and hands out work; it decides nothing about a job.
The protocol is built for the durable, multi-worker case: work is claimed a batch at a time under
a lease, every write of results carries the lease's fencing token, and a store refuses results
whose token is no longer current. :class:`bulkpipe.stores.MemoryStore` is the executable
specification; ``bulkpipe.testing`` holds the contract suite every store must pass.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

import attrs

from .models import ItemOutcome, Job, JobStatus, ProcessingError, WorkerInfo
from .options import JobOptions

T = TypeVar("T")

#: An item as stored: its id and its JSON-encoded payload.
EncodedItem = tuple[str, str]


class OutcomeRow(NamedTuple):
    """The final outcome of one item as the scheduler records it (one per item, lean on purpose)."""

    item_id: str
    ok: bool
    result: str | None  # JSON text of the result, when ok
    error: str | None
    error_type: str | None
    attempts: int
    started_at: float  # seconds since the epoch
    finished_at: float


@attrs.frozen(kw_only=True)
class JobSpec:
    """What a worker needs to run a job's batches.

    ``options_error`` says why the stored options could not be read (``options`` are then the
    defaults); a worker fails such a job instead of running it.
    """

    id: str
    type: str
    options: JobOptions
    priority: int
    options_error: str | None = None


@attrs.frozen(kw_only=True)
class Lease:
    """A worker's hold on one batch; ``token`` fences off earlier holders."""

    job_id: str
    batch_no: int
    token: int


@attrs.frozen(kw_only=True)
class ClaimedBatch:
    """A batch handed to one worker, with the items that still lack a final outcome."""

    job: JobSpec
    lease: Lease
    items: list[EncodedItem]
    claims: int  # how many times the batch has been claimed, 1 the first time


@attrs.frozen(kw_only=True)
class BatchReport:
    """Outcomes of one leased batch; ``done`` releases the batch as finished."""

    lease: Lease
    outcomes: Sequence[OutcomeRow]
    done: bool


@attrs.frozen(kw_only=True)
class Progress:
    """A job's counts (after a write, or read with ``progress``), for the scheduler to decide
    what happens next."""

    status: JobStatus
    sealed: bool
    total: int
    succeeded: int
    failed: int
    open_batches: int  # batches that are not done: pending or leased
    lost: tuple[int, ...] = ()  # batch numbers of reports refused because the lease was lost
    abandoned: bool = False  # sealed because its submit lease expired (the submitter died)


@attrs.frozen(kw_only=True)
class RenewResult:
    """What a heartbeat learned: leases it no longer holds, and jobs that have ended."""

    lost: tuple[Lease, ...]
    ended_jobs: frozenset[str]


@attrs.frozen(kw_only=True)
class Page(Generic[T]):
    """One page of a cursor-paginated read; ``cursor`` is None on the last page."""

    rows: list[T]
    cursor: int | None


@runtime_checkable
class JobStore(Protocol):
    """Persistence and claiming of jobs, items and outcomes.

    All methods are coroutines and must work on asyncio and trio. A store wraps its driver's
    errors in :class:`bulkpipe.StoreError` and raises :class:`bulkpipe.JobNotFound` for an
    unknown job id.
    """

    async def open(self) -> None:
        """Connect and create or check the schema. Idempotent."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    # -- submission -------------------------------------------------------------------------

    async def create_job(self, job: Job, *, submit_lease: float | None = None) -> Job:
        """Persist a new job (status pending, not sealed, no items) and return the job as
        stored: ``job``, or, when ``job.idempotency_key`` is set and a job of the same owner
        already has that key, that job, with nothing written (race-safe).

        With ``submit_lease`` the job holds a submit lease that expires that many seconds
        from now (the database clock where there is one), renewed with :meth:`renew_submit`;
        without, it has none and is never found abandoned."""

    async def renew_submit(self, job_id: str, lease_seconds: float) -> Progress:
        """Extend the submit lease of an unsealed live job to ``lease_seconds`` from now;
        answer the job's progress either way (sealed and ``abandoned`` once a worker found
        the lease expired, or terminal)."""

    async def abandon_expired_submits(self, limit: int = 100) -> list[tuple[str, Progress]]:
        """Seal up to ``limit`` unsealed live jobs whose submit lease has expired, mark them
        abandoned and clear their lease; return them with their progress."""

    async def add_batch(self, job_id: str, items: Sequence[EncodedItem]) -> list[str]:
        """Append one batch of items; return the ids refused because the job already has them
        (or repeated within the call). A batch whose items are all refused creates no batch."""

    async def add_batches(self, job_id: str, batches: Sequence[Sequence[EncodedItem]]) -> list[str]:
        """Append batches in order, each as add_batch would (its own batch number; a batch whose
        items are all refused creates no batch), in one transaction where the store has them;
        return every refused id, in order."""

    async def add_errors(
        self, job_id: str, errors: Sequence[ProcessingError], rejected: int
    ) -> None:
        """Record job-level errors; ``rejected`` items were refused at submit."""

    async def seal_job(self, job_id: str) -> Progress:
        """Mark that every item has been submitted."""

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
        """Lease the next batch: of ``job_id`` if given, else of the highest-priority (then
        oldest) non-terminal job whose type is in ``types`` and whose id is not in ``exclude``.

        A pending batch, or a leased one whose lease has expired, may be claimed; claiming
        issues a new, larger token. The first claim of a job moves it to processing.
        """

    async def record(self, job_id: str, reports: Sequence[BatchReport]) -> Progress:
        """Store outcomes, fenced: a report whose lease token is not current is refused and
        listed in ``Progress.lost``. An item keeps its first final outcome. Nothing is
        recorded for a terminal job. Outcomes are durable before they are counted.

        ``record(job_id, [])`` writes nothing and answers as :meth:`progress` does; read
        progress with :meth:`progress`."""

    async def progress(self, job_id: str) -> Progress:
        """A job's counts as they are now, without writing anything (``lost`` is empty);
        :class:`bulkpipe.JobNotFound` for an unknown id. This is how the scheduler reads
        whether a job's work is done."""

    async def renew_leases(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        """Extend the leases still held; report the lost ones and the jobs that have ended."""

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give batches back (pending again) without finishing them."""

    async def finish_job(
        self, job_id: str, status: JobStatus, error: ProcessingError | None = None
    ) -> tuple[Job, bool]:
        """Move a job to a terminal status unless it already has one; return it and whether
        this call changed it. This is the one place a job's final state is written.

        ``COMPLETED`` is refused (the job is returned unchanged, with False) unless the job is
        sealed, has no open batch, and every item has an outcome (succeeded + failed ==
        total): a store never completes a job that is missing outcomes."""

    # -- reading ----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        """A snapshot of the job."""

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        owner: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally only of one status and/or one owner."""

    async def read_outcomes(
        self,
        job_id: str,
        *,
        failed: bool | None = None,
        cursor: int | None = None,
        limit: int = 1000,
        max_bytes: int | None = None,
    ) -> Page[ItemOutcome]:
        """Final outcomes in recording order, optionally only failed (True) or succeeded
        (False) ones, from an opaque ``cursor`` on.

        With ``max_bytes``, a page also stops before the row that would bring its size (the
        UTF-8 bytes of each row's item id, result and error, added up) over ``max_bytes``; it
        always holds at least one row when one is left, however large. The store works this
        out without loading the rows it leaves out."""

    async def read_failed_items(
        self,
        job_id: str,
        *,
        cursor: int | None = None,
        limit: int = 1000,
        unfinished: bool = False,
    ) -> Page[EncodedItem]:
        """The stored items whose final outcome is failed; with ``unfinished``, also the items
        that have no outcome at all (a cancelled or abandoned job's never-run items). Paged
        as :meth:`read_outcomes` is: pass each page's ``cursor`` until it is None."""

    # -- housekeeping -----------------------------------------------------------------------

    async def delete_job(self, job_id: str, *, chunk_rows: int = 5000) -> bool:
        """Delete a terminal job with its batches, items, outcomes and errors; True when
        deleted, False (nothing deleted) when the job has not ended; :class:`JobNotFound`
        for an unknown id.

        Rows go at most ``chunk_rows`` at a time, each chunk its own short transaction, so
        other jobs' claims never wait long; the job row goes last, so a delete cut short
        leaves a terminal job that a repeated delete (or a prune) finishes."""

    async def ended_jobs(
        self, *, before: float, statuses: Collection[JobStatus], limit: int
    ) -> list[str]:
        """Up to ``limit`` ids of terminal jobs with a status in ``statuses`` that ended
        before ``before`` (epoch seconds), the oldest first."""

    async def try_lock(self, name: str, holder: str, seconds: float) -> bool:
        """Take (or, for its holder, extend) the named lock for ``seconds``; False while
        another holder has it unexpired. For chores one process at a time should do."""

    async def unlock(self, name: str, holder: str) -> None:
        """Give the named lock back, if ``holder`` has it."""

    # -- the worker registry ----------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Register (or register again) a worker, live for ``ttl`` seconds from now."""

    async def worker_seen(self, worker_id: str, in_flight: int, ttl: float) -> bool:
        """Refresh a registered worker: last seen now, ``in_flight`` items, live for ``ttl``
        seconds more. Return False (changing nothing) when it is not registered (any more):
        the worker then registers again."""

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration (it stopped); nothing for an unknown id."""

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers (registrations not expired), oldest first; registrations that
        expired more than an hour ago are deleted on the way."""


@runtime_checkable
class SupportsHeartbeatStore(Protocol):
    """An optional store capability: a second store object for a worker's heartbeat thread.

    A store whose methods may be called from another thread and event loop through a store
    object of its own (its own connection) has ``heartbeat_store()``, which returns a new,
    unopened store on the same database with the same settings and at most one connection
    (or None when this store object cannot have one, e.g. an in-memory SQLite database).
    A :class:`bulkpipe.Worker` then renews its leases from a thread of its own, so a
    processor that blocks the event loop does not let them expire (``bulkpipe.heartbeat``).
    The SQLite and PostgreSQL stores have it; ``MemoryStore`` lives in the worker's process
    and loop, so its leases are renewed on the loop.
    """

    def heartbeat_store(self) -> JobStore | None:
        """A new, unopened store on the same database, for use from another thread."""
