"""A durable job store in one SQLite file: :class:`SQLiteStore`."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from .._snapshot import MAX_ERRORS, job_spec
from ..errors import InvalidArgument, JobNotFound, StoreError
from ..models import Job, JobStatus, ProcessingError
from ..store import BatchReport, ClaimedBatch, EncodedItem, Lease, Progress, RenewResult
from ._closed import refuse_closed
from ._finish import may_finish
from ._rows import BatchLease, Counts, FailedItem, JobKey, JobRow, LeasedRow, OutcomeRecord, SpecRow
from ._sqlbase import ClaimRequest, FinishRequest, OutcomePageRequest, progress_of
from ._sqlhousekeeping import SQLHousekeeping
from ._sqlite_errors import hint
from ._sqlite_schema import expected_schema, schema_objects, statements

P = ParamSpec("P")
R = TypeVar("R")

_DIALECT = "sqlite"
_MIN_VERSION = (3, 35, 0)  # RETURNING and ON CONFLICT DO NOTHING
_ACTIVE = frozenset({JobStatus.PENDING.value, JobStatus.PROCESSING.value})

Conn = sqlite3.Connection


def _scalar(conn: Conn, query: str, params: dict[str, Any] | None = None) -> Any:
    """The one value of a one-column, one-row query (a count, a max, a new token)."""
    (value,) = conn.execute(query, params or {}).fetchone()
    return value


class SQLiteStore(SQLHousekeeping[Conn, Conn]):
    """Keeps jobs, items and outcomes in one SQLite file, shared safely by several processes.

    The file is created, with its tables, on first :meth:`open`; the schema is versioned and a
    file written by a newer bulkpipe is refused. Table names start with ``prefix`` so several
    applications can share one file. ``busy_timeout`` is how many seconds a call waits for
    another process's write to finish before it fails.

    Concurrency: each store object has one connection, used by one thread at a time (calls run
    in a worker thread, so the event loop never blocks, on asyncio or trio). Every write is a
    ``BEGIN IMMEDIATE`` transaction, so writers from any number of processes are serialised
    and a claim (read the next batch, lease it) is atomic: two workers never lease the same
    batch. Lease expiry uses the wall clock (``time.time()``), which all processes on one
    machine share; the file must not be shared across machines (use PostgreSQL for that).

    Durability: the file runs in WAL mode with ``synchronous=NORMAL``. A committed write
    (an item batch, an outcome and the counts that include it) survives the process being
    killed at any moment, SIGKILL included; an operating-system crash or power loss may lose
    the last transactions before the WAL was synced, never corrupting the file.

    Work per call is per batch: adding a batch or recording outcomes is one statement over all
    of its rows, and nothing per item is kept in memory, however many items a job has.
    """

    dialect: ClassVar[str] = _DIALECT
    place: ClassVar[str] = "file"
    driver_error: ClassVar[type[Exception]] = sqlite3.Error

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prefix: str = "bulkpipe_",
        busy_timeout: float = 30.0,
    ) -> None:
        if busy_timeout < 0:
            raise InvalidArgument(f"busy_timeout must be 0 or more seconds, not {busy_timeout}")
        self.path = os.fspath(path)
        super().__init__(prefix=prefix, where=self.path)
        self.busy_timeout = busy_timeout
        self._conn: Conn | None = None

    def heartbeat_store(self) -> SQLiteStore | None:
        """A new, unopened store on the same file, for a worker's heartbeat thread
        (:class:`bulkpipe.store.SupportsHeartbeatStore`); None for an in-memory database,
        which a second connection would not share."""
        if self.path in ("", ":memory:") or "mode=memory" in self.path:
            return None
        return SQLiteStore(self.path, prefix=self.prefix, busy_timeout=self.busy_timeout)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"SQLite store {self.path!r}"

    def _describe(self, exc: Exception) -> str:
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        return f"{name}: {exc}"

    def _hint(self, exc: Exception, *, retried: bool) -> str:
        return hint(exc)

    async def _call(
        self,
        what: str,
        fn: Callable[Concatenate[Conn, bool, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``fn(connection, False, ...)`` in a worker thread, one call at a time."""
        if self._lock is None:
            raise self._not_open()
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"{self!r} is closed; open it again to use it")
            try:
                return await anyio.to_thread.run_sync(partial(fn, conn, False, *args, **kwargs))
            except sqlite3.Error as exc:
                raise self._error(what, exc) from exc

    @contextmanager
    def _transaction(self, conn: Conn, *, write: bool = True) -> Iterator[None]:
        conn.execute(self._q["begin_write" if write else "begin_read"])
        try:
            yield
            conn.execute(self._q["commit"])
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute(self._q["rollback"])
            raise

    # -- opening ----------------------------------------------------------------------------

    def _is_open(self) -> bool:
        return self._conn is not None

    def _attach(self, held: Conn) -> None:
        self._conn = held

    def _detach(self) -> Conn | None:
        conn, self._conn = self._conn, None
        return conn

    def _connect(self) -> Conn:
        if sqlite3.sqlite_version_info < _MIN_VERSION:
            raise StoreError(
                f"SQLiteStore needs SQLite {'.'.join(map(str, _MIN_VERSION))} or newer; this "
                f"Python uses {sqlite3.sqlite_version}"
            )
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # transactions are explicit
            check_same_thread=False,  # one thread at a time, guarded by the store's lock
            cached_statements=256,
        )
        # Switching a new file to WAL can answer SQLITE_BUSY at once, without waiting for the
        # busy timeout, while another process opens the same file: retry within that timeout.
        deadline = time.monotonic() + self.busy_timeout
        try:
            while True:
                try:
                    conn.execute(self._q["journal_wal"])
                    conn.execute(self._q["synchronous_normal"])
                    self._migrate(conn)
                    self._check_schema(conn)
                    return conn
                except sqlite3.OperationalError as exc:
                    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
                    busy = code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                    if not busy or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.02)
        except BaseException:
            conn.close()
            raise

    def _version(self, conn: Conn) -> int:
        if not _scalar(conn, self._q["meta_exists"]):
            return 0
        row = conn.execute(self._q["schema_version"]).fetchone()
        return int(row[0]) if row is not None else 0

    def _run_script(self, conn: Conn, script: str) -> None:
        for statement in statements(script):
            conn.execute(statement)

    def _migrate(self, conn: Conn) -> None:
        with self._transaction(conn):
            try:
                self._upgrade(conn)
                conn.execute(self._q["check_writable"])
            except sqlite3.OperationalError as exc:
                if "already exists" in str(exc) or "no such" in str(exc):
                    raise self._foreign(exc) from exc
                raise

    def _check_schema(self, conn: Conn) -> None:
        actual = schema_objects(conn, self.prefix)
        expected = expected_schema(self.prefix)
        if actual != expected:
            differ = sorted({row.name for row in set(actual) ^ set(expected)})
            raise self._foreign(f"unexpected: {', '.join(differ)}")

    # -- submission -------------------------------------------------------------------------

    def _create_job(self, conn: Conn, retry: bool, row: dict[str, Any]) -> None:
        with self._transaction(conn):
            if conn.execute(self._q["job_state"], {"id": row["id"]}).fetchone() is not None:
                raise StoreError(f"a job with id {row['id']!r} already exists in this store")
            conn.execute(self._q["insert_job"], row)

    async def add_batches(self, job_id: str, batches: Sequence[Sequence[EncodedItem]]) -> list[str]:
        """Append batches in order, in one transaction; return every refused id, in order."""
        return await self._call("adding items", self._add_batches, job_id, batches)

    def _add_batches(
        self, conn: Conn, retry: bool, job_id: str, batches: Sequence[Sequence[EncodedItem]]
    ) -> list[str]:
        q = self._q
        duplicates: list[str] = []
        with self._transaction(conn):
            state = self._job_state(conn, job_id)
            refuse_closed(job_id, state.status, state.sealed)
            if not any(batches):
                return []
            job = state.seq
            batch_no, total = state.next_batch, 0
            last = _scalar(conn, q["last_item"])
            for items in batches:
                before = last
                stored = conn.executemany(
                    q["insert_items"],
                    ((job, item_id, batch_no, payload) for item_id, payload in items),
                ).rowcount
                if stored < len(items):
                    kept = {
                        item_id
                        for (item_id,) in conn.execute(q["item_ids_after"], {"after": before})
                    }
                    for item_id, _ in items:
                        if item_id in kept:
                            kept.discard(item_id)  # a second one in this call is a duplicate
                        else:
                            duplicates.append(item_id)
                if not stored:
                    continue  # only repeats: no batch, and the next one takes this number
                last = _scalar(conn, q["last_item"])
                conn.execute(
                    q["insert_batch"],
                    {
                        "job": job,
                        "batch_no": batch_no,
                        "size": stored,
                        "first_item": before,
                        "last_item": last,
                    },
                )
                batch_no += 1
                total += stored
            if total:
                conn.execute(
                    q["count_batches"],
                    {"job": job, "size": total, "batches": batch_no - state.next_batch},
                )
        return duplicates

    async def add_errors(
        self, job_id: str, errors: Sequence[ProcessingError], rejected: int
    ) -> None:
        """Record job-level errors (the first MAX_ERRORS are kept) and rejected items."""
        await self._call("recording errors", self._add_errors, job_id, errors, rejected)

    def _add_errors(
        self,
        conn: Conn,
        retry: bool,
        job_id: str,
        errors: Sequence[ProcessingError],
        rejected: int,
    ) -> None:
        with self._transaction(conn):
            state = self._job_state(conn, job_id)
            refuse_closed(job_id, state.status, state.sealed, items=False)
            job = state.seq
            self._keep_errors(conn, job, errors)
            conn.execute(
                self._q["count_errors"], {"job": job, "errors": len(errors), "rejected": rejected}
            )

    def _keep_errors(self, conn: Conn, job: int, errors: Sequence[ProcessingError]) -> None:
        if not errors:
            return
        room = MAX_ERRORS - _scalar(conn, self._q["kept_errors"], {"job": job})
        if room > 0:
            conn.executemany(
                self._q["insert_error"],
                (
                    (job, e.item_id, e.error, e.error_type, e.timestamp.timestamp(), e.retry_count)
                    for e in errors[:room]
                ),
            )

    async def seal_job(self, job_id: str) -> Progress:
        """Mark that every item has been submitted."""
        return await self._call("sealing a job", self._seal_job, job_id)

    def _seal_job(self, conn: Conn, retry: bool, job_id: str) -> Progress:
        with self._transaction(conn):
            job = self._job_state(conn, job_id).seq
            conn.execute(self._q["seal_job"], {"job": job})
            return self._counts(conn, job)

    def _counts(self, conn: Conn, job: int) -> Progress:
        row = conn.execute(self._q["progress_by_seq"], {"job": job}).fetchone()
        return progress_of(Counts._make(row))

    # -- work -------------------------------------------------------------------------------

    def _claim(self, conn: Conn, retry: bool, want: ClaimRequest) -> ClaimedBatch | None:
        q = self._q
        job_id = want.job_id
        where: dict[str, Any] = {
            "types": json.dumps(want.types) if want.types is not None else None,
            "exclude": json.dumps(want.exclude),
        }
        if job_id is None:
            # Idle workers poll like this: look first without taking the write lock.
            probe = conn.execute(q["next_job"], {**where, "now": time.time()}).fetchone()
            if probe is None:
                return None
        with self._transaction(conn):
            now = time.time()  # read under the write lock, so claims see time move forward
            if job_id is not None:
                spec = self._one(conn, "job_spec_by_id", {"id": job_id}, SpecRow._make)
                if spec is None or spec.status not in _ACTIVE:
                    return None
            else:
                found = conn.execute(q["next_job"], {**where, "now": now}).fetchone()
                if found is None:
                    return None
                (seq,) = found
                spec = self._one(conn, "job_spec", {"job": seq}, SpecRow._make)
                assert spec is not None  # found under the same write lock
            row = conn.execute(q["pending_batch"], {"job": spec.seq}).fetchone()
            if row is None:
                row = conn.execute(q["expired_batch"], {"job": spec.seq, "now": now}).fetchone()
                if row is None:
                    return None
            (batch_no,) = row
            token = _scalar(conn, q["next_token"])
            leased = LeasedRow._make(
                conn.execute(
                    q["lease_batch"],
                    {
                        "job": spec.seq,
                        "batch_no": batch_no,
                        "token": token,
                        "owner": want.worker_id,
                        "expires_at": now + want.lease_seconds,
                    },
                ).fetchone()
            )
            if spec.status == JobStatus.PENDING.value:
                conn.execute(q["start_job"], {"job": spec.seq, "now": now})
            items = conn.execute(
                q["batch_items_unfinished" if leased.recorded else "batch_items"],
                {"first_item": leased.first_item, "last_item": leased.last_item},
            ).fetchall()
        return ClaimedBatch(
            job=job_spec(id=spec.id, type=spec.type, options=spec.options, priority=spec.priority),
            lease=Lease(job_id=spec.id, batch_no=batch_no, token=token),
            items=items,
            claims=leased.claims,
        )

    def _record(
        self, conn: Conn, retry: bool, job_id: str, reports: Sequence[BatchReport]
    ) -> Progress:
        """Outcomes and the counts that include them, in one transaction. Safe to repeat
        after an unknown commit result: stored outcomes are not stored or counted twice (a
        repeated done report comes back as lost)."""
        q = self._q
        with self._transaction(conn):
            head = self._one(conn, "job_status", {"id": job_id}, JobKey._make)
            if head is None:
                raise JobNotFound(job_id)
            job = head.seq
            if head.status not in _ACTIVE:
                return self._counts(conn, job)
            after = _scalar(conn, q["last_outcome"])
            lost: list[int] = []
            stored_total = done = 0
            for report in reports:
                lease = report.lease
                key = {"job": job, "batch_no": lease.batch_no}
                batch = self._one(conn, "batch_lease", key, BatchLease._make)
                if batch is None or batch.token != lease.token or batch.state != "leased":
                    # Lost, released, or done (which is also what a report repeated after a
                    # commit we did not hear about meets: its outcomes and counts are in).
                    lost.append(lease.batch_no)
                    continue
                stored = 0
                if report.outcomes:
                    stored = conn.executemany(
                        q["insert_outcomes"], ((job, *row) for row in report.outcomes)
                    ).rowcount
                    conn.execute(q["count_recorded"], {**key, "stored": stored})
                if report.done:
                    if batch.recorded + stored < batch.size:
                        raise StoreError(
                            f"batch {lease.batch_no} of job {job_id!r} was reported done with "
                            f"{batch.size - batch.recorded - stored} items lacking an outcome; "
                            "this is a scheduler bug"
                        )
                    conn.execute(q["finish_batch"], key)
                    done += 1
                stored_total += stored
            failed = 0
            if stored_total:
                failed = _scalar(conn, q["failed_since"], {"after": after})
            if failed:
                room = MAX_ERRORS - _scalar(conn, q["kept_errors"], {"job": job})
                if room > 0:
                    conn.execute(q["errors_from_outcomes"], {"after": after, "room": room})
            row = conn.execute(
                q["count_outcomes"],
                {
                    "job": job,
                    "succeeded": stored_total - failed,
                    "failed": failed,
                    "done": done,
                    "now": time.time(),
                },
            ).fetchone()
        return progress_of(Counts._make(row), tuple(lost))

    def _renew(
        self, conn: Conn, retry: bool, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        lost: list[Lease] = []
        ended: set[str] = set()
        with self._transaction(conn):
            expires_at = time.time() + lease_seconds
            jobs = self._job_keys(conn, leases)
            for lease in leases:
                job = jobs.get(lease.job_id)
                if job is None or job.status not in _ACTIVE:
                    ended.add(lease.job_id)
                    lost.append(lease)
                    continue
                renewed = conn.execute(
                    self._q["renew_lease"],
                    {
                        "job": job.seq,
                        "batch_no": lease.batch_no,
                        "token": lease.token,
                        "expires_at": expires_at,
                    },
                ).rowcount
                if not renewed:
                    lost.append(lease)
        return RenewResult(lost=tuple(lost), ended_jobs=frozenset(ended))

    def _job_keys(self, conn: Conn, leases: Sequence[Lease]) -> dict[str, JobKey]:
        found: dict[str, JobKey] = {}
        for job_id in {lease.job_id for lease in leases}:
            key = self._one(conn, "job_status", {"id": job_id}, JobKey._make)
            if key is not None:
                found[job_id] = key
        return found

    def _release(self, conn: Conn, retry: bool, leases: Sequence[Lease]) -> None:
        with self._transaction(conn):
            jobs = self._job_keys(conn, leases)
            for lease in leases:
                job = jobs.get(lease.job_id)
                if job is not None:
                    conn.execute(
                        self._q["release_lease"],
                        {"job": job.seq, "batch_no": lease.batch_no, "token": lease.token},
                    )

    def _finish_job(self, conn: Conn, retry: bool, end: FinishRequest) -> tuple[Job, bool]:
        status, error = end.status, end.error
        with self._transaction(conn):
            job = self._job_state(conn, end.job_id).seq
            now = self._counts(conn, job)
            changed = 0
            if may_finish(now, status):
                changed = conn.execute(
                    self._q["finish_job"],
                    {
                        "job": job,
                        "status": status.value,
                        "now": time.time(),
                        "errors": 1 if error is not None else 0,
                    },
                ).rowcount
            if changed and error is not None:
                self._keep_errors(conn, job, [error])
            return self._snapshot(conn, end.job_id), bool(changed)

    # -- reading ----------------------------------------------------------------------------

    def _errors(self, conn: Conn, job: int) -> list[ProcessingError]:
        return [
            ProcessingError(
                item_id=item_id,
                error=error,
                error_type=error_type,
                timestamp=datetime.fromtimestamp(timestamp, UTC),
                retry_count=retry_count,
            )
            for item_id, error, error_type, timestamp, retry_count in conn.execute(
                self._q["job_errors"], {"job": job, "limit": MAX_ERRORS}
            )
        ]

    def _snapshot(self, conn: Conn, job_id: str) -> Job:
        row = self._one(conn, "job_row", {"id": job_id}, JobRow._make)
        if row is None:
            raise JobNotFound(job_id)
        return self._job(row, self._errors(conn, row.seq))

    def _get_job(self, conn: Conn, retry: bool, job_id: str) -> Job:
        with self._transaction(conn, write=False):
            return self._snapshot(conn, job_id)

    def _list_jobs(self, conn: Conn, retry: bool, where: dict[str, Any]) -> list[Job]:
        with self._transaction(conn, write=False):
            rows = [JobRow._make(row) for row in conn.execute(self._q["list_jobs"], where)]
            return [self._job(row, self._errors(conn, row.seq)) for row in rows]

    def _outcome_page(
        self, conn: Conn, retry: bool, want: OutcomePageRequest
    ) -> tuple[list[OutcomeRecord], bool]:
        """A page of outcome rows and whether more follow. With a budget, the sizes are
        stepped through first (one row at a time, no result loaded) to find where the page
        ends, and only the rows up to there are read."""
        failed, after, limit, max_bytes = want.failed, want.after, want.limit, want.max_bytes
        name = {None: "outcomes_all", True: "outcomes_failed", False: "outcomes_succeeded"}[failed]
        with self._transaction(conn, write=False):
            job = self._job_state(conn, want.job_id).seq
            if max_bytes is not None and limit > 0:
                through: int | None = None
                ok = None if failed is None else int(not failed)
                sizes = conn.execute(
                    self._q["outcome_sizes"],
                    {"job": job, "after": after, "ok": ok, "limit": limit + 1},
                )
                budget, taken, more = max_bytes, 0, False
                for seq, size in sizes:
                    if taken == limit or (taken and size > budget):
                        more = True
                        break
                    through, taken, budget = seq, taken + 1, budget - size
                sizes.close()
                if through is None:
                    return [], False
                query = {"job": job, "after": after, "through": through, "limit": limit}
                return self._outcomes(conn, name, query), more
            unbounded = {"job": job, "after": after, "through": None, "limit": limit + 1}
            rows = self._outcomes(conn, name, unbounded)
            return rows[:limit], len(rows) > limit

    def _outcomes(self, conn: Conn, name: str, params: dict[str, Any]) -> list[OutcomeRecord]:
        return list(map(OutcomeRecord._make, conn.execute(self._q[name], params)))

    def _failed_items(
        self, conn: Conn, retry: bool, job_id: str, after: int, limit: int
    ) -> list[FailedItem]:
        with self._transaction(conn, write=False):
            job = self._job_state(conn, job_id).seq
            rows = conn.execute(
                self._q["failed_items"], {"job": job, "after": after, "limit": limit}
            )
            return list(map(FailedItem._make, rows))
