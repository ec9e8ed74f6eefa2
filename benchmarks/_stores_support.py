"""Helpers for ``benchmarks/stores.py``: the raw driver ceilings, PostgreSQL scratch tables,
worker processes, memory readings and the report of targets.

The ceilings write rows shaped like bulkpipe's outcome rows (``OutcomeRow``: item id, ok,
result JSON, error, error type, attempts, started and finished epoch seconds) as fast as the
driver can: ``sqlite3`` ``executemany`` in one transaction, and psycopg ``COPY``. They are what
a store could reach if writing the outcomes were all it did. Each comes in two shapes:
``plain`` (a table of just those columns, no key or index: the driver's own ceiling) and
``keyed`` (the store's outcomes table with its job column, keys and indexes).
"""

from __future__ import annotations

import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bulkpipe import Job

MB = 1_000_000  # figures in MB are decimal megabytes

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


# -- memory -----------------------------------------------------------------------------------


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak so far is the best we have
        return maxrss()


def maxrss() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (KiB on Linux, bytes on macOS).

    On Linux this is not only this program's peak: exec() carries the high-water mark of the
    process image it replaces over, so a child started by a larger parent reports at least
    the parent's peak RSS at the time it was started. See :func:`own_peak_rss`.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def own_peak_rss() -> int | None:
    """The peak RSS of this program since it was exec'd (``VmHWM``), in bytes; None where
    ``/proc`` is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- figures and targets ----------------------------------------------------------------------


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def best(values: list[float]) -> float:
    return max(values)


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Report:
    """What the run found: the target lines, notes, and any job with a wrong result."""

    targets: list[tuple[str, str]] = field(default_factory=list)  # (verdict, text)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def target(
        self,
        text: str,
        value: float | None,
        op: Literal[">=", "<="],
        threshold: float,
        skip_reason: str | None = None,
        unit: str = "",
    ) -> None:
        """Add a PASS/FAIL line for ``value op threshold``, or SKIP with the reason."""
        if value is None or skip_reason is not None:
            self.targets.append(
                ("SKIP", f"{text} (target {op} {threshold:g}{unit}): {skip_reason}")
            )
            return
        ok = value >= threshold if op == ">=" else value <= threshold
        self.targets.append(
            (
                "PASS" if ok else "FAIL",
                f"{text} = {value:.3f}{unit} (target {op} {threshold:g}{unit})",
            )
        )

    def problem(self, text: str) -> None:
        """A job did not complete with every item succeeded: the run exits non-zero."""
        self.problems.append(text)
        print(f"  WRONG RESULT: {text}", flush=True)


def check_job(report: Report, job: Job, n: int, what: str) -> bool:
    """Record a problem unless ``job`` completed with all of its ``n`` items succeeded."""
    if job.status == "completed" and job.succeeded_items == n and job.total_items == n:
        return True
    report.problem(
        f"{what}: status={job.status!s} succeeded={job.succeeded_items} "
        f"failed={job.failed_items} total={job.total_items}; expected completed with {n} "
        "succeeded"
    )
    return False
