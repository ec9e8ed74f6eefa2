"""A durable job store in one SQLite file: :class:`SQLiteStore`."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from .._snapshot import MAX_ERRORS, job_from_row, job_spec, outcome_from_row
from ..errors import InvalidArgument, JobNotFound, StoreError
from ..items import encode_json
from ..models import ItemOutcome, Job, JobStatus, ProcessingError
from ..store import (
    BatchReport,
    ClaimedBatch,
    EncodedItem,
    JobSpec,
    Lease,
    Page,
    Progress,
    RenewResult,
)
from ._sql import check_prefix, load_migrations, load_queries, schema_script

P = ParamSpec("P")
R = TypeVar("R")

_DIALECT = "sqlite"
_MIN_VERSION = (3, 35, 0)  # RETURNING and ON CONFLICT DO NOTHING
_ACTIVE = frozenset({JobStatus.PENDING.value, JobStatus.PROCESSING.value})
_TABLES = ("meta", "jobs", "batches", "items", "outcomes", "errors")

_HINTS = {
    sqlite3.SQLITE_BUSY: "another connection held the database locked for longer than "
    "busy_timeout; is a long transaction running elsewhere? (or raise busy_timeout)",
    sqlite3.SQLITE_LOCKED: "the database is locked by another connection of this process",
    sqlite3.SQLITE_READONLY: "the file, or its directory (SQLite writes -wal and -shm files "
    "beside it), is read-only; check the permissions",
    sqlite3.SQLITE_PERM: "access to the file was denied; check the permissions",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened; check that the path and its directory "
    "exist and are writable",
    sqlite3.SQLITE_FULL: "the disk (or the database's size limit) is full; free some space",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error; check the disk and the file system",
    sqlite3.SQLITE_CORRUPT: "the database file is corrupt; restore it from a backup",
    sqlite3.SQLITE_NOTADB: "the file is not a SQLite database (or it is encrypted); check the path",
}


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script, one at a time (``executescript`` would commit)."""
    chunk = ""
    for line in script.splitlines(keepends=True):
        chunk += line
        if sqlite3.complete_statement(chunk):
            yield chunk.strip()
            chunk = ""
    if any(line.strip() and not line.lstrip().startswith("--") for line in chunk.splitlines()):
        raise RuntimeError(f"incomplete SQL statement at the end of a migration: {chunk!r}")


@lru_cache(maxsize=16)
def _expected_schema(prefix: str) -> tuple[tuple[str, str, str, str | None], ...]:
    """``sqlite_master`` rows of this prefix's tables as ``schema.sql`` creates them."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for statement in _statements(schema_script(_DIALECT, prefix)):
            conn.execute(statement)
        return _schema_objects(conn, prefix)
    finally:
        conn.close()


def _schema_objects(
    conn: sqlite3.Connection, prefix: str
) -> tuple[tuple[str, str, str, str | None], ...]:
    tables = json.dumps([prefix + name for name in _TABLES])
    query = load_queries(_DIALECT, prefix)["schema_objects"]
    return tuple(tuple(row) for row in conn.execute(query, {"tables": tables}))


def _progress(row: Sequence[Any], lost: tuple[int, ...] = ()) -> Progress:
    status, sealed, total, succeeded, failed, open_batches = row
    return Progress(
        status=JobStatus(status),
        sealed=bool(sealed),
        total=total,
        succeeded=succeeded,
        failed=failed,
        open_batches=open_batches,
        lost=lost,
    )


def _spec(row: Sequence[Any]) -> JobSpec:
    _, job_id, type_, _, options, priority = row
    return job_spec(id=job_id, type=type_, options=options, priority=priority)


def _outcome(row: Sequence[Any]) -> ItemOutcome:
    return outcome_from_row(*row[1:])


def _next(rows: Sequence[Any], limit: int, cursor: int | None) -> int | None:
    """The cursor after a page read with one row more than ``limit``; None on the last page."""
    if len(rows) <= limit:
        return None
    return int(rows[limit - 1][0]) if limit > 0 else (cursor or 0)


class SQLiteStore:
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
        self.prefix = check_prefix(prefix)
        self.busy_timeout = busy_timeout
        self._q = load_queries(_DIALECT, prefix)
        self._conn: sqlite3.Connection | None = None
        #: The schema version of the open database (None until :meth:`open`).
        self.schema_version: int | None = None
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, prefix={self.prefix!r})"

    def heartbeat_store(self) -> SQLiteStore | None:
        """A new, unopened store on the same file, for a worker's heartbeat thread
        (:class:`bulkpipe.store.SupportsHeartbeatStore`); None for an in-memory database,
        which a second connection would not share."""
        if self.path in ("", ":memory:") or "mode=memory" in self.path:
            return None
        return SQLiteStore(self.path, prefix=self.prefix, busy_timeout=self.busy_timeout)

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        if code is not None:
            hint = _HINTS.get(code & 0xFF, "check the database file")
        else:  # misuse of the driver, not a problem with the file
            hint = "this is a bulkpipe bug; please report it"
        return StoreError(f"SQLite store {self.path!r}: {what} failed ({name}: {exc}); {hint}")

    async def _call(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``fn(connection, ...)`` in a worker thread, one call at a time."""
        if self._lock is None:
            raise StoreError(f"{self!r} is not open; call open() first (Pipeline and Worker do)")
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"{self!r} is closed; open it again to use it")
            try:
                return await anyio.to_thread.run_sync(partial(fn, conn, *args, **kwargs))
            except sqlite3.Error as exc:
                raise self._error(what, exc) from exc

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, *, write: bool = True) -> Iterator[None]:
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

    async def open(self) -> None:
        """Open the file (creating it and its tables if needed) and check its schema."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._conn is not None:
                return
            try:
                self._conn = await anyio.to_thread.run_sync(self._connect)
            except sqlite3.Error as exc:
                raise self._error("opening the database", exc) from exc

    async def close(self) -> None:
        """Close the connection; committed data stays in the file."""
        if self._lock is None:
            return
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)
        self._lock = None

    def _connect(self) -> sqlite3.Connection:
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

    def _migrate(self, conn: sqlite3.Connection) -> None:
        q = self._q
        migrations = load_migrations(_DIALECT, self.prefix)
        latest = migrations[-1][0]
        with self._transaction(conn):
            try:
                version = 0
                if conn.execute(q["meta_exists"]).fetchone()[0]:
                    row = conn.execute(q["schema_version"]).fetchone()
                    version = row[0] if row is not None else 0
                if version > latest:
                    raise StoreError(
                        f"SQLite store {self.path!r}: the database was created by a newer "
                        f"bulkpipe (schema version {version}; this one knows up to {latest}); "
                        "upgrade bulkpipe"
                    )
                for number, script in migrations:
                    if number > version:
                        for statement in _statements(script):
                            conn.execute(statement)
                        conn.execute(q["set_schema_version"], {"version": number})
                conn.execute(q["check_writable"])
                self.schema_version = latest
            except sqlite3.OperationalError as exc:
                if "already exists" in str(exc) or "no such" in str(exc):
                    raise self._foreign(exc) from exc
                raise

    def _foreign(self, detail: object) -> StoreError:
        return StoreError(
            f"SQLite store {self.path!r}: the database has tables named {self.prefix}* that "
            f"bulkpipe did not create, or that were changed ({detail}); use another file or "
            "another prefix"
        )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        actual = _schema_objects(conn, self.prefix)
        expected = _expected_schema(self.prefix)
        if actual != expected:
            differ = sorted({row[1] for row in set(actual) ^ set(expected)})
            raise self._foreign(f"unexpected: {', '.join(differ)}")

    # -- submission -------------------------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        """Persist a new job (pending, unsealed, no items)."""
        try:
            params = encode_json(job.params) if job.params is not None else None
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"job params must be JSON-serialisable: {exc}") from exc
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
        }
        await self._call("creating a job", self._create_job, row)

    def _create_job(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        with self._transaction(conn):
            if conn.execute(self._q["job_state"], {"id": row["id"]}).fetchone() is not None:
                raise StoreError(f"a job with id {row['id']!r} already exists in this store")
            conn.execute(self._q["insert_job"], row)

    def _job_state(self, conn: sqlite3.Connection, job_id: str) -> tuple[int, str, int, int]:
        row = conn.execute(self._q["job_state"], {"id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return row  # type: ignore[no-any-return]

    async def add_batch(self, job_id: str, items: Sequence[EncodedItem]) -> list[str]:
        """Append one batch; return the ids refused because the job already has them."""
        return await self.add_batches(job_id, (items,))

    async def add_batches(self, job_id: str, batches: Sequence[Sequence[EncodedItem]]) -> list[str]:
        """Append batches in order, in one transaction; return every refused id, in order."""
        return await self._call("adding items", self._add_batches, job_id, batches)

    def _add_batches(
        self, conn: sqlite3.Connection, job_id: str, batches: Sequence[Sequence[EncodedItem]]
    ) -> list[str]:
        q = self._q
        duplicates: list[str] = []
        with self._transaction(conn):
            job, status, sealed, next_batch = self._job_state(conn, job_id)
            if sealed:
                raise StoreError(f"job {job_id!r} is sealed; no more items can be added")
            if status not in _ACTIVE or not any(batches):
                return []  # nothing is written for a terminal job
            batch_no, total = next_batch, 0
            last = conn.execute(q["last_item"]).fetchone()[0]
            for items in batches:
                before = last
                stored = conn.executemany(
                    q["insert_items"],
                    ((job, item_id, batch_no, payload) for item_id, payload in items),
                ).rowcount
                if stored < len(items):
                    kept = {row[0] for row in conn.execute(q["item_ids_after"], {"after": before})}
                    for item_id, _ in items:
                        if item_id in kept:
                            kept.discard(item_id)  # a second one in this call is a duplicate
                        else:
                            duplicates.append(item_id)
                if not stored:
                    continue  # only repeats: no batch, and the next one takes this number
                last = conn.execute(q["last_item"]).fetchone()[0]
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
                    {"job": job, "size": total, "batches": batch_no - next_batch},
                )
        return duplicates

    async def add_errors(
        self, job_id: str, errors: Sequence[ProcessingError], rejected: int
    ) -> None:
        """Record job-level errors (the first MAX_ERRORS are kept) and rejected items."""
        await self._call("recording errors", self._add_errors, job_id, errors, rejected)

    def _add_errors(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        errors: Sequence[ProcessingError],
        rejected: int,
    ) -> None:
        q = self._q
        with self._transaction(conn):
            job = self._job_state(conn, job_id)[0]
            self._keep_errors(conn, job, errors)
            conn.execute(
                q["count_errors"], {"job": job, "errors": len(errors), "rejected": rejected}
            )

    def _keep_errors(
        self, conn: sqlite3.Connection, job: int, errors: Sequence[ProcessingError]
    ) -> None:
        if not errors:
            return
        room = MAX_ERRORS - conn.execute(self._q["kept_errors"], {"job": job}).fetchone()[0]
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

    def _seal_job(self, conn: sqlite3.Connection, job_id: str) -> Progress:
        with self._transaction(conn):
            job = self._job_state(conn, job_id)[0]
            conn.execute(self._q["seal_job"], {"job": job})
            return _progress(conn.execute(self._q["progress"], {"job": job}).fetchone())

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
        if job_id is not None:
            where: dict[str, Any] = {"id": job_id}
        else:
            where = {
                "types": json.dumps(list(types)) if types is not None else None,
                "exclude": json.dumps(list(exclude)),
            }
        return await self._call("claiming a batch", self._claim, worker_id, lease_seconds, where)

    def _claim(
        self,
        conn: sqlite3.Connection,
        worker_id: str,
        lease_seconds: float,
        where: dict[str, Any],
    ) -> ClaimedBatch | None:
        q = self._q
        if "id" not in where:
            # Idle workers poll like this: look first without taking the write lock.
            probe = conn.execute(q["next_job"], {**where, "now": time.time()}).fetchone()
            if probe is None:
                return None
        with self._transaction(conn):
            now = time.time()  # read under the write lock, so claims see time move forward
            if "id" in where:
                spec = conn.execute(q["job_spec_by_id"], where).fetchone()
                if spec is None or spec[3] not in _ACTIVE:
                    return None
            else:
                found = conn.execute(q["next_job"], {**where, "now": now}).fetchone()
                if found is None:
                    return None
                spec = conn.execute(q["job_spec"], {"job": found[0]}).fetchone()
            job = spec[0]
            row = conn.execute(q["pending_batch"], {"job": job}).fetchone()
            if row is None:
                row = conn.execute(q["expired_batch"], {"job": job, "now": now}).fetchone()
                if row is None:
                    return None
            batch_no = row[0]
            token = conn.execute(q["next_token"]).fetchone()[0]
            claims, recorded, first_item, last_item = conn.execute(
                q["lease_batch"],
                {
                    "job": job,
                    "batch_no": batch_no,
                    "token": token,
                    "owner": worker_id,
                    "expires_at": now + lease_seconds,
                },
            ).fetchone()
            if spec[3] == JobStatus.PENDING.value:
                conn.execute(q["start_job"], {"job": job, "now": now})
            items = conn.execute(
                q["batch_items_unfinished" if recorded else "batch_items"],
                {"first_item": first_item, "last_item": last_item},
            ).fetchall()
        return ClaimedBatch(
            job=_spec(spec),
            lease=Lease(job_id=spec[1], batch_no=batch_no, token=token),
            items=items,
            claims=claims,
        )

    async def record(self, job_id: str, reports: Sequence[BatchReport]) -> Progress:
        """Store outcomes, fenced by each report's lease token, and update the counts in the
        same transaction. Safe to repeat after an unknown commit result: stored outcomes are
        not stored or counted twice (a repeated done report comes back as lost)."""
        return await self._call("recording outcomes", self._record, job_id, reports)

    def _record(
        self, conn: sqlite3.Connection, job_id: str, reports: Sequence[BatchReport]
    ) -> Progress:
        q = self._q
        if not reports:
            row = conn.execute(q["progress_by_id"], {"id": job_id}).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            return _progress(row)
        with self._transaction(conn):
            head = conn.execute(q["job_status"], {"id": job_id}).fetchone()
            if head is None:
                raise JobNotFound(job_id)
            job, status = head
            if status not in _ACTIVE:
                return _progress(conn.execute(q["progress"], {"job": job}).fetchone())
            after = conn.execute(q["last_outcome"]).fetchone()[0]
            lost: list[int] = []
            stored_total = done = 0
            for report in reports:
                lease = report.lease
                key = {"job": job, "batch_no": lease.batch_no}
                batch = conn.execute(q["batch_lease"], key).fetchone()
                if batch is None or batch[1] != lease.token:
                    lost.append(lease.batch_no)
                    continue
                state, _, size, recorded = batch
                if state != "leased":
                    # Released, or done (which is also what a report repeated after a commit
                    # we did not hear about meets: its outcomes and counts are already in).
                    lost.append(lease.batch_no)
                    continue
                stored = 0
                if report.outcomes:
                    stored = conn.executemany(
                        q["insert_outcomes"], ((job, *row) for row in report.outcomes)
                    ).rowcount
                    conn.execute(q["count_recorded"], {**key, "stored": stored})
                if report.done:
                    if recorded + stored < size:
                        raise StoreError(
                            f"batch {lease.batch_no} of job {job_id!r} was reported done with "
                            f"{size - recorded - stored} items lacking an outcome; this is a "
                            "scheduler bug"
                        )
                    conn.execute(q["finish_batch"], key)
                    done += 1
                stored_total += stored
            failed = 0
            if stored_total:
                failed = conn.execute(q["failed_since"], {"after": after}).fetchone()[0]
            if failed:
                room = MAX_ERRORS - conn.execute(q["kept_errors"], {"job": job}).fetchone()[0]
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
        return _progress(row, tuple(lost))

    async def renew_leases(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        """Extend the leases still held; report lost leases and ended (or missing) jobs."""
        if not leases:
            return RenewResult(lost=(), ended_jobs=frozenset())
        return await self._call("renewing leases", self._renew, leases, lease_seconds)

    def _renew(
        self, conn: sqlite3.Connection, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewResult:
        q = self._q
        lost: list[Lease] = []
        ended: set[str] = set()
        with self._transaction(conn):
            expires_at = time.time() + lease_seconds
            jobs = self._job_statuses(conn, leases)
            for lease in leases:
                job = jobs.get(lease.job_id)
                if job is None or job[1] not in _ACTIVE:
                    ended.add(lease.job_id)
                    lost.append(lease)
                    continue
                renewed = conn.execute(
                    q["renew_lease"],
                    {
                        "job": job[0],
                        "batch_no": lease.batch_no,
                        "token": lease.token,
                        "expires_at": expires_at,
                    },
                ).rowcount
                if not renewed:
                    lost.append(lease)
        return RenewResult(lost=tuple(lost), ended_jobs=frozenset(ended))

    def _job_statuses(
        self, conn: sqlite3.Connection, leases: Sequence[Lease]
    ) -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        for job_id in {lease.job_id for lease in leases}:
            row = conn.execute(self._q["job_status"], {"id": job_id}).fetchone()
            if row is not None:
                found[job_id] = row
        return found

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give batches back (pending again, first in line) without finishing them."""
        if leases:
            await self._call("releasing batches", self._release, leases)

    def _release(self, conn: sqlite3.Connection, leases: Sequence[Lease]) -> None:
        with self._transaction(conn):
            jobs = self._job_statuses(conn, leases)
            for lease in leases:
                job = jobs.get(lease.job_id)
                if job is not None:
                    conn.execute(
                        self._q["release_lease"],
                        {"job": job[0], "batch_no": lease.batch_no, "token": lease.token},
                    )

    async def finish_job(
        self, job_id: str, status: JobStatus, error: ProcessingError | None = None
    ) -> tuple[Job, bool]:
        """Move the job to a terminal status unless it has one; return it and whether this
        call changed it. ``COMPLETED`` is refused (unchanged, False) unless the job is sealed,
        has no open batch and every item has an outcome."""
        if not status.is_terminal:
            raise ValueError(f"finish_job needs a terminal status, not {status}")
        return await self._call("finishing a job", self._finish_job, job_id, status, error)

    def _finish_job(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        status: JobStatus,
        error: ProcessingError | None,
    ) -> tuple[Job, bool]:
        with self._transaction(conn):
            job = self._job_state(conn, job_id)[0]
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
            return self._snapshot(conn, job_id), bool(changed)

    # -- reading ----------------------------------------------------------------------------

    def _job(self, conn: sqlite3.Connection, row: Sequence[Any]) -> Job:
        errors = [
            ProcessingError(
                item_id=item_id,
                error=error,
                error_type=error_type,
                timestamp=datetime.fromtimestamp(timestamp, UTC),
                retry_count=retry_count,
            )
            for item_id, error, error_type, timestamp, retry_count in conn.execute(
                self._q["job_errors"], {"job": row[0], "limit": MAX_ERRORS}
            )
        ]
        return job_from_row(row[1:], errors)

    def _snapshot(self, conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute(self._q["job_row"], {"id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return self._job(conn, row)

    async def get_job(self, job_id: str) -> Job:
        """A snapshot of the job; :class:`JobNotFound` for an unknown id."""
        return await self._call("reading a job", self._get_job, job_id)

    def _get_job(self, conn: sqlite3.Connection, job_id: str) -> Job:
        with self._transaction(conn, write=False):
            return self._snapshot(conn, job_id)

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

    def _list_jobs(self, conn: sqlite3.Connection, where: dict[str, Any]) -> list[Job]:
        with self._transaction(conn, write=False):
            rows = conn.execute(self._q["list_jobs"], where).fetchall()
            return [self._job(conn, row) for row in rows]

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
        rows, more = await self._call(
            "reading outcomes", self._outcome_page, job_id, failed, cursor, limit, max_bytes
        )
        page = [_outcome(row) for row in rows]
        if not more:
            return Page(rows=page, cursor=None)
        return Page(rows=page, cursor=int(rows[-1][0]) if rows else (cursor or 0))

    def _outcome_page(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        failed: bool | None,
        cursor: int | None,
        limit: int,
        max_bytes: int | None,
    ) -> tuple[list[Any], bool]:
        """A page of outcome rows and whether more follow. With a budget, the sizes are
        stepped through first (one row at a time, no result loaded) to find where the page
        ends, and only the rows up to there are read."""
        name = {None: "outcomes_all", True: "outcomes_failed", False: "outcomes_succeeded"}[failed]
        after = cursor if cursor is not None else 0
        with self._transaction(conn, write=False):
            job = self._job_state(conn, job_id)[0]
            through: int | None = None
            if max_bytes is not None and limit > 0:
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
                return conn.execute(self._q[name], query).fetchall(), more
            unbounded: dict[str, Any] = {"job": job, "after": after, "through": None}
            rows = conn.execute(self._q[name], {**unbounded, "limit": limit + 1}).fetchall()
            return rows[:limit], len(rows) > limit

    async def read_failed_items(
        self, job_id: str, *, cursor: int | None = None, limit: int = 1000
    ) -> Page[EncodedItem]:
        """The stored items whose final outcome is failed, from ``cursor`` on."""
        rows = await self._call(
            "reading failed items", self._page, job_id, "failed_items", cursor, limit
        )
        return Page(
            rows=[(item_id, payload) for _, item_id, payload in rows[:limit]],
            cursor=_next(rows, limit, cursor),
        )

    def _page(
        self, conn: sqlite3.Connection, job_id: str, query: str, cursor: int | None, limit: int
    ) -> list[Any]:
        """Up to ``limit + 1`` rows after ``cursor`` (one more, to know whether more follow)."""
        with self._transaction(conn, write=False):
            job = self._job_state(conn, job_id)[0]
            return conn.execute(
                self._q[query],
                {"job": job, "after": cursor if cursor is not None else 0, "limit": limit + 1},
            ).fetchall()
