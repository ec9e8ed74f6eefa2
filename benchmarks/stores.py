"""Measure bulkpipe's durable stores against the raw drivers, all in one process run.

Usage::

    .venv/bin/python benchmarks/stores.py [--quick] [--backend asyncio|trio]
                                          [--only e2e,ceiling,scaling,memory] [--rounds N]
                                          [--postgres-url URL]

Sections (see benchmarks/README.md, "stores.py", for what each one measures and why):

1. ``e2e``: 100,000 no-op items end to end (submit included, one in-process worker) through
   MemoryStore, SQLiteStore (a fresh file) and PostgresStore (fresh tables); items/s.
2. ``ceiling``: the raw driver ceiling for writing 100,000 outcome-shaped rows: ``sqlite3``
   ``executemany`` in one transaction and psycopg ``COPY``; rows/s, and (with ``e2e``) the
   ratio store / ceiling. ``e2e`` and ``ceiling`` run interleaved, round by round.
3. ``scaling``: one PostgreSQL job whose items sleep 10 ms, 10 in flight per worker, served by
   1, 2 and 4 worker processes; items/s and the speed-up over one worker.
4. ``memory``: peak RSS of a fresh subprocess running 1,000,000 (and 100,000) no-op items from
   a generator through SQLiteStore.

The machines this runs on are small and noisy: contenders run interleaved in the same run and
the ratios are what matter. ``--quick`` divides every item count by 10 (a smoke test).

Exits 0 whatever the figures are (this is a measuring tool), 1 if a job did not complete with
every item succeeded.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from _report import (
    MB,
    Report,
    Runner,
    argument_parser,
    best,
    check_job,
    current_rss,
    fmt_rate,
    interleave,
    maxrss,
    median,
    memory_child,
    memory_result,
    own_peak_rss,
    parse_common,
    print_header,
    print_rates,
    print_ratio,
    print_summary,
    ratio,
    run_memory_child,
    run_sections,
    scaled,
    version_of,
)
from _stores_support import (
    Shape,
    WorkerProcess,
    directory_bytes,
    drop_prefixed,
    new_prefix,
    postgres_ceiling,
    postgres_problem,
    remove_database,
    sqlite_ceiling,
    with_prefix,
)
from bulkpipe import Job, JobOptions, JobStore, Pipeline, WaitTimeout
from bulkpipe.stores import MemoryStore, SQLiteStore, open_store

SECTIONS = ("e2e", "ceiling", "scaling", "memory")
DEFAULT_POSTGRES_URL = os.environ.get(
    "BULKPIPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

E2E_ITEMS = 100_000
E2E_WARMUP = 2_000

SCALING_WORKERS = (1, 2, 4)
SCALING_ITEMS_PER_WORKER = 4_000  # ~4 s a run at the ideal 1,000 items/s per worker
SCALING_OPTIONS = JobOptions(batch_size=10, concurrency=1)  # 10 in flight per worker
SCALING_SLEEP = 0.010
SCALING_POLL_INTERVAL = 0.05  # how often an idle worker process looks for work
SCALING_WARMUP_ITEMS = 500

MEMORY_ITEMS = (1_000_000, 100_000)

TARGET_SQLITE_VS_CEILING = 0.15
TARGET_POSTGRES_VS_CEILING = 0.10
TARGET_SCALING_4 = 3.0
TARGET_MEMORY_PEAK_MB = 150.0
TARGET_MEMORY_GROWTH = 1.20  # peak(1M) <= peak(100k) + 20 %

WAIT_TIMEOUT = 600.0

MEMORY = "MemoryStore"
SQLITE = "SQLiteStore"
POSTGRES = "PostgresStore"
SQLITE_CEILING = "sqlite3 executemany"
SQLITE_KEYED = "sqlite3 executemany, keyed"
POSTGRES_CEILING = "psycopg COPY"
POSTGRES_KEYED = "psycopg COPY, keyed"


def make_items(n: int) -> Iterator[dict[str, int]]:
    """The items of every job: ``{"id": 0}`` ... ``{"id": n - 1}``, streamed."""
    for i in range(n):
        yield {"id": i}


async def noop(item: dict[str, Any]) -> None:
    """The no-op processor: all the time spent is the machinery's and the store's."""
    return None


class JobFailed(Exception):
    """A job did not finish within ``WAIT_TIMEOUT``: the rest of its section is skipped."""


# -- section 1 and 2: end to end, and the ceilings ----------------------------------------------


async def run_e2e(report: Report, name: str, make_store: Callable[[], JobStore], n: int) -> float:
    """One job of ``n`` no-op items, one in-process worker; seconds from submit to wait."""
    timed_out = False
    async with Pipeline(store=make_store(), workers=1) as pipeline:  # opens the store
        pipeline.register("noop", noop)
        gc.collect()
        start = time.perf_counter()
        job = await pipeline.submit("noop", make_items(n))
        try:
            job = await pipeline.wait(job.id, timeout=WAIT_TIMEOUT)
        except WaitTimeout:
            timed_out = True
            job = await pipeline.get(job.id)
        elapsed = time.perf_counter() - start
    what = f"{name} no-op job over {n:,} items"
    check_job(report, job, n, what + (" (timed out)" if timed_out else ""))
    if timed_out:
        raise JobFailed(f"{what} did not finish in {WAIT_TIMEOUT:g} s")
    return elapsed


async def run_sqlite_e2e(report: Report, directory: Path, n: int) -> float:
    path = directory / f"e2e-{uuid.uuid4().hex[:8]}.db"
    try:
        return await run_e2e(report, SQLITE, partial(SQLiteStore, path), n)
    finally:
        remove_database(path)


async def run_postgres_e2e(report: Report, url: str, n: int) -> float:
    from bulkpipe.stores import PostgresStore

    prefix = new_prefix()
    try:
        return await run_e2e(report, POSTGRES, partial(PostgresStore, url, prefix=prefix), n)
    finally:
        drop_prefixed(url, prefix)


async def run_sync(fn: Callable[[int], float], n: int) -> float:
    """A ceiling is plain blocking driver code; nothing else runs meanwhile."""
    gc.collect()
    return fn(n)


async def section_throughput(
    report: Report,
    sections: list[str],
    quick: bool,
    rounds: int,
    postgres_url: str,
    pg_problem: str | None,
    directory: Path,
) -> None:
    n = scaled(E2E_ITEMS, quick)
    e2e, ceiling = "e2e" in sections, "ceiling" in sections
    titles = [t for t, on in (("end to end", e2e), ("raw driver ceilings", ceiling)) if on]
    print(f"\n== {' and '.join(titles)}: {n:,} items/rows, {rounds} interleaved rounds ==")
    if e2e:
        print(
            "  stores: Pipeline(store, workers=1), async no-op processor, default JobOptions "
            f"(batch_size={JobOptions().batch_size}, concurrency={JobOptions().concurrency}); "
            "timed from submit() (items from a generator) to wait() returning; a fresh SQLite "
            "file / fresh PostgreSQL tables per run"
        )
    if ceiling:
        print(
            "  ceilings: outcome-shaped rows (item_id, ok, result 'null', error NULL, error_type "
            "NULL, attempts, started_at, finished_at) into a fresh table, plain (those columns, "
            "no key or index) and keyed (the store's outcomes table: job column, keys, "
            "indexes); sqlite3: one executemany in one transaction, WAL, synchronous=NORMAL; "
            "psycopg: COPY ... FROM STDIN with write_row, one transaction"
        )
    if pg_problem is not None:
        print(f"  PostgreSQL: skipped: {pg_problem}")
    contenders: list[tuple[str, Runner]] = []
    if e2e:
        contenders.append((MEMORY, partial(run_e2e, report, MEMORY, MemoryStore)))
        contenders.append((SQLITE, partial(run_sqlite_e2e, report, directory)))
    if ceiling:
        sqlite_shapes: tuple[tuple[str, Shape], ...] = (
            (SQLITE_CEILING, "plain"),
            (SQLITE_KEYED, "keyed"),
        )
        for name, shape in sqlite_shapes:
            sqlite_fn = partial(sqlite_ceiling, directory, shape)
            contenders.append((name, partial(run_sync, sqlite_fn)))
    if pg_problem is None:
        if e2e:
            contenders.append((POSTGRES, partial(run_postgres_e2e, report, postgres_url)))
        if ceiling:
            prefix = new_prefix()
            postgres_shapes: tuple[tuple[str, Shape], ...] = (
                (POSTGRES_CEILING, "plain"),
                (POSTGRES_KEYED, "keyed"),
            )
            for name, shape in postgres_shapes:
                postgres_fn = partial(postgres_ceiling, postgres_url, prefix, shape)
                contenders.append((name, partial(run_sync, postgres_fn)))

    rates = await interleave(contenders, n, rounds, scaled(E2E_WARMUP, quick), "/s")
    print()
    print_rates(rates, rounds, "items (rows) / s", width=10)
    print()
    if MEMORY in rates:
        for name in (SQLITE, POSTGRES):
            value = ratio(rates, name, MEMORY)
            print_ratio(f"{name} / {MEMORY}", value, width=44, digits=3)
    checks = (
        (SQLITE, SQLITE_CEILING, TARGET_SQLITE_VS_CEILING, "plain table"),
        (POSTGRES, POSTGRES_CEILING, TARGET_POSTGRES_VS_CEILING, "plain table"),
        (SQLITE, SQLITE_KEYED, TARGET_SQLITE_VS_CEILING, "the store's outcome keys and indexes"),
        (POSTGRES, POSTGRES_KEYED, TARGET_POSTGRES_VS_CEILING, "the store's outcome keys"),
    )
    for store, driver, threshold, table in checks:
        value = ratio(rates, store, driver)
        print_ratio(f"{store} / {driver}", value, threshold, width=44, digits=3)
        skip = None
        if not (e2e and ceiling):
            skip = "needs both e2e and ceiling in --only"
        elif store == POSTGRES and pg_problem is not None:
            skip = pg_problem
        report.target(
            f"{store} end to end / {driver} ceiling ({table}), best of rounds",
            None if value is None else value.best,
            ">=",
            threshold,
            skip,
        )


# -- section 3: scaling over worker processes ---------------------------------------------------


@dataclass(frozen=True)
class ScalingRun:
    workers: int
    items: int
    seconds: float  # submit() called -> job completed_at
    submit_seconds: float  # how long submit() itself took
    first_claim: float  # submit() called -> job started_at

    @property
    def rate(self) -> float:
        return self.items / self.seconds


async def scaling_run(
    report: Report, url: str, workers: int, n: int, backend: str, poll_interval: float
) -> ScalingRun:
    """One job of ``n`` sleep10 items on fresh tables, served by ``workers`` processes."""
    prefix = new_prefix()
    store_url = with_prefix(url, prefix)
    procs: list[WorkerProcess] = []
    try:
        async with Pipeline(store=open_store(store_url), workers=0) as client:  # creates tables
            procs = [
                WorkerProcess(store_url, poll_interval=poll_interval, backend=backend)
                for _ in range(workers)
            ]
            for proc in procs:
                await anyio.to_thread.run_sync(proc.ready)
            await anyio.sleep(max(0.5, 4 * poll_interval))  # every worker idle and polling
            gc.collect()
            wall_start = time.time()
            start = time.perf_counter()
            job = await client.submit("sleep10", make_items(n), options=SCALING_OPTIONS)
            submit_seconds = time.perf_counter() - start
            job = await poll_until_terminal(client, job)
        check_job(report, job, n, f"scaling job over {n:,} items with {workers} worker(s)")
        if not job.status.is_terminal or job.completed_at is None or job.started_at is None:
            raise JobFailed(f"scaling job with {workers} worker(s) did not finish")
        return ScalingRun(
            workers=workers,
            items=n,
            seconds=job.completed_at.timestamp() - wall_start,
            submit_seconds=submit_seconds,
            first_claim=job.started_at.timestamp() - wall_start,
        )
    finally:
        codes = [proc.stop() for proc in procs]
        for proc, code in zip(procs, codes, strict=True):
            if code != 0:
                report.notes.append(
                    f"a scaling worker process exited {code}: {proc.stderr.strip()[-500:]}"
                )
        drop_prefixed(url, prefix)


async def poll_until_terminal(client: Pipeline, job: Job) -> Job:
    """Read the job every 10 ms until it is terminal (the workers run in other processes)."""
    with anyio.move_on_after(WAIT_TIMEOUT):
        while not job.status.is_terminal:
            await anyio.sleep(0.010)
            job = await client.get(job.id)
    return job


async def section_scaling(
    report: Report,
    quick: bool,
    rounds: int,
    url: str,
    pg_problem: str | None,
    backend: str,
    poll_interval: float,
) -> None:
    per_worker = scaled(SCALING_ITEMS_PER_WORKER, quick)
    print(
        f"\n== scaling: worker processes {', '.join(map(str, SCALING_WORKERS))} on one PostgreSQL "
        f"job, {rounds} interleaved rounds =="
    )
    ideal = SCALING_OPTIONS.items_in_flight / SCALING_SLEEP
    print(
        f"  items sleep {SCALING_SLEEP * 1000:g} ms; JobOptions(batch_size="
        f"{SCALING_OPTIONS.batch_size}, concurrency={SCALING_OPTIONS.concurrency}): "
        f"{SCALING_OPTIONS.items_in_flight} in flight per worker, ideal {fmt_rate(ideal)} items/s "
        f"per worker; {per_worker:,} items per worker per run (so each run lasts about the same)"
    )
    print(
        f"  workers: benchmarks/_worker.py processes (poll_interval={poll_interval:g} s), started "
        "and idle before the submit; the client is Pipeline(workers=0) in this process; timed "
        "from submit() to the job's completed_at; fresh tables per run"
    )
    if pg_problem is not None:
        print(f"  skipped: {pg_problem}")
        report.target("scaling: 4 workers / 1 worker", None, ">=", TARGET_SCALING_4, pg_problem)
        return
    run = partial(scaling_run, report, url, backend=backend, poll_interval=poll_interval)
    await run(1, scaled(SCALING_WARMUP_ITEMS, quick))  # warm-up, not counted
    results: dict[int, list[ScalingRun]] = {k: [] for k in SCALING_WORKERS}
    for round_index in range(rounds):
        shift = round_index % len(SCALING_WORKERS)
        for workers in SCALING_WORKERS[shift:] + SCALING_WORKERS[:shift]:
            result = await run(workers, per_worker * workers)
            results[workers].append(result)
            print(
                f"  round {round_index + 1}/{rounds}  {workers} worker(s) {result.items:>7,} items "
                f"{fmt_rate(result.rate):>7} items/s ({result.seconds:.2f} s; submit() took "
                f"{result.submit_seconds:.2f} s; first claim after {result.first_claim:.3f} s)",
                flush=True,
            )
    rates = {f"{k} worker(s)": [r.rate for r in runs] for k, runs in results.items()}
    print()
    print_rates(rates, rounds, "items/s", width=10)
    print()
    print(f"  {'speed-up over 1 worker':<22}{'best':>10}{'median':>10}{'ideal':>10}")
    one = rates["1 worker(s)"]
    for workers in SCALING_WORKERS:
        values = rates[f"{workers} worker(s)"]
        print(
            f"  {f'{workers} worker(s)':<22}{best(values) / best(one):>10.2f}"
            f"{median(values) / median(one):>10.2f}{workers:>10}"
        )
    four = rates[f"{SCALING_WORKERS[-1]} worker(s)"]
    report.target(
        "scaling: 4 worker processes / 1, items/s, best of rounds",
        best(four) / best(one),
        ">=",
        TARGET_SCALING_4,
    )
    report.notes.append(
        f"scaling: 1 worker reached {best(one) / ideal:.2f} of its ideal {fmt_rate(ideal)} "
        "items/s (best of rounds)"
    )


# -- section 4: memory ----------------------------------------------------------------------------


async def memory_child_main(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bulkpipe-bench-") as directory:
        async with Pipeline(store=SQLiteStore(Path(directory) / "jobs.db"), workers=1) as pipeline:
            pipeline.register("noop", noop)
            gc.collect()
            rss_before = current_rss()
            start = time.perf_counter()
            job = await pipeline.submit("noop", make_items(n))
            job = await pipeline.wait(job.id, timeout=WAIT_TIMEOUT)
            seconds = time.perf_counter() - start
            ru_maxrss = maxrss()
            vm_hwm = own_peak_rss()
            file_size = directory_bytes(Path(directory))
    # The target is judged on VmHWM where there is one: ru_maxrss includes the parent's peak
    # (see maxrss()).
    peak = vm_hwm if vm_hwm is not None else ru_maxrss
    return memory_result(
        job, n, rss_before, peak, seconds, ru_maxrss=ru_maxrss, vm_hwm=vm_hwm, file_bytes=file_size
    )


def section_memory(report: Report, backend: str, quick: bool) -> None:
    counts = [scaled(n, quick) for n in MEMORY_ITEMS]
    print(
        "\n== memory: peak RSS of a fresh subprocess running no-op items from a generator "
        f"through SQLiteStore (a fresh file, one in-process worker, default JobOptions), "
        f"{backend} =="
    )
    results: dict[int, dict[str, Any]] = {}
    for n in counts:
        result = run_memory_child(report, __file__, n, backend, "SQLiteStore no-op job")
        if result is not None:
            results[n] = result

    print()
    print(
        f"  {'items':>10}{'RSS before':>12}{'peak RSS':>11}{'ru_maxrss':>12}{'growth':>10}"
        f"{'bytes/item':>12}{'seconds':>9}{'items/s':>10}{'db file':>11}"
    )
    for result in results.values():
        growth = result["peak_rss"] - result["rss_before"]
        print(
            f"  {result['items']:>10,}{result['rss_before'] / MB:>9.1f} MB"
            f"{result['peak_rss'] / MB:>8.1f} MB{result['ru_maxrss'] / MB:>9.1f} MB"
            f"{growth / MB:>7.1f} MB{growth / result['items']:>12,.0f}"
            f"{result['seconds']:>9.2f}{fmt_rate(result['items'] / result['seconds']):>10}"
            f"{result['file_bytes'] / MB:>8.1f} MB"
        )
    print(
        "  (MB = 10^6 bytes. peak RSS = the child's own high-water mark, VmHWM from "
        "/proc/self/status, which the targets use; ru_maxrss = getrusage(RUSAGE_SELF), which on "
        "Linux also counts the RSS of this parent process when it started the child, so it is "
        "at least this process's peak RSS at that moment. bytes/item = (peak RSS - RSS before "
        "submit) / items; db file = the SQLite file with its -wal at the end)"
    )

    big, small = (results.get(n) for n in counts)
    skip = None
    if quick:
        skip = f"--quick ran {counts[0]:,} items; the targets are for {MEMORY_ITEMS[0]:,}"
    elif big is None or small is None:
        skip = "a memory child did not report"
    report.target(
        f"memory: peak RSS for {MEMORY_ITEMS[0]:,} items",
        None if big is None else big["peak_rss"] / MB,
        "<=",
        TARGET_MEMORY_PEAK_MB,
        skip,
        unit=" MB",
    )
    report.target(
        f"memory: peak RSS {MEMORY_ITEMS[0]:,} items / {MEMORY_ITEMS[1]:,} items",
        None if big is None or small is None else big["peak_rss"] / small["peak_rss"],
        "<=",
        TARGET_MEMORY_GROWTH,
        skip,
    )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(
        "Measure bulkpipe's SQL stores against the raw drivers in one run.", SECTIONS
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL to use (default: $BULKPIPE_TEST_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=SCALING_POLL_INTERVAL,
        help="poll_interval of the scaling worker processes (default: %(default)s s)",
    )
    args = parse_common(parser, SECTIONS, argv)
    if args.poll_interval <= 0:
        parser.error("--poll-interval must be positive")
    return args


def postgres_server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url, connect_timeout=3) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row is not None else "unknown"


def print_stores_header(args: argparse.Namespace, pg_problem: str | None, directory: Path) -> None:
    if pg_problem is None:
        server = postgres_server_version(args.postgres_url)
        postgresql = f"{args.postgres_url} (server {server})"
    else:
        postgresql = f"unavailable: {pg_problem}"
    print_header(
        "bulkpipe stores benchmark",
        args,
        [
            (
                "bulkpipe",
                f"{version_of('bulkpipe')}; SQLite {sqlite3.sqlite_version}; "
                f"psycopg {version_of('psycopg')}",
            ),
            ("postgresql", postgresql),
            ("temp dir", f"{directory} (SQLite files)"),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        return memory_child(memory_child_main, args.memory_child, args.backend)

    needs_pg = bool({"e2e", "ceiling", "scaling"} & set(args.only))
    pg_problem = postgres_problem(args.postgres_url) if needs_pg else "not needed"
    report = Report(digits=3)
    with tempfile.TemporaryDirectory(prefix="bulkpipe-bench-") as tmp:
        directory = Path(tmp)
        print_stores_header(args, pg_problem if needs_pg else None, directory)
        runs: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if {"e2e", "ceiling"} & set(args.only):
            runs.append(
                (
                    "e2e/ceiling",
                    partial(
                        section_throughput,
                        report,
                        args.only,
                        args.quick,
                        args.rounds,
                        args.postgres_url,
                        pg_problem,
                        directory,
                    ),
                )
            )
        if "scaling" in args.only:
            runs.append(
                (
                    "scaling",
                    partial(
                        section_scaling,
                        report,
                        args.quick,
                        args.rounds,
                        args.postgres_url,
                        pg_problem,
                        args.backend,
                        args.poll_interval,
                    ),
                )
            )
        run_sections(report, runs, args.backend, JobFailed)
        if "memory" in args.only:
            section_memory(report, args.backend, args.quick)
    print_summary(report, args.quick)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
