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
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from .._snapshot import MAX_ERRORS, job_from_row, job_spec, outcome_from_row
from ..errors import BulkpipeError, InvalidArgument, JobNotFound, StoreError
from ..items import encode_json
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
from ._sql import check_prefix, load_migrations, load_queries

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
#: How long a store call keeps retrying after connection errors before it gives up.
_RETRY_FOR = 20.0
_FIRST_DELAY, _MAX_DELAY = 0.02, 1.0

Row = tuple[Any, ...]
Conn = psycopg.Connection[Row]


def _clean(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters; keep the rest of a message."""
    return text.replace("\x00", "\ufffd") if text is not None and "\x00" in text else text


def _error_json(error: ProcessingError) -> dict[str, Any]:
    return {
        "item_id": _clean(error.item_id),
        "error": _clean(error.error),
        "error_type": _clean(error.error_type),
        "at": error.timestamp.timestamp(),
        "retry_count": error.retry_count,
    }


def _error(entry: dict[str, Any]) -> ProcessingError:
    return ProcessingError(
        item_id=entry["item_id"],
        error=entry["error"],
        error_type=entry["error_type"],
        timestamp=datetime.fromtimestamp(entry["at"], UTC),
        retry_count=entry["retry_count"],
    )


def _progress(row: Row, lost: tuple[int, ...] = ()) -> Progress:
    status, sealed, total, succeeded, failed, open_batches = row[:6]
    return Progress(
        status=JobStatus(status),
        sealed=sealed,
        total=total,
        succeeded=succeeded,
        failed=failed,
        open_batches=open_batches,
        lost=lost,
    )


def _job(row: Row) -> Job:
    # The errors list (a JSON array) comes between error_count and created_at.
    return job_from_row((*row[:15], *row[16:]), [_error(e) for e in row[15]])


def _outcome(row: Row) -> ItemOutcome:
    return outcome_from_row(*row[1:])


def _page_rows(rows: list[Row], job_id: str) -> list[Row]:
    """The rows of a page query: none means no such job, one of NULLs means no rows."""
    if not rows:
        raise JobNotFound(job_id)
    return [row for row in rows if row[0] is not None]


def _describe(dsn: str) -> str:
    """Where the store connects, without the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{params.get('dbname') or ''}"


def _hint(exc: psycopg.Error, *, retried: bool = True) -> str:
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return (
            "a table or column of the store is missing; was the schema dropped or changed, "
            "or is the prefix wrong?"
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return "the database user lacks a privilege on the store's tables; check its grants"
    if isinstance(exc, psycopg.errors.DiskFull):
        return "the database server's disk is full; free some space"
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return "the server is read-only (a standby?); point the store at the primary"
    if isinstance(exc, psycopg.DataError):
        return "a value could not be stored; check the items and results for odd values"
    if isinstance(exc, psycopg.OperationalError):
        retry = f"the call was retried for up to {_RETRY_FOR:g} s; " if retried else ""
        return f"{retry}check that the server is running and reachable from this machine"
    return "check the PostgreSQL server log"


class PostgresStore:
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
        self.dsn = dsn
        self.prefix = check_prefix(prefix)
        #: The schema version of the open database (None until :meth:`open`).
        self.schema_version: int | None = None
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.flush_every_write = flush_every_write
        self._where = _describe(dsn)
        self._q = load_queries(_DIALECT, prefix)
        self._pool: psycopg_pool.ConnectionPool[Conn] | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._lock: anyio.Lock | None = None
        # The last submit-side write to each job being submitted through this store object,
        # to notice writes that the server lost (see the add_batches query).
        self._last_write: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r}, prefix={self.prefix!r})"

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

    def _error(self, what: str, exc: psycopg.Error, *, retried: bool = True) -> StoreError:
        return StoreError(
            f"PostgreSQL store {self._where} (prefix {self.prefix!r}): {what} failed "
            f"({type(exc).__name__}: {str(exc).strip()}); {_hint(exc, retried=retried)}"
        )

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
            raise StoreError(f"{self!r} is not open; call open() first (Pipeline and Worker do)")
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
                deadline = now + _RETRY_FOR if deadline is None else deadline
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
        pool: psycopg_pool.ConnectionPool[Conn],
        fn: Callable[Concatenate[Conn, bool, P], R],
        retry: bool,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        with pool.connection() as conn:
            return fn(conn, retry, *args, **kwargs)

    # -- opening ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or upgrade the schema, and start the pool. Idempotent."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._pool is not None:
                return
            try:
                self._pool = await anyio.to_thread.run_sync(self._connect)
            except psycopg.Error as exc:
                raise self._error("opening the store", exc, retried=False) from exc
            self._limiter = anyio.CapacityLimiter(self.max_size)

    async def close(self) -> None:
        """Close the pool's connections. Idempotent; committed data stays in the database."""
        if self._lock is None:
            return
        async with self._lock:
            pool, self._pool = self._pool, None
            self._limiter = None
            if pool is not None:
                await anyio.to_thread.run_sync(pool.close)

    def _connect(self) -> psycopg_pool.ConnectionPool[Conn]:
        # One direct connection first: it fails at once, with libpq's own message, when the
        # server is unreachable or refuses us (the pool would keep retrying in the background).
        timeout = max(2, math.ceil(self.connect_timeout))  # libpq's minimum is 2 s
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=timeout) as conn:
            self._migrate(conn)
        pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
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

    def _migrate(self, conn: Conn) -> None:
        migrations = load_migrations(_DIALECT, self.prefix)
        latest = migrations[-1][0]
        if self._version(conn) == latest:
            self.schema_version = latest
            return
        with conn.transaction():
            conn.execute(self._q["migration_lock"])
            version = self._version(conn)  # again: another process may have migrated
            if version > latest:
                raise StoreError(
                    f"PostgreSQL store {self._where} (prefix {self.prefix!r}): the schema was "
                    f"created by a newer bulkpipe (version {version}; this one knows up to "
                    f"{latest}); upgrade bulkpipe"
                )
            try:
                for number, script in migrations:
                    if number > version:
                        conn.execute(script.encode())
                        conn.execute(self._q["set_schema_version"], {"version": str(number)})
            except psycopg.errors.DuplicateTable as exc:
                raise self._foreign(exc) from exc
        self.schema_version = latest

    def _foreign(self, detail: object) -> StoreError:
        return StoreError(
            f"PostgreSQL store {self._where}: the database has tables named {self.prefix}* "
            f"that bulkpipe did not create, or that were changed ({str(detail).strip()}); "
            "use another prefix or another database"
        )

    # -- submission -------------------------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        """Persist a new job (pending, unsealed, no items)."""
        try:
            params = encode_json(job.params) if job.params is not None else None
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"job params must be JSON-serialisable: {exc}") from exc
        request = uuid.uuid4().hex
        row = {
            "id": job.id,
            "type": job.type,
            "options": job.options.model_dump_json(),
            "priority": job.priority,
            "retry_of": job.retry_of,
            "owner": job.owner,
            "source": job.source,
            "params": params,
            "created_at": job.created_at.timestamp(),
            "request": request,
        }
        await self._call("creating a job", self._create_job, row)
        self._last_write[job.id] = request

    def _create_job(self, conn: Conn, retry: bool, row: dict[str, Any]) -> None:
        if conn.execute(self._q["create_job"], row).fetchone() is not None:
            return
        if retry:
            state = conn.execute(self._q["job_state"], row).fetchone()
            if state is not None and state[4] == row["request"]:
                return  # our first attempt committed
        raise StoreError(f"a job with id {row['id']!r} already exists in this store")

    async def add_batch(self, job_id: str, items: Sequence[EncodedItem]) -> list[str]:
        """Append one batch; return the ids refused because the job already has them."""
        return await self.add_batches(job_id, (items,))

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

    def _check_open_job(self, conn: Conn, params: dict[str, Any]) -> bool:
        """Raise unless items may be added; False if the job has ended (nothing is added)."""
        job_id = params["id"]
        state = conn.execute(self._q["job_state"], params).fetchone()
        if state is None:
            raise JobNotFound(job_id)
        if state[2]:
            raise StoreError(f"job {job_id!r} is sealed; no more items can be added")
        if params["prev"] is not None and state[4] != params["prev"]:
            raise self._lost_writes(job_id)
        return state[1] not in _TERMINAL

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
            state = conn.execute(self._q["job_state"], params).fetchone()
            written: str | None = state[4] if state is not None else None
            request, _, first_batch = (written or "").partition(":")
            if state is not None and request == params["request"]:
                # The first attempt committed: its batches are the job's last ones.
                stored = conn.execute(
                    self._q["batch_item_ids"], {"job": state[0], "batch_no": int(first_batch)}
                ).fetchall()
                return _refused(ids, {row[0] for row in stored}), written
        row = conn.execute(self._q["add_batches"], params, binary=True).fetchone()
        if row is None:
            if not self._check_open_job(conn, params):
                return [], None  # the job has ended: nothing is stored
            return list(ids), None  # every id is already in the job
        count, stored_ids, written = row
        if count == len(ids):
            return [], written
        return _refused(ids, set(stored_ids)), written

    async def add_errors(
        self, job_id: str, errors: Sequence[ProcessingError], rejected: int
    ) -> None:
        """Record job-level errors (the first MAX_ERRORS are kept) and rejected items."""
        request = uuid.uuid4().hex
        params = {
            "id": job_id,
            "errors": json.dumps([_error_json(e) for e in errors[:MAX_ERRORS]]),
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
            state = conn.execute(self._q["job_state"], params).fetchone()
            if state is not None and state[4] == params["request"]:
                return  # the first attempt committed
        if conn.execute(self._q["add_errors"], params).fetchone() is None:
            if conn.execute(self._q["job_state"], params).fetchone() is None:
                raise JobNotFound(params["id"])
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
            row = conn.execute(self._q["seal_job"], params).fetchone()
        if row is None:
            if conn.execute(self._q["job_state"], params).fetchone() is None:
                raise JobNotFound(params["id"])
            raise self._lost_writes(params["id"])
        return _progress(row)

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
        """Lease the next batch (see :meth:`bulkpipe.store.JobStore.claim_batch`)."""
        params: dict[str, Any] = {"owner": worker_id, "lease": float(lease_seconds)}
        if job_id is not None:
            params["id"] = job_id
        else:
            params["types"] = list(types) if types is not None else None
            params["exclude"] = list(exclude)
        return await self._call("claiming a batch", self._claim, params)

    def _claim(self, conn: Conn, retry: bool, params: dict[str, Any]) -> ClaimedBatch | None:
        query = self._q["claim_job" if "id" in params else "claim_any"]
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

    async def record(self, job_id: str, reports: Sequence[BatchReport]) -> Progress:
        """Store outcomes, fenced by each report's lease token, and update the counts in the
        same statement. Safe to retry after an unknown commit result: outcomes already stored
        are neither stored nor counted again, and a repeated done report is accepted."""
        if not reports:
            return await self._call("reading progress", self._read_progress, job_id)
        return await self._call("recording outcomes", self._record, job_id, reports)

    def _read_progress(self, conn: Conn, retry: bool, job_id: str) -> Progress:
        row = conn.execute(self._q["progress"], {"id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _progress(row)

    def _record(
        self, conn: Conn, retry: bool, job_id: str, reports: Sequence[BatchReport]
    ) -> Progress:
        # A report after one that closed the same batch in this call finds it done: lost.
        closed: set[int] = set()
        sent: list[BatchReport] = []
        late: set[int] = set()
        for i, report in enumerate(reports):
            if report.lease.batch_no in closed:
                late.add(i)
                continue
            sent.append(report)
            if report.done:
                closed.add(report.lease.batch_no)
        # Not prepared: a prepared statement soon runs a generic plan, and the generic plan of
        # this one scans every batch of the store (the replay condition defeats the index).
        row = conn.execute(
            self._q["record"], _record_params(job_id, sent, retry), binary=True, prepare=False
        )
        result = row.fetchone()
        if result is None:  # the job is missing or has ended: nothing was written
            return self._read_progress(conn, retry, job_id)
        held = {(batch_no, token) for batch_no, token in result[6]}
        reopened = {batch_no: short for batch_no, short in result[7]}
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
        lost = tuple(
            r.lease.batch_no
            for i, r in enumerate(reports)
            if i in late
            or (r.lease.batch_no, r.lease.token) not in held
            or (r.done and r.lease.batch_no in reopened)
        )
        return _progress(result, lost)

    async def renew_leases(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        """Extend the leases still held; report lost leases and ended (or missing) jobs."""
        if not leases:
            return RenewResult(lost=(), ended_jobs=frozenset())
        params = {**_lease_params(leases), "lease": float(lease_seconds)}
        rows = await self._call("renewing leases", self._rows, "renew_leases", params)
        lost: list[Lease] = []
        ended: set[str] = set()
        for lease, (_, _, _, status, renewed) in zip(leases, rows, strict=True):
            if status is None or status in _TERMINAL:
                ended.add(lease.job_id)
            if not renewed:
                lost.append(lease)
        return RenewResult(lost=tuple(lost), ended_jobs=frozenset(ended))

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give batches back (pending again) without finishing them."""
        if leases:
            await self._call("releasing batches", self._execute, "release", _lease_params(leases))

    async def finish_job(
        self, job_id: str, status: JobStatus, error: ProcessingError | None = None
    ) -> tuple[Job, bool]:
        """Move the job to a terminal status unless it has one; return it and whether this
        call changed it. ``COMPLETED`` is refused (unchanged, False) unless the job is sealed,
        has no open batch and every item has an outcome."""
        if not status.is_terminal:
            raise ValueError(f"finish_job needs a terminal status, not {status}")
        params = {
            "id": job_id,
            "status": status.value,
            "error": json.dumps(_error_json(error)) if error is not None else None,
            "max_errors": MAX_ERRORS,
        }
        self._last_write.pop(job_id, None)
        return await self._call("finishing a job", self._finish_job, params)

    def _finish_job(self, conn: Conn, retry: bool, params: dict[str, Any]) -> tuple[Job, bool]:
        with conn.transaction():
            conn.execute(self._q["durable_commit"])
            changed = conn.execute(self._q["finish_job"], params).fetchone() is not None
        # A retry cannot tell whether its first attempt made the change; it was this store's
        # call either way, and the terminal state is written once.
        return self._get_job(conn, retry, params["id"]), changed

    # -- reading ----------------------------------------------------------------------------

    def _rows(self, conn: Conn, retry: bool, query: str, params: dict[str, Any]) -> list[Row]:
        return conn.execute(self._q[query], params).fetchall()

    def _execute(self, conn: Conn, retry: bool, query: str, params: dict[str, Any]) -> None:
        conn.execute(self._q[query], params)

    def _get_job(self, conn: Conn, retry: bool, job_id: str) -> Job:
        row = conn.execute(self._q["get_job"], {"id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    async def get_job(self, job_id: str) -> Job:
        """A snapshot of the job; :class:`JobNotFound` for an unknown id."""
        return await self._call("reading a job", self._get_job, job_id)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        owner: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally only of one status and/or one owner."""
        params = {
            "status": status.value if status is not None else None,
            "owner": owner,
            "limit": limit,
            "offset": offset,
        }
        rows = await self._call("listing jobs", self._rows, "list_jobs", params)
        return [_job(row) for row in rows]

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
        params = {
            "id": job_id,
            "after": cursor or 0,
            "ok": None if failed is None else not failed,
            "limit": limit + 1,  # one more, to know whether another page follows
            "budget": max_bytes,
        }
        rows = _page_rows(
            await self._call("reading outcomes", self._rows, "outcomes", params), job_id
        )
        page = rows[:limit]
        more = bool(rows) and rows[0][-1] > len(page)  # fetched: the rows within the limit
        cursor = int(page[-1][0]) if more and page else None
        return Page(rows=[_outcome(row[:-1]) for row in page], cursor=cursor)

    async def read_failed_items(
        self, job_id: str, *, cursor: int | None = None, limit: int = 1000
    ) -> Page[EncodedItem]:
        """The stored items whose final outcome is failed, from ``cursor`` on."""
        params = {"id": job_id, "after": cursor or 0, "limit": limit + 1}
        rows = _page_rows(
            await self._call("reading failed items", self._rows, "failed_items", params), job_id
        )
        return Page(
            rows=[(item_id, payload) for _, item_id, payload in rows[:limit]],
            cursor=_next(rows, limit),
        )


def _commit_asynchronously(conn: Conn) -> None:
    """Pool connections commit without waiting for the disk (see the class docstring)."""
    conn.execute("SET synchronous_commit = off")


def _next(rows: list[Row], limit: int) -> int | None:
    """The cursor after a page read with one row more than ``limit``; None on the last page."""
    return int(rows[limit - 1][0]) if len(rows) > limit > 0 else None


def _refused(ids: Sequence[str], stored: set[str]) -> list[str]:
    """The ids of a call that were not stored: known before, or repeated within the call."""
    refused: list[str] = []
    for item_id in ids:
        if item_id in stored:
            stored.discard(item_id)  # a second one in this call is a repeat
        else:
            refused.append(item_id)
    return refused


def _lease_params(leases: Sequence[Lease]) -> dict[str, Any]:
    return {
        "job_ids": [lease.job_id for lease in leases],
        "batch_nos": [lease.batch_no for lease in leases],
        "tokens": [lease.token for lease in leases],
    }


def _record_params(job_id: str, reports: Sequence[BatchReport], replay: bool) -> dict[str, Any]:
    """The record query's parameters: one array per column, outcomes flattened."""
    o_report: list[int] = []  # each outcome's report, numbered from 1 like WITH ORDINALITY
    rows: list[Any] = []
    for n, report in enumerate(reports, 1):
        o_report.extend([n] * len(report.outcomes))
        rows.extend(report.outcomes)
    columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] or [[]] * 8
    item, ok, result, error, error_type, attempts, started, finished = columns
    if any(e is not None and "\x00" in e for e in error):
        error = [_clean(e) for e in error]
    return {
        "id": job_id,
        "replay": replay,
        "batch_nos": [r.lease.batch_no for r in reports],
        "tokens": [r.lease.token for r in reports],
        "done": [r.done for r in reports],
        "o_count": len(rows),
        "o_report": o_report,
        "o_item": item,
        "o_ok": ok,
        "o_result": result,
        "o_error": error,
        "o_type": error_type,
        "o_attempts": attempts,
        "o_started": started,
        "o_finished": finished,
        "max_errors": MAX_ERRORS,
    }
