"""Helpers for ``benchmarks/stores.py``: the raw driver ceilings, PostgreSQL scratch tables,
worker processes and file sizes (the reporting is in ``_report.py``).

The ceilings write rows shaped like bulkpipe's outcome rows (``OutcomeRow``: item id, ok,
result JSON, error, error type, attempts, started and finished epoch seconds) as fast as the
driver can: ``sqlite3`` ``executemany`` in one transaction, and psycopg ``COPY``. They are what
a store could reach if writing the outcomes were all it did. Each comes in two shapes:
``plain`` (a table of just those columns, no key or index: the driver's own ceiling) and
``keyed`` (the store's outcomes table with its job column, keys and indexes).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

OUTCOME_COLUMNS = (
    "item_id",
    "ok",
    "result",
    "error",
    "error_type",
    "attempts",
    "started_at",
    "finished_at",
)
# Column types as the stores declare them (sql/sqlite/schema.sql, sql/postgres/schema.sql).
# "plain": the outcome columns only, no key or index: what the driver itself can write.
# "keyed": the store's outcomes table, with its job column, keys and indexes.
SQLITE_CEILING_DDL = {
    "plain": (
        """CREATE TABLE ceiling_outcomes (
            item_id TEXT NOT NULL, ok INTEGER NOT NULL, result TEXT, error TEXT,
            error_type TEXT, attempts INTEGER NOT NULL, started_at REAL NOT NULL,
            finished_at REAL NOT NULL
        )""",
    ),
    "keyed": (
        """CREATE TABLE ceiling_outcomes (
            seq INTEGER PRIMARY KEY, job INTEGER NOT NULL, item_id TEXT NOT NULL,
            ok INTEGER NOT NULL, result TEXT, error TEXT, error_type TEXT,
            attempts INTEGER NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL,
            UNIQUE (job, item_id)
        )""",
        "CREATE INDEX ceiling_outcomes_job ON ceiling_outcomes (job)",
        "CREATE INDEX ceiling_outcomes_failed ON ceiling_outcomes (job) WHERE ok = 0",
    ),
}
POSTGRES_CEILING_DDL = {
    "plain": """CREATE TABLE {table} (
        item_id text COLLATE "C" NOT NULL, ok boolean NOT NULL, result text, error text,
        error_type text, attempts integer NOT NULL, started_at double precision NOT NULL,
        finished_at double precision NOT NULL
    )""",
    "keyed": """CREATE TABLE {table} (
        id bigint NOT NULL, job bigint NOT NULL, item_id text COLLATE "C" NOT NULL,
        ok boolean NOT NULL, result text, error text, error_type text,
        attempts integer NOT NULL, started_at double precision NOT NULL,
        finished_at double precision NOT NULL,
        PRIMARY KEY (job, id), UNIQUE (job, item_id)
    )""",
}

WORKER_SCRIPT = Path(__file__).resolve().parent / "_worker.py"

Shape = Literal["plain", "keyed"]
Row = tuple[object, ...]


def outcome_rows(n: int) -> Iterator[Row]:
    """``n`` rows as the scheduler records a no-op item: ok, result ``null``, one attempt."""
    now = time.time()
    for i in range(n):
        yield (str(i), True, "null", None, None, 1, now, now)


def remove_database(path: Path) -> None:
    """Delete a SQLite file with its ``-wal`` and ``-shm`` files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def directory_bytes(directory: Path) -> int:
    """The total size of the files in ``directory``."""
    return sum(f.stat().st_size for f in directory.iterdir())


# -- ceilings ---------------------------------------------------------------------------------


def sqlite_ceiling(directory: Path, shape: Shape, n: int) -> float:
    """Seconds to write ``n`` outcome-shaped rows to a fresh WAL-mode file with one
    ``executemany`` in one transaction (the file's pragmas as ``SQLiteStore`` sets them)."""
    path = directory / f"ceiling-{uuid.uuid4().hex[:8]}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        for statement in SQLITE_CEILING_DDL[shape]:
            conn.execute(statement)
        columns = OUTCOME_COLUMNS if shape == "plain" else ("job", *OUTCOME_COLUMNS)
        insert = (
            f"INSERT INTO ceiling_outcomes ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        rows: Iterator[Row] = outcome_rows(n)
        if shape == "keyed":
            rows = ((1, *row) for row in rows)
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        written = conn.execute("SELECT count(*) FROM ceiling_outcomes").fetchone()[0]
    finally:
        conn.close()
        remove_database(path)
    if written != n:  # a bug in the benchmark itself
        raise RuntimeError(f"the SQLite ceiling wrote {written} of {n} rows")
    return elapsed


def postgres_ceiling(url: str, prefix: str, shape: Shape, n: int) -> float:
    """Seconds to ``COPY`` ``n`` outcome-shaped rows into a fresh table and commit.

    The connection commits as the store's pool connections do (``synchronous_commit = off``);
    with one commit per run that makes little difference.
    """
    import psycopg

    table = f"{prefix}ceiling_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(POSTGRES_CEILING_DDL[shape].format(table=table).encode())
        try:
            columns = OUTCOME_COLUMNS if shape == "plain" else ("id", "job", *OUTCOME_COLUMNS)
            copy_sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN".encode()
            rows: Iterator[Row] = outcome_rows(n)
            if shape == "keyed":
                rows = ((i, 1, *row) for i, row in enumerate(rows, 1))
            start = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row(row)
            elapsed = time.perf_counter() - start
            written = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}".encode())
    if written is None or written[0] != n:
        raise RuntimeError(f"the PostgreSQL ceiling wrote {written} of {n} rows")
    return elapsed


# -- PostgreSQL scratch space -----------------------------------------------------------------


def new_prefix() -> str:
    """A unique table prefix for one run (a valid bulkpipe prefix)."""
    return f"bench{uuid.uuid4().hex[:10]}_"


def with_prefix(url: str, prefix: str) -> str:
    """``url`` with ``?prefix=...`` added, as ``open_store`` reads it."""
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


def postgres_problem(url: str) -> str | None:
    """Why PostgreSQL at ``url`` cannot be used, or None if it answers."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install 'bulkpipe[postgres]'"
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"cannot connect to {url}: {str(exc).strip()}"
    return None


def drop_prefixed(url: str, prefix: str) -> int:
    """Drop every table and sequence whose name starts with ``prefix``; return how many."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'S') "
            "AND c.relname LIKE %s",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
        for name, kind in rows:
            what = "TABLE" if kind == "r" else "SEQUENCE"
            conn.execute(f'DROP {what} IF EXISTS "{name}" CASCADE'.encode())
    return len(rows)


# -- worker processes -------------------------------------------------------------------------


class WorkerProcess:
    """One ``_worker.py`` process serving a store URL; :meth:`ready` waits until it serves."""

    def __init__(self, url: str, *, poll_interval: float, backend: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(WORKER_SCRIPT),
                url,
                "--poll-interval",
                str(poll_interval),
                "--backend",
                backend,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stderr = ""

    def ready(self) -> None:
        """Block until the worker prints ``ready``; raise if it exits first."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop(timeout=5)
            raise RuntimeError(f"worker process did not start: {line!r} {self.stderr}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop), wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate(timeout=10)
        return self.proc.returncode
