"""A durable job store on PostgreSQL, shared by workers on many machines: :class:`PostgresStore`.

Why the synchronous psycopg API in threads: psycopg 3's async API (like most async SQL
drivers) runs on asyncio only, and bulkpipe must also run on trio. So every store call runs
psycopg's sync API in a worker thread (``anyio.to_thread.run_sync``), with connections from a
``psycopg_pool.ConnectionPool``; the event loop never blocks, on either backend. The thread
hop costs tens of microseconds, and a store call is one per batch (a hundred items by
default), never one per item, so it is a small share of the time.

Most calls are a single SQL statement (see ``sql/postgres/queries.sql``), so each costs one
round trip and is atomic in autocommit mode.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from .._snapshot import MAX_ERRORS, job_spec
from ..errors import BulkpipeError, InvalidArgument, JobNotFound, StoreError
from ..models import Job, JobStatus, ProcessingError
from ..store import BatchReport, ClaimedBatch, EncodedItem, Lease, Progress, RenewResult
from ._closed import refuse_closed
from ._encoding import error_from_json, error_json, progress_of
from ._postgres_errors import RETRY_FOR, describe_dsn, hint
from ._postgres_params import lease_params, lost_batches, record_params, refused, split_reports
from ._requests import ClaimRequest, FinishRequest, OutcomePageRequest
from ._rows import Counts, FailedItem, JobRow, JobState, OutcomePageRow, RecordedRow
from ._sqlhousekeeping import SQLHousekeeping

try:
    import psycopg
    import psycopg.conninfo
    import psycopg.errors
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise BulkpipeError(
        f"PostgresStore needs psycopg 3 and psycopg_pool ({exc}); "
        "install bulkpipe[postgres] (pip install 'bulkpipe[postgres]')"
    ) from exc

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("bulkpipe.stores.postgres")

_DIALECT = "postgres"
_TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal)
_FIRST_DELAY, _MAX_DELAY = 0.02, 1.0

Row = tuple[Any, ...]
Conn = psycopg.Connection[Row]
Pool = psycopg_pool.ConnectionPool[Conn]


class PostgresStore(SQLHousekeeping[Conn, Pool]):
    """Keeps jobs, items and outcomes in PostgreSQL, shared by workers on many machines.

    ``dsn`` is a libpq connection string or URL (``postgresql://user@host:5432/db``). The
    tables, named with ``prefix``, are created on first :meth:`open` (several processes may
    open at once: migrations run under an advisory lock), and a schema written by a newer
    bulkpipe is refused. Connections come from a pool of ``min_size`` to ``max_size``;
    ``connect_timeout`` bounds how long :meth:`open` (and waiting for a free connection) may
    take, so an unreachable server is a :class:`StoreError`, not a hang.

    Workers claim batches with ``SELECT ... FOR UPDATE SKIP LOCKED``, each under a lease that
    expires by the database clock, and every write of outcomes is fenced by the lease's token
    (a sequence, so strictly increasing). An outcome and the counts that include it are
    committed in one statement. When a connection drops (the server restarted, or the backend
    was terminated), a call is retried with backoff for up to 20 s; the writes are idempotent,
    so a retry after a commit whose result was lost stores and counts nothing twice. A claim
    whose answer was lost that way leaves its batch leased until the lease expires.

    Commits and the disk: a commit that waits for its WAL flush costs a disk flush, and a job
    of a million items makes tens of thousands of writes. So, unless ``flush_every_write``,
    the store's connections commit asynchronously (``synchronous_commit = off``) and only the
    writes that end a phase wait for the disk: sealing a job (every item is in) and its final
    status. Each such flush also flushes every commit before it. What this trades: if the
    *database server* crashes (not a worker: a killed worker loses nothing either way), the
    last fraction of a second of progress may be lost; those batches are simply run again
    (at-least-once, as after a worker crash), counts and outcomes stay consistent, and a
    sealed job never loses items nor a finished job its status. A batch is closed only in the
    statement that proves every one of its items has an outcome (its ``size`` and ``recorded``
    counts): a done report that finds outcomes missing, because an earlier write was lost,
    puts the batch back to pending (logged once as a warning) so that those items run again.
    A submit that the crash cut short fails with a :class:`StoreError` rather than seal a job
    that lost items.
    """

    dialect: ClassVar[str] = _DIALECT
    place: ClassVar[str] = "database"
    driver_error: ClassVar[type[Exception]] = psycopg.Error

    def __init__(
        self,
        dsn: str,
        *,
        prefix: str = "bulkpipe_",
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 10.0,
        flush_every_write: bool = False,
    ) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise InvalidArgument(f"dsn must be a non-empty connection string, not {dsn!r}")
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise InvalidArgument(
                f"need 0 <= min_size <= max_size and max_size >= 1, not {min_size}, {max_size}"
            )
        if connect_timeout <= 0:
            raise InvalidArgument(f"connect_timeout must be positive, not {connect_timeout}")
        super().__init__(prefix=prefix, where=describe_dsn(dsn))
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.flush_every_write = flush_every_write
        self._pool: Pool | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        # The last submit-side write to each job being submitted through this store object,
        # to notice writes that the server lost (see the add_batches query).
        self._last_write: dict[str, str] = {}

    def heartbeat_store(self) -> PostgresStore | None:
        """A new, unopened store on the same database with one connection, for a worker's
        heartbeat thread (:class:`bulkpipe.store.SupportsHeartbeatStore`)."""
        return PostgresStore(
            self.dsn,
            prefix=self.prefix,
            min_size=1,
            max_size=1,
            connect_timeout=self.connect_timeout,
            flush_every_write=self.flush_every_write,
        )

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"PostgreSQL store {self._where} (prefix {self.prefix!r})"

    def _hint(self, exc: Exception, *, retried: bool) -> str:
        return hint(exc, retried=retried)

    async def _call(
        self,
        what: str,
        fn: Callable[Concatenate[Conn, bool, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``fn(connection, retry, ...)`` in a worker thread with a pooled connection.

        On a connection error (``psycopg.OperationalError``: a dropped connection, a server
        restart, a deadlock) the call is retried with backoff, with ``retry=True`` so that a
        write can tell whether its earlier attempt may have committed.
        """
        pool, limiter = self._pool, self._limiter
        if pool is None or limiter is None:
            raise self._not_open()
        deadline: float | None = None
        delay = 0.0
        retry = False
        while True:
            try:
                return await anyio.to_thread.run_sync(
                    partial(self._with_connection, pool, fn, retry, *args, **kwargs),
                    limiter=limiter,
                )
            except psycopg.OperationalError as exc:
                now = anyio.current_time()
                deadline = now + RETRY_FOR if deadline is None else deadline
                if now + delay > deadline or self._pool is not pool:
                    raise self._error(what, exc) from exc
                log.warning(
                    "%r: %s failed (%s: %s); retrying in %.2f s",
                    self,
                    what,
                    type(exc).__name__,
                    str(exc).strip(),
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(_MAX_DELAY, max(_FIRST_DELAY, delay * 2))
                retry = True
            except psycopg.Error as exc:
                raise self._error(what, exc) from exc

    @staticmethod
    def _with_connection(
        pool: Pool,
        fn: Callable[Concatenate[Conn, bool, P], R],
        retry: bool,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        with pool.connection() as conn:
            return fn(conn, retry, *args, **kwargs)

    # -- opening ----------------------------------------------------------------------------

    def _is_open(self) -> bool:
        return self._pool is not None

    def _attach(self, held: Pool) -> None:
        self._pool = held
        self._limiter = anyio.CapacityLimiter(self.max_size)

    def _detach(self) -> Pool | None:
        pool, self._pool = self._pool, None
        self._limiter = None
        return pool

    def _connect(self) -> Pool:
        # One direct connection first: it fails at once, with libpq's own message, when the
        # server is unreachable or refuses us (the pool would keep retrying in the background).
        timeout = max(2, math.ceil(self.connect_timeout))  # libpq's minimum is 2 s
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=timeout) as conn:
            self._migrate(conn)
        pool: Pool = psycopg_pool.ConnectionPool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs={"autocommit": True, "connect_timeout": timeout},
            open=False,
            configure=None if self.flush_every_write else _commit_asynchronously,
            timeout=self.connect_timeout,
            name=f"bulkpipe-{self.prefix}",
        )
        try:
            pool.open(wait=self.min_size > 0, timeout=self.connect_timeout)
        except BaseException:
            pool.close()
            raise
        return pool

    def _version(self, conn: Conn) -> int:
        row = conn.execute(self._q["meta_table"]).fetchone()
        assert row is not None
        has_meta, has_jobs = row
        if not has_meta:
            if has_jobs:
                raise self._foreign(f"{self.prefix}jobs exists but {self.prefix}meta does not")
            return 0
        try:
            found = conn.execute(self._q["schema_version"]).fetchone()
            return int(found[0]) if found is not None else 0
        except (psycopg.errors.UndefinedColumn, ValueError) as exc:
            raise self._foreign(exc) from exc

    def _run_script(self, conn: Conn, script: str) -> None:
        conn.execute(script.encode())

    def _migrate(self, conn: Conn) -> None:
        if self._version(conn) == self.latest_schema:
            self.schema_version = self.latest_schema
            return
        with conn.transaction():
            conn.execute(self._q["migration_lock"])  # then read again: another may have migrated
            try:
                self._upgrade(conn)
            except psycopg.errors.DuplicateTable as exc:
                raise self._foreign(exc) from exc

    # -- submission -------------------------------------------------------------------------

    async def create_job(self, job: Job, *, submit_lease: float | None = None) -> Job:
        """Persist a new job, or find the one with its idempotency key (see :class:`SQLStore`)."""
        request = uuid.uuid4().hex
        stored = await self._create(job, submit_lease, {"request": request})
        if stored.id == job.id:
            self._last_write[job.id] = request
        return stored

    def _create_job(self, conn: Conn, retry: bool, row: dict[str, Any]) -> None:
        if conn.execute(self._q["create_job"], row).fetchone() is not None:
            return
        if retry:
            state = self._one(conn, "job_state", row, JobState._make)
            if state is not None and state.last_request == row["request"]:
                return  # our first attempt committed
        raise StoreError(f"a job with id {row['id']!r} already exists in this store")

    async def add_batches(self, job_id: str, batches: Sequence[Sequence[EncodedItem]]) -> list[str]:
        """Append batches in order, in one statement; return every refused id, in order."""
        ids = [item_id for items in batches for item_id, _ in items]
        if not ids:
            # Still an error for an unknown or sealed job, as for a call with items.
            return await self._call("adding items", self._add_nothing, job_id)
        params = {
            "id": job_id,
            "ids": ids,
            "payloads": [payload for items in batches for _, payload in items],
            "groups": [k for k, items in enumerate(batches) for _ in items],
            "request": uuid.uuid4().hex,
            "prev": self._last_write.get(job_id),
        }
        refused, written = await self._call("adding items", self._add_batches, params)
        if written is not None:
            self._last_write[job_id] = written
        return refused

    def _add_nothing(self, conn: Conn, retry: bool, job_id: str) -> list[str]:
        self._check_open_job(conn, {"id": job_id, "prev": None})
        return []

    def _check_open_job(self, conn: Conn, params: dict[str, Any], items: bool = True) -> None:
        """Raise unless items (else errors) may be added: JobClosed, or lost writes."""
        state = self._job_state(conn, params["id"])
        refuse_closed(params["id"], state.status, state.sealed, items=items)
        if params["prev"] is not None and state.last_request != params["prev"]:
            raise self._lost_writes(params["id"])

    def _lost_writes(self, job_id: str) -> StoreError:
        self._last_write.pop(job_id, None)
        return StoreError(
            f"PostgreSQL store {self._where}: the database no longer has the last items or "
            f"errors written to job {job_id!r} (did the server restart after a crash?); the "
            "job may be missing items: submit it again"
        )

    def _add_batches(
        self, conn: Conn, retry: bool, params: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        """The refused ids, and the job's new last_request if this call wrote (else None)."""
        ids: list[str] = params["ids"]
        if retry:
            state = self._one(conn, "job_state", params, JobState._make)
            written = state.last_request if state is not None else None
            request, _, first_batch = (written or "").partition(":")
            if state is not None and request == params["request"]:
                # The first attempt committed: its batches are the job's last ones.
                stored = conn.execute(
                    self._q["batch_item_ids"], {"job": state.seq, "batch_no": int(first_batch)}
                )
                return refused(ids, {item_id for (item_id,) in stored}), written
        row = conn.execute(self._q["add_batches"], params, binary=True).fetchone()
        if row is None:
            self._check_open_job(conn, params)  # JobClosed if it has ended or is sealed
            return list(ids), None  # every id is already in the job
        count, stored_ids, written = row
        if count == len(ids):
            return [], written
        return refused(ids, set(stored_ids)), written

    async def add_errors(
        self, job_id: str, errors: Sequence[ProcessingError], rejected: int
    ) -> None:
        """Record job-level errors (the first MAX_ERRORS are kept) and rejected items."""
        request = uuid.uuid4().hex
        params = {
            "id": job_id,
            "errors": json.dumps([error_json(e) for e in errors[:MAX_ERRORS]]),
            "count": len(errors),
            "rejected": rejected,
            "max_errors": MAX_ERRORS,
            "request": request,
            "prev": self._last_write.get(job_id),
        }
        await self._call("recording errors", self._add_errors, params)
        self._last_write[job_id] = request

    def _add_errors(self, conn: Conn, retry: bool, params: dict[str, Any]) -> None:
        if retry:
            state = self._one(conn, "job_state", params, JobState._make)
            if state is not None and state.last_request == params["request"]:
                return  # the first attempt committed
        if conn.execute(self._q["add_errors"], params).fetchone() is None:
            self._check_open_job(conn, params, items=False)  # JobNotFound, JobClosed
            raise self._lost_writes(params["id"])

    async def seal_job(self, job_id: str) -> Progress:
        """Mark that every item has been submitted."""
        params = {"id": job_id, "prev": self._last_write.get(job_id)}
        progress = await self._call("sealing a job", self._seal_job, params)
        self._last_write.pop(job_id, None)
        return progress

    def _seal_job(self, conn: Conn, retry: bool, params: dict[str, Any]) -> Progress:
        with conn.transaction():
            conn.execute(self._q["durable_commit"])
            row = self._one(conn, "seal_job", params, Counts._make)
        if row is None:
            self._job_state(conn, params["id"])  # JobNotFound if there is no such job
            raise self._lost_writes(params["id"])
        return progress_of(row)

    # -- work -------------------------------------------------------------------------------

    def _claim(self, conn: Conn, retry: bool, want: ClaimRequest) -> ClaimedBatch | None:
        params: dict[str, Any] = {"owner": want.worker_id, "lease": want.lease_seconds}
        if want.job_id is not None:
            params["id"] = want.job_id
        else:
            params["types"] = want.types
            params["exclude"] = want.exclude
        query = self._q["claim_job" if want.job_id is not None else "claim_any"]
        row = conn.execute(query, params, binary=True).fetchone()
        if row is None:
            return None
        job_id, type_, options, priority, batch_no, token, claims, ids, payloads = row
        return ClaimedBatch(
            job=job_spec(id=job_id, type=type_, options=options, priority=priority),
            lease=Lease(job_id=job_id, batch_no=batch_no, token=token),
            items=list(zip(ids, payloads, strict=True)) if ids is not None else [],
            claims=claims,
        )

    def _record(
        self, conn: Conn, retry: bool, job_id: str, reports: Sequence[BatchReport]
    ) -> Progress:
        """Outcomes and the counts that include them, in one statement. Safe to retry after
        an unknown commit result: outcomes already stored are neither stored nor counted
        again, and a repeated done report is accepted."""
        sent, late = split_reports(reports)
        # Not prepared: a prepared statement soon runs a generic plan, and the generic plan of
        # this one scans every batch of the store (the replay condition defeats the index).
        row = conn.execute(
            self._q["record"], record_params(job_id, sent, retry), binary=True, prepare=False
        ).fetchone()
        if row is None:  # the job is missing or has ended: nothing was written
            return self._read_progress(conn, retry, job_id)
        result = RecordedRow._make(row)
        held = {(batch_no, token) for batch_no, token in result.held}
        reopened = {batch_no: short for batch_no, short in result.reopened}
        for batch_no, short in reopened.items():
            log.warning(
                "%r: batch %d of job %s was reported done, but %d of its items have no stored "
                "outcome (the database server lost acknowledged writes, as after a crash with "
                "asynchronous commit); the batch is pending again and those items will run again",
                self,
                batch_no,
                job_id,
                short,
            )
        return progress_of(result, lost_batches(reports, late, held, reopened))

    def _renew(
        self, conn: Conn, retry: bool, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        params = {**lease_params(leases), "lease": lease_seconds}
        rows = conn.execute(self._q["renew_leases"], params).fetchall()
        lost: list[Lease] = []
        ended: set[str] = set()
        for lease, (_, _, _, status, renewed) in zip(leases, rows, strict=True):
            if status is None or status in _TERMINAL:
                ended.add(lease.job_id)
            if not renewed:
                lost.append(lease)
        return RenewResult(lost=tuple(lost), ended_jobs=frozenset(ended))

    def _release(self, conn: Conn, retry: bool, leases: Sequence[Lease]) -> None:
        conn.execute(self._q["release"], lease_params(leases))

    async def finish_job(
        self, job_id: str, status: JobStatus, error: ProcessingError | None = None
    ) -> tuple[Job, bool]:
        """Move the job to a terminal status unless it has one (see :class:`SQLStore`)."""
        self._last_write.pop(job_id, None)
        return await super().finish_job(job_id, status, error)

    def _finish_job(self, conn: Conn, retry: bool, end: FinishRequest) -> tuple[Job, bool]:
        params = {
            "id": end.job_id,
            "status": end.status.value,
            "error": json.dumps(error_json(end.error)) if end.error is not None else None,
            "max_errors": MAX_ERRORS,
        }
        with conn.transaction():
            conn.execute(self._q["durable_commit"])
            changed = conn.execute(self._q["finish_job"], params).fetchone() is not None
        # A retry cannot tell whether its first attempt made the change; it was this store's
        # call either way, and the terminal state is written once.
        return self._get_job(conn, retry, end.job_id), changed

    # -- reading ----------------------------------------------------------------------------

    def _snapshot(self, row: JobRow) -> Job:
        return self._job(row, [error_from_json(entry) for entry in row.errors])

    def _get_job(self, conn: Conn, retry: bool, job_id: str) -> Job:
        row = self._one(conn, "get_job", {"id": job_id}, JobRow._make)
        if row is None:
            raise JobNotFound(job_id)
        return self._snapshot(row)

    def _list_jobs(self, conn: Conn, retry: bool, where: dict[str, Any]) -> list[Job]:
        return [
            self._snapshot(JobRow._make(row)) for row in conn.execute(self._q["list_jobs"], where)
        ]

    def _outcome_page(
        self, conn: Conn, retry: bool, want: OutcomePageRequest
    ) -> tuple[list[OutcomePageRow], bool]:
        params = {
            "id": want.job_id,
            "after": want.after,
            "ok": None if want.failed is None else not want.failed,
            "limit": want.limit + 1,  # one more, to know whether another page follows
            "budget": want.max_bytes,
        }
        rows = map(OutcomePageRow._make, self._page(conn, "outcomes", params))
        found = [row for row in rows if row.seq is not None]
        page = found[: want.limit]
        # fetched: how many rows (up to limit + 1) were left, whether or not they fitted
        return page, bool(found) and found[0].fetched > len(page)

    def _failed_items(
        self, conn: Conn, retry: bool, job_id: str, after: int, limit: int
    ) -> list[FailedItem]:
        params = {"id": job_id, "after": after, "limit": limit}
        rows = map(FailedItem._make, self._page(conn, "failed_items", params))
        return [row for row in rows if row.seq is not None]

    def _page(self, conn: Conn, query: str, params: dict[str, Any]) -> list[Row]:
        """The rows of a page query: none means no such job, one of NULLs means no rows."""
        rows = conn.execute(self._q[query], params).fetchall()
        if not rows:
            raise JobNotFound(params["id"])
        return rows


def _commit_asynchronously(conn: Conn) -> None:
    """Pool connections commit without waiting for the disk (see the class docstring)."""
    conn.execute("SET synchronous_commit = off")
