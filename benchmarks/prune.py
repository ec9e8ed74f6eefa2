"""Measure how a prune on PostgreSQL delays a worker's claims from another job.

Usage::

    .venv/bin/python benchmarks/prune.py [--postgres-url URL] [--jobs 100] [--items 1000]
                                         [--baseline 3] [--json]

Fills fresh tables (a unique prefix, dropped at the end) with ``--jobs`` completed jobs of
``--items`` no-op items each (batches of 100), then starts one live job and a claimer: a loop
that claims a batch of the live job and gives it back, timing each ``claim_batch`` call, on a
store object (and connection pool) of its own. It runs ``--baseline`` seconds without a
prune, then during ``Pipeline.prune`` of every completed job on a third store object, and
prints the max and p99 claim latency of both phases, the prune's duration and its rows/s
(items, outcomes, batches and job rows deleted). ``--json`` prints the figures as one JSON
object instead (tests/test_prune_claims.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

import anyio
import psycopg

from bulkpipe import JobOptions, Pipeline
from bulkpipe.stores import PostgresStore

DEFAULT_URL = os.environ.get(
    "BULKPIPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def noop(item: Any) -> None:
    """The processor of the filler jobs."""


def drop(url: str, prefix: str) -> None:
    """Drop the tables and sequences of ``prefix``."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, relkind FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace "
            "WHERE n.nspname = current_schema() AND relkind IN ('r', 'S') AND relname LIKE %s",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
        for name, kind in rows:
            conn.execute(f'DROP {"TABLE" if kind == "r" else "SEQUENCE"} IF EXISTS "{name}"')


def summary(latencies: list[float]) -> dict[str, float]:
    """Count, max and p99 (seconds) of claim latencies."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    return {
        "claims": len(ordered),
        "max": ordered[-1] if ordered else 0.0,
        "p99": p99,
        "median": statistics.median(ordered) if ordered else 0.0,
    }


async def measure(
    url: str, prefix: str, *, jobs: int, items: int, baseline: float
) -> dict[str, Any]:
    """Fill, then time claims without and during a prune; the figures."""
    options = JobOptions(batch_size=100, concurrency=4, progress_interval=0.5)
    async with Pipeline(
        PostgresStore(url, prefix=prefix), processors={"noop": noop}, workers=1
    ) as filler:
        started = time.perf_counter()
        for n in range(jobs):
            job = await filler.submit(
                "noop", ({"id": f"{n}-{i}"} for i in range(items)), options=options
            )
            await filler.wait(job.id)
        fill = time.perf_counter() - started
    claimer = PostgresStore(url, prefix=prefix, max_size=1)
    pruner = Pipeline(PostgresStore(url, prefix=prefix), workers=0)
    await claimer.open()
    try:
        async with pruner:
            live = await pruner.submit(  # claimed below by hand: nothing serves it
                "elsewhere", ({"id": i} for i in range(1000)), options=options, allow_unserved=True
            )
            latencies: dict[str, list[float]] = {"baseline": [], "prune": []}
            phase = "baseline"
            stop = anyio.Event()

            async def claim_loop() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    got = await claimer.claim_batch(
                        worker_id="claimer", lease_seconds=30, job_id=live.id
                    )
                    latencies[phase].append(time.perf_counter() - t0)
                    assert got is not None, "the live job ran out of batches"
                    await claimer.release([got.lease])

            async with anyio.create_task_group() as tg:
                tg.start_soon(claim_loop)
                await anyio.sleep(baseline)
                phase = "prune"
                t0 = time.perf_counter()
                pruned = await pruner.prune(older_than=timedelta(microseconds=1))
                took = time.perf_counter() - t0
                stop.set()
            await pruner.cancel(live.id)
    finally:
        await claimer.close()
    rows = jobs * (2 * items + items // 100 + 1)
    return {
        "jobs": jobs,
        "items_per_job": items,
        "fill_seconds": fill,
        "pruned_jobs": pruned,
        "prune_seconds": took,
        "rows_deleted": rows,
        "rows_per_second": rows / took if took else 0.0,
        "baseline": summary(latencies["baseline"]),
        "during_prune": summary(latencies["prune"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds without a prune")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    prefix = f"bp{uuid.uuid4().hex[:8]}_"
    try:
        figures = anyio.run(
            lambda: measure(
                args.postgres_url, prefix, jobs=args.jobs, items=args.items, baseline=args.baseline
            )
        )
    finally:
        drop(args.postgres_url, prefix)
    if args.json:
        print(json.dumps(figures))
        return 0 if figures["pruned_jobs"] == args.jobs else 1
    ms = 1000.0
    print(f"prune of {figures['pruned_jobs']} jobs x {args.items} items on PostgreSQL")
    print(
        f"  prune: {figures['prune_seconds']:.2f} s, {figures['rows_deleted']:,} rows, "
        f"{figures['rows_per_second']:,.0f} rows/s (fill took {figures['fill_seconds']:.1f} s)"
    )
    for name in ("baseline", "during_prune"):
        s = figures[name]
        print(
            f"  claims {name:>12}: {s['claims']:6,} claims, max {s['max'] * ms:7.1f} ms, "
            f"p99 {s['p99'] * ms:6.1f} ms, median {s['median'] * ms:5.2f} ms"
        )
    return 0 if figures["pruned_jobs"] == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
