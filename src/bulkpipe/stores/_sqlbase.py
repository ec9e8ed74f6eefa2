"""The shell that :class:`SQLiteStore` and :class:`PostgresStore` share: :class:`SQLStore`.

A template: the public :class:`bulkpipe.store.JobStore` methods live here, check and encode
their arguments, hand one synchronous step to the dialect's :meth:`SQLStore._call` (a worker
thread, with a connection) and turn what comes back into records. Each dialect supplies only
what differs: its connection handling (``_call``, ``_connect``), its hints for driver errors,
the version read and script runner of its migrations, and its own algorithms for submitting,
claiming and recording (``_create_job``, ``_add_batches``, ``_claim``, ``_record`` and the
rest), each over its own ``sql/<dialect>/queries.sql``.

Every step takes ``(conn, retry, ...)``: ``retry`` is True when PostgreSQL runs a step again
after a connection error (so a write can tell whether its first attempt committed); SQLite
never retries, so it is always False there.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Protocol, TypeVar

import anyio
import anyio.to_thread

from .._snapshot import MAX_ERRORS, build_job, outcome_from_row, read_options
from ..error_types import ErrorType
from ..errors import JobNotFound, StoreError
from ..models import ItemOutcome, Job, JobStatus, ProcessingError
from ..store import (
    BatchReport,
    ClaimedBatch,
    EncodedItem,
    Lease,
    Page,
    Progress,
    RenewResult,
)
from ._encoding import job_params
from ._encoding import progress_of as progress_of  # re-exported for the dialects
from ._finish import check_finish_status
from ._requests import ClaimRequest as ClaimRequest  # the requests are re-exported too
from ._requests import FinishRequest as FinishRequest
from ._requests import OutcomePageRequest as OutcomePageRequest
from ._rows import Counts, FailedItem, JobRow, JobState, OutcomeColumns
from ._sql import check_prefix, load_migrations, load_queries
from ._submit_sql import abandon_expired, find_idempotent, renew_submit
from ._workers import SQLWorkerRegistry

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Executes(Protocol):
    """What both drivers' connections offer: ``execute(query, params)`` giving a cursor."""

    def execute(self, query: str, params: Mapping[str, Any], /) -> _Cursor: ...


class _Closes(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Executes)  # a dialect's connection
H = TypeVar("H", bound=_Closes)  # what an open store holds: a connection, or a pool


# -- encoding and decoding, the same in both dialects ----------------------------------------


def job_from_row(row: JobRow, errors: list[ProcessingError]) -> Job:
    """A :class:`Job` from the job columns a SQL store selects, read by name.

    A row that cannot be read whole still gives a job: options that do not validate give the
    default options, params that are not JSON give None, a status bulkpipe does not know reads
    as ``failed``, and the snapshot's errors start with one ``ErrorType.UNREADABLE_JOB`` error
    saying what could not be read."""
    params, error_count, created_at = row.params, row.error_count, row.created_at
    opts, problem = read_options(row.options)
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except (ValueError, RecursionError) as exc:
            params = None
            problem = (problem + "; " if problem else "") + (
                f"the job's stored params cannot be read ({type(exc).__name__}: {exc})"
            )
    try:
        status = JobStatus(row.status)
    except ValueError:  # a hand-edited row: no worker claims it, but it is still listed
        status = JobStatus.FAILED
        problem = (problem + "; " if problem else "") + (
            f"the job's stored status {row.status!r} is not one bulkpipe knows"
        )
    if problem is not None and not any(e.error_type == ErrorType.UNREADABLE_JOB for e in errors):
        # Not recorded yet (a worker records it when it fails the job): shown, not stored.
        when = datetime.fromtimestamp(created_at, UTC)
        unreadable = ProcessingError(
            item_id=None, error=problem, error_type=ErrorType.UNREADABLE_JOB, timestamp=when
        )
        errors = [unreadable, *errors][:MAX_ERRORS]
        error_count += 1
    return build_job(
        id=row.id,
        type=row.type,
        status=status,
        options=opts,
        priority=row.priority,
        retry_of=row.retry_of,
        owner=row.owner,
        source=row.source,
        params=params,
        sealed=bool(row.sealed),
        total=row.total,
        succeeded=row.succeeded,
        failed=row.failed,
        rejected=row.rejected,
        errors=errors,
        error_count=error_count,
        created_at=created_at,
        started_at=row.started_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
        idempotency_key=row.idempotency_key,
    )


def outcome_of(row: OutcomeColumns) -> ItemOutcome:
    """An :class:`ItemOutcome` from a row of an outcome page."""
    return outcome_from_row(
        row.item_id,
        row.ok,
        row.result,
        row.error,
        row.error_type,
        row.attempts,
        row.started_at,
        row.finished_at,
    )


def next_cursor(last_seq: int | None, more: bool, cursor: int | None) -> int | None:
    """The cursor after a page: None on the last page (nothing is left after it); else the
    position of the page's last row, or, for a page with no row (``limit=0``) that leaves rows
    after it, the cursor it was read from. A page that leaves rows never says it is the last."""
    if not more:
        return None
    return last_seq if last_seq is not None else (cursor or 0)


class SQLStore(SQLWorkerRegistry, abc.ABC, Generic[C, H]):
    """The :class:`bulkpipe.store.JobStore` shell of a SQL store (see the module docstring)."""

    #: The folder of this dialect's queries and migrations under ``stores/sql``.
    dialect: ClassVar[str]
    #: What the dialect calls where its tables live, for "use another prefix or another ...".
    place: ClassVar[str]
    #: The driver's base exception, wrapped into :class:`StoreError` at the boundary.
    driver_error: ClassVar[type[Exception]]

    def __init__(self, *, prefix: str, where: str) -> None:
        self.prefix = check_prefix(prefix)
        #: The schema version of the open database (None until :meth:`open`).
        self.schema_version: int | None = None
        self._where = where
        self._q = load_queries(self.dialect, prefix)
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r}, prefix={self.prefix!r})"

    # -- what a dialect provides -------------------------------------------------------------

    @property
    @abc.abstractmethod
    def _label(self) -> str:
        """How messages name this store, e.g. ``SQLite store '/data/jobs.db'``."""

    @abc.abstractmethod
    def _hint(self, exc: Exception, *, retried: bool) -> str:
        """What to check after the driver error ``exc``."""

    def _describe(self, exc: Exception) -> str:
        return f"{type(exc).__name__}: {str(exc).strip()}"

    @abc.abstractmethod
    async def _call(
        self,
        what: str,
        fn: Callable[Concatenate[C, bool, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``fn(connection, retry, ...)`` in a worker thread; wrap driver errors."""

    @abc.abstractmethod
    def _connect(self) -> H:
        """In a worker thread: connect, migrate, and return what the open store holds."""

    @abc.abstractmethod
    def _is_open(self) -> bool: ...

    @abc.abstractmethod
    def _attach(self, held: H) -> None:
        """Keep what :meth:`_connect` returned (under the open/close lock)."""

    @abc.abstractmethod
    def _detach(self) -> H | None:
        """Forget what the open store holds and return it to close (None: not open)."""

    @abc.abstractmethod
    def _version(self, conn: C) -> int:
        """The schema version the database has (0: none); refuse tables that are foreign."""

    @abc.abstractmethod
    def _run_script(self, conn: C, script: str) -> None:
        """Run one migration script inside the migrating transaction."""

    # -- errors ------------------------------------------------------------------------------

    def _error(self, what: str, exc: Exception, *, retried: bool = True) -> StoreError:
        """A driver error as the :class:`StoreError` that callers see."""
        return StoreError(
            f"{self._label}: {what} failed ({self._describe(exc)}); "
            f"{self._hint(exc, retried=retried)}"
        )

    def _not_open(self) -> StoreError:
        return StoreError(f"{self!r} is not open; call open() first (Pipeline and Worker do)")

    def _foreign(self, detail: object) -> StoreError:
        return StoreError(
            f"{self._label}: the database has tables named {self.prefix}* that bulkpipe did "
            f"not create, or that were changed ({str(detail).strip()}); use another prefix "
            f"or another {self.place}"
        )

    # -- opening -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or upgrade the schema (refusing a newer one). Idempotent."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._is_open():
                return
            try:
                held = await anyio.to_thread.run_sync(self._connect)
            except self.driver_error as exc:
                raise self._error("opening the store", exc, retried=False) from exc
            self._attach(held)

    async def close(self) -> None:
        """Release the connections. Idempotent; committed data stays in the database."""
        if self._lock is None:
            return
        async with self._lock:
            held = self._detach()
            if held is not None:
                await anyio.to_thread.run_sync(held.close)
        self._lock = None

    @property
    def latest_schema(self) -> int:
        """The newest schema version this bulkpipe knows."""
        return load_migrations(self.dialect, self.prefix)[-1][0]

    def _upgrade(self, conn: C) -> None:
        """Run the migrations the database lacks, in the caller's transaction (which holds
        whatever lock keeps other processes out); refuse a schema newer than this bulkpipe."""
        migrations = load_migrations(self.dialect, self.prefix)
        latest = migrations[-1][0]
        version = self._version(conn)
        if version > latest:
            raise StoreError(
                f"{self._label}: the schema was created by a newer bulkpipe (version "
                f"{version}; this one knows up to {latest}); upgrade bulkpipe"
            )
        for number, script in migrations:
            if number > version:
                self._run_script(conn, script)
                conn.execute(self._q["set_schema_version"], {"version": number})
        self.schema_version = latest

    # -- small reads, by name ----------------------------------------------------------------

    def _one(
        self, conn: C, query: str, params: Mapping[str, Any], shape: Callable[[Any], T]
    ) -> T | None:
        """The first row of ``query`` as ``shape`` (a NamedTuple's ``_make``), or None."""
        row = conn.execute(self._q[query], params).fetchone()
        return None if row is None else shape(row)

    def _job_state(self, conn: C, job_id: str) -> JobState:
        state = self._one(conn, "job_state", {"id": job_id}, JobState._make)
        if state is None:
            raise JobNotFound(job_id)
        return state

    def _read_progress(self, conn: C, retry: bool, job_id: str) -> Progress:
        counts = self._one(conn, "progress", {"id": job_id}, Counts._make)
        if counts is None:
            raise JobNotFound(job_id)
        return progress_of(counts)

    # -- submission --------------------------------------------------------------------------

    async def create_job(self, job: Job, *, submit_lease: float | None = None) -> Job:
        """Persist a new job (pending, unsealed, no items) and return the job as stored:
        ``job``, or the job of the same owner with the same idempotency key, if there is one
        (see :meth:`bulkpipe.store.JobStore.create_job`)."""
        return await self._create(job, submit_lease, {})

    async def _create(self, job: Job, submit_lease: float | None, extra: dict[str, Any]) -> Job:
        row = {**job_params(job), **extra, "submit_lease": submit_lease}
        found = await self._call("creating a job", self._create_or_find, row)
        return job if found is None else await self.get_job(found)

    def _create_or_find(self, conn: C, retry: bool, row: dict[str, Any]) -> str | None:
        """Insert the job; None, or the id of the job that already has its idempotency key
        (looked for first, and again when the insert fails: a submit racing this one)."""
        key = row["idempotency_key"]
        if key is not None and (found := find_idempotent(self._q, conn, row)) is not None:
            return found
        try:
            self._create_job(conn, retry, row)
        except self.driver_error:
            if key is None or (found := find_idempotent(self._q, conn, row)) is None:
                raise
            return found
        return None

    async def renew_submit(self, job_id: str, lease_seconds: float) -> Progress:
        """Extend the submit lease of an unsealed live job; the job's progress either way."""
        return await self._call(
            "renewing a submit lease", renew_submit, self._q, job_id, float(lease_seconds)
        )

    async def abandon_expired_submits(self, limit: int = 100) -> list[tuple[str, Progress]]:
        """Seal the live jobs whose submit lease expired, as abandoned; return them."""
        return await self._call("sealing abandoned submits", abandon_expired, self._q, limit)

    @abc.abstractmethod
    def _create_job(self, conn: C, retry: bool, row: dict[str, Any]) -> None: ...

    async def add_batch(self, job_id: str, items: Sequence[EncodedItem]) -> list[str]:
        """Append one batch; return the ids refused because the job already has them."""
        return await self.add_batches(job_id, (items,))

    @abc.abstractmethod
    async def add_batches(
        self, job_id: str, batches: Sequence[Sequence[EncodedItem]]
    ) -> list[str]: ...

    @abc.abstractmethod
    async def add_errors(
        self, job_id: str, errors: Sequence[ProcessingError], rejected: int
    ) -> None: ...

    @abc.abstractmethod
    async def seal_job(self, job_id: str) -> Progress: ...

    # -- work --------------------------------------------------------------------------------

    async def claim_batch(
        self,
        *,
        worker_id: str,
        lease_seconds: float,
        job_id: str | None = None,
        exclude: Collection[str] = (),
        types: Collection[str] | None = None,
    ) -> ClaimedBatch | None:
        """Lease the next batch (see :meth:`bulkpipe.store.JobStore.claim_batch`)."""
        want = ClaimRequest(
            worker_id=worker_id,
            lease_seconds=float(lease_seconds),
            job_id=job_id,
            exclude=list(exclude),
            types=list(types) if types is not None else None,
        )
        return await self._call("claiming a batch", self._claim, want)

    @abc.abstractmethod
    def _claim(self, conn: C, retry: bool, want: ClaimRequest) -> ClaimedBatch | None: ...

    async def record(self, job_id: str, reports: Sequence[BatchReport]) -> Progress:
        """Store outcomes, fenced by each report's lease token, and update the counts in the
        same transaction; safe to repeat after an unknown commit result (see the dialect's
        class docstring). With no report this is the same read as :meth:`progress`."""
        if not reports:
            return await self.progress(job_id)
        return await self._call("recording outcomes", self._record, job_id, reports)

    @abc.abstractmethod
    def _record(
        self, conn: C, retry: bool, job_id: str, reports: Sequence[BatchReport]
    ) -> Progress: ...

    async def progress(self, job_id: str) -> Progress:
        """The job's counts as they are now; :class:`JobNotFound` for an unknown id."""
        return await self._call("reading progress", self._read_progress, job_id)

    async def renew_leases(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        """Extend the leases still held; report lost leases and ended (or missing) jobs."""
        if not leases:
            return RenewResult(lost=(), ended_jobs=frozenset())
        return await self._call("renewing leases", self._renew, leases, float(lease_seconds))

    @abc.abstractmethod
    def _renew(
        self, conn: C, retry: bool, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult: ...

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give batches back (pending again, first in line) without finishing them."""
        if leases:
            await self._call("releasing batches", self._release, leases)

    @abc.abstractmethod
    def _release(self, conn: C, retry: bool, leases: Sequence[Lease]) -> None: ...

    async def finish_job(
        self, job_id: str, status: JobStatus, error: ProcessingError | None = None
    ) -> tuple[Job, bool]:
        """Move the job to a terminal status unless it has one; return it and whether this
        call changed it. ``COMPLETED`` is refused (unchanged, False) unless the job is sealed,
        has no open batch and every item has an outcome (see ``stores/_finish.py``)."""
        check_finish_status(status)
        end = FinishRequest(job_id=job_id, status=status, error=error)
        return await self._call("finishing a job", self._finish_job, end)

    @abc.abstractmethod
    def _finish_job(self, conn: C, retry: bool, end: FinishRequest) -> tuple[Job, bool]: ...

    # -- reading -----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        """A snapshot of the job; :class:`JobNotFound` for an unknown id."""
        return await self._call("reading a job", self._get_job, job_id)

    @abc.abstractmethod
    def _get_job(self, conn: C, retry: bool, job_id: str) -> Job: ...

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        owner: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally only of one status and/or one owner."""
        where = {
            "status": status.value if status is not None else None,
            "owner": owner,
            "limit": limit,
            "offset": offset,
        }
        return await self._call("listing jobs", self._list_jobs, where)

    @abc.abstractmethod
    def _list_jobs(self, conn: C, retry: bool, where: dict[str, Any]) -> list[Job]: ...

    def _job(self, row: JobRow, errors: list[ProcessingError]) -> Job:
        return job_from_row(row, errors)

    async def read_outcomes(
        self,
        job_id: str,
        *,
        failed: bool | None = None,
        cursor: int | None = None,
        limit: int = 1000,
        max_bytes: int | None = None,
    ) -> Page[ItemOutcome]:
        """Final outcomes in recording order, from ``cursor`` on, within ``max_bytes``."""
        want = OutcomePageRequest(
            job_id=job_id, failed=failed, after=cursor or 0, limit=limit, max_bytes=max_bytes
        )
        rows, more = await self._call("reading outcomes", self._outcome_page, want)
        last = rows[-1].seq if rows else None
        return Page(rows=[outcome_of(row) for row in rows], cursor=next_cursor(last, more, cursor))

    @abc.abstractmethod
    def _outcome_page(
        self, conn: C, retry: bool, want: OutcomePageRequest
    ) -> tuple[Sequence[OutcomeColumns], bool]:
        """Up to ``limit`` outcome rows after ``after`` (within ``max_bytes``, but at least
        one), and whether more follow."""

    async def read_failed_items(
        self, job_id: str, *, cursor: int | None = None, limit: int = 1000
    ) -> Page[EncodedItem]:
        """The stored items whose final outcome is failed, from ``cursor`` on."""
        rows = await self._call(
            "reading failed items", self._failed_items, job_id, cursor or 0, limit + 1
        )
        page = rows[:limit]
        last = page[-1].seq if page else None
        return Page(
            rows=[(row.item_id, row.payload) for row in page],
            cursor=next_cursor(last, len(rows) > limit, cursor),
        )

    @abc.abstractmethod
    def _failed_items(
        self, conn: C, retry: bool, job_id: str, after: int, limit: int
    ) -> list[FailedItem]:
        """Up to ``limit`` failed items after ``after`` (:class:`JobNotFound` if no job)."""
