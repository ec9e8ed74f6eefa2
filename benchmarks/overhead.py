"""Measure bulkpipe's overhead against baselines, all in one process run.

Usage::

    .venv/bin/python benchmarks/overhead.py [--quick] [--backend asyncio|trio]
                                            [--only noop,io,memory] [--rounds N]

Sections (see benchmarks/README.md for what each one measures and why):

1. ``noop``: a no-op processor over 200,000 items with 500 in flight: bulkpipe against a bare
   anyio worker pool and ``aiometer.amap`` (asyncio only).
2. ``io``: a processor that sleeps 0-20 ms over 20,000 items with 100 in flight: bulkpipe and a
   port of the seed's batch-barrier design, against the ideal 10,000 items/s.
3. ``memory``: peak RSS of a fresh subprocess streaming 1,000,000 (and 100,000) items through
   bulkpipe with MemoryStore.

The machines this runs on are small and noisy, so every contender of a section runs in the
same process, interleaved round by round, and the ratios are what matter. ``--quick`` divides
every item count by 10 (a smoke test; its figures are only indicative).

Exits 0 whatever the figures are (this is a measuring tool), 1 if bulkpipe produced a wrong
result (a job not ``completed``, or fewer succeeded items than submitted), 2 if bulkpipe could
not be imported.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any

import anyio

from _baselines import Item, Processor, aiometer_amap, bare_pool, seed_port
from _report import (
    MB,
    Report,
    Runner,
    argument_parser,
    check_job,
    current_rss,
    fmt_rate,
    interleave,
    memory_child,
    memory_result,
    parse_common,
    peak_rss,
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

try:
    from bulkpipe import JobOptions, Pipeline, WaitTimeout
    from bulkpipe.stores import MemoryStore
except ImportError as exc:  # reported, and the bulkpipe runs are skipped
    BULKPIPE_IMPORT_ERROR: ImportError | None = exc
else:
    BULKPIPE_IMPORT_ERROR = None

SECTIONS = ("noop", "io", "memory")

NOOP_ITEMS = 200_000
NOOP_BATCH_SIZE = 100
NOOP_CONCURRENCY = 5
NOOP_IN_FLIGHT = NOOP_BATCH_SIZE * NOOP_CONCURRENCY  # 500

IO_ITEMS = 20_000
IO_IN_FLIGHT = 100
IO_MAX_DELAY = 0.020  # uniform 0-20 ms, mean 10 ms
IO_MEAN_DELAY = IO_MAX_DELAY / 2
IO_IDEAL = IO_IN_FLIGHT / IO_MEAN_DELAY  # 10,000 items/s
IO_SEED = 1

MEMORY_ITEMS = (1_000_000, 100_000)
MEMORY_TARGET_ITEMS = 1_000_000

TARGET_NOOP_VS_POOL = 1.0
TARGET_NOOP_VS_AIOMETER = 2.0
TARGET_IO_VS_IDEAL = 0.9
TARGET_MEMORY_PEAK_MB = 400.0

WAIT_TIMEOUT = 600.0

BARE_POOL = "bare anyio pool"
AIOMETER = "aiometer.amap"
BULKPIPE = "bulkpipe"
SEED_PORT = "seed port (batch barrier)"


# -- shared helpers -------------------------------------------------------------------------


def make_items(n: int) -> Iterator[Item]:
    """The items every contender processes: ``{"id": 0}`` ... ``{"id": n - 1}``, streamed."""
    for i in range(n):
        yield {"id": i}


async def noop(item: Item) -> None:
    """The no-op processor: all the time spent is the machinery's."""
    return None


def make_sleeper(delays: Sequence[float]) -> Processor:
    """A processor that sleeps the precomputed delay of the item's id."""

    async def sleep_item(item: Item) -> None:
        await anyio.sleep(delays[item["id"]])

    return sleep_item


def io_delays(n: int) -> list[float]:
    rng = random.Random(IO_SEED)
    return [rng.uniform(0.0, IO_MAX_DELAY) for _ in range(n)]


class SectionAborted(Exception):
    """A bulkpipe job hung: the rest of its section is skipped."""


# -- runners ----------------------------------------------------------------------------------


async def run_baseline(
    baseline: Callable[[Processor, Iterator[Item], int], Awaitable[int]],
    processor: Processor,
    in_flight: int,
    n: int,
) -> float:
    gc.collect()
    start = time.perf_counter()
    processed = await baseline(processor, make_items(n), in_flight)
    elapsed = time.perf_counter() - start
    if processed != n:  # a bug in the benchmark itself, not in bulkpipe
        raise RuntimeError(f"{baseline.__name__} processed {processed} of {n} items")
    return elapsed


async def run_bulkpipe(
    report: Report, name: str, processor: Processor, options: JobOptions, n: int
) -> float:
    """One bulkpipe job over ``n`` items; timed from ``submit`` to ``wait`` returning.

    Raises :class:`SectionAborted` if the job is not terminal after ``WAIT_TIMEOUT`` seconds.
    """
    timed_out = False
    async with Pipeline(store=MemoryStore()) as pipeline:
        pipeline.register(name, processor)
        gc.collect()
        start = time.perf_counter()
        job = await pipeline.submit(name, make_items(n), options=options)
        try:
            job = await pipeline.wait(job.id, timeout=WAIT_TIMEOUT)
        except WaitTimeout:
            timed_out = True
            job = await pipeline.get(job.id)
        elapsed = time.perf_counter() - start
    what = f"bulkpipe {name} job over {n:,} items"
    check_job(
        report, job, n, what + (f" (not finished after {WAIT_TIMEOUT:g} s)" if timed_out else "")
    )
    if timed_out:
        raise SectionAborted(f"{what} did not finish")
    return elapsed


# -- section 1: no-op ---------------------------------------------------------------------------


async def section_noop(report: Report, backend: str, quick: bool, rounds: int) -> None:
    n = scaled(NOOP_ITEMS, quick)
    print(
        f"\n== 1. no-op overhead: {n:,} items, {NOOP_IN_FLIGHT} in flight, "
        f"{rounds} interleaved rounds =="
    )
    print(
        f"  bulkpipe: MemoryStore, JobOptions(batch_size={NOOP_BATCH_SIZE}, "
        f"concurrency={NOOP_CONCURRENCY}), timed from submit() to wait() returning"
    )
    contenders: list[tuple[str, Runner]] = [
        (BARE_POOL, partial(run_baseline, bare_pool, noop, NOOP_IN_FLIGHT)),
    ]
    if BULKPIPE_IMPORT_ERROR is None:
        options = JobOptions(batch_size=NOOP_BATCH_SIZE, concurrency=NOOP_CONCURRENCY)
        contenders.append((BULKPIPE, partial(run_bulkpipe, report, "noop", noop, options)))
    else:
        print(f"  bulkpipe: skipped, cannot import it: {BULKPIPE_IMPORT_ERROR}")
    aiometer_skip: str | None = None
    if backend != "asyncio":
        aiometer_skip = f"aiometer is measured under asyncio only; this run is on {backend}"
    else:
        try:
            import aiometer  # noqa: F401  (checks it is installed)
        except ImportError:
            aiometer_skip = "aiometer is not installed (pip install aiometer)"
    if aiometer_skip is None:
        contenders.append((AIOMETER, partial(run_baseline, aiometer_amap, noop, NOOP_IN_FLIGHT)))
    else:
        print(f"  {AIOMETER}: skipped: {aiometer_skip}")

    rates = await interleave(contenders, n, rounds, max(1_000, n // 50), "items/s")
    print()
    print_rates(rates, rounds, "items/s", width=11)

    vs_pool = ratio(rates, BULKPIPE, BARE_POOL)
    vs_aiometer = ratio(rates, BULKPIPE, AIOMETER)
    print()
    print_ratio("bulkpipe / bare anyio pool", vs_pool, TARGET_NOOP_VS_POOL)
    print_ratio("bulkpipe / aiometer.amap", vs_aiometer, TARGET_NOOP_VS_AIOMETER)
    bulkpipe_skip = None if BULKPIPE_IMPORT_ERROR is None else "bulkpipe did not run"
    report.target(
        "no-op: bulkpipe / bare anyio pool, best of rounds",
        None if vs_pool is None else vs_pool.best,
        ">=",
        TARGET_NOOP_VS_POOL,
        bulkpipe_skip,
    )
    report.target(
        "no-op: bulkpipe / aiometer.amap, best of rounds",
        None if vs_aiometer is None else vs_aiometer.best,
        ">=",
        TARGET_NOOP_VS_AIOMETER,
        aiometer_skip or bulkpipe_skip,
    )


# -- section 2: I/O-bound -----------------------------------------------------------------------


async def section_io(report: Report, quick: bool, rounds: int) -> None:
    n = scaled(IO_ITEMS, quick)
    delays = io_delays(n)
    sleeper = make_sleeper(delays)
    print(
        f"\n== 2. I/O-bound: {n:,} items sleeping 0-{IO_MAX_DELAY * 1000:.0f} ms "
        f"(random.Random({IO_SEED}); mean of these delays {statistics.fmean(delays) * 1000:.2f} "
        f"ms), {IO_IN_FLIGHT} in flight, {rounds} interleaved rounds =="
    )
    print(
        f"  ideal: {IO_IN_FLIGHT} in flight / {IO_MEAN_DELAY * 1000:.0f} ms = "
        f"{fmt_rate(IO_IDEAL)} items/s"
    )
    print(f"  bulkpipe: MemoryStore, JobOptions(batch_size={IO_IN_FLIGHT}, concurrency=1)")
    print(
        f"  seed port: batches of {IO_IN_FLIGHT}, one at a time, each a task group that ends "
        "with its slowest item"
    )
    contenders: list[tuple[str, Runner]] = [
        (SEED_PORT, partial(run_baseline, seed_port, sleeper, IO_IN_FLIGHT)),
    ]
    if BULKPIPE_IMPORT_ERROR is None:
        options = JobOptions(batch_size=IO_IN_FLIGHT, concurrency=1)
        contenders.append((BULKPIPE, partial(run_bulkpipe, report, "sleep", sleeper, options)))
    else:
        print(f"  bulkpipe: skipped, cannot import it: {BULKPIPE_IMPORT_ERROR}")
    contenders.append((BARE_POOL, partial(run_baseline, bare_pool, sleeper, IO_IN_FLIGHT)))

    rates = await interleave(contenders, n, rounds, max(200, n // 50), "items/s")
    print()
    print_rates(rates, rounds, "items/s", width=11)
    print()
    print(f"  {'achieved / ideal':<28}{'best':>11}{'median':>11}")
    for name, values in rates.items():
        print(
            f"  {name:<28}{max(values) / IO_IDEAL:>11.2f}"
            f"{statistics.median(values) / IO_IDEAL:>11.2f}"
        )
    if BULKPIPE in rates:
        report.target(
            "I/O: bulkpipe / ideal 10,000 items/s, best of rounds",
            max(rates[BULKPIPE]) / IO_IDEAL,
            ">=",
            TARGET_IO_VS_IDEAL,
        )
    else:
        report.target(
            "I/O: bulkpipe / ideal", None, ">=", TARGET_IO_VS_IDEAL, "bulkpipe did not run"
        )
    report.notes.append(
        f"I/O reference: seed port / ideal = {max(rates[SEED_PORT]) / IO_IDEAL:.2f} "
        "(best of rounds; its design tops out near 0.5)"
    )


# -- section 3: memory --------------------------------------------------------------------------


async def memory_child_main(n: int) -> dict[str, Any]:
    async with Pipeline(store=MemoryStore()) as pipeline:
        pipeline.register("noop", noop)
        gc.collect()
        rss_before = current_rss()
        start = time.perf_counter()
        job = await pipeline.submit("noop", make_items(n), options=JobOptions())
        job = await pipeline.wait(job.id, timeout=WAIT_TIMEOUT)
        seconds = time.perf_counter() - start
        peak = peak_rss()
    return memory_result(job, n, rss_before, peak, seconds)


def section_memory(report: Report, backend: str, quick: bool) -> None:
    counts = [scaled(n, quick) for n in MEMORY_ITEMS]
    print(
        f"\n== 3. memory: peak RSS of a fresh subprocess streaming items from a generator "
        f"through bulkpipe (MemoryStore, no-op, default JobOptions), {backend} =="
    )
    if BULKPIPE_IMPORT_ERROR is not None:
        print(f"  skipped, cannot import bulkpipe: {BULKPIPE_IMPORT_ERROR}")
        report.target(
            "memory: peak RSS, MB", None, "<=", TARGET_MEMORY_PEAK_MB, "bulkpipe did not run"
        )
        return
    results: list[dict[str, Any]] = []
    for n in counts:
        result = run_memory_child(report, __file__, n, backend, "bulkpipe noop job")
        if result is not None:
            results.append(result)

    print()
    print(
        f"  {'items':>10}{'RSS before':>12}{'peak RSS':>11}{'growth':>10}"
        f"{'bytes/item':>12}{'seconds':>9}{'items/s':>10}"
    )
    for result in results:
        growth = result["peak_rss"] - result["rss_before"]
        print(
            f"  {result['items']:>10,}{result['rss_before'] / MB:>9.1f} MB"
            f"{result['peak_rss'] / MB:>8.1f} MB{growth / MB:>7.1f} MB"
            f"{growth / result['items']:>12,.0f}{result['seconds']:>9.2f}"
            f"{fmt_rate(result['items'] / result['seconds']):>10}"
        )
    print("  (MB = 10^6 bytes; bytes/item = (peak RSS - RSS before submit) / items)")

    big = next((r for r in results if r["items"] == MEMORY_TARGET_ITEMS), None)
    if big is not None:
        report.target(
            f"memory: peak RSS for {MEMORY_TARGET_ITEMS:,} items, MB",
            big["peak_rss"] / MB,
            "<=",
            TARGET_MEMORY_PEAK_MB,
        )
    else:
        reason = (
            f"--quick ran {counts[0]:,} items; the target is for {MEMORY_TARGET_ITEMS:,}"
            if quick
            else "the run did not complete"
        )
        report.target(
            f"memory: peak RSS for {MEMORY_TARGET_ITEMS:,} items, MB",
            None,
            "<=",
            TARGET_MEMORY_PEAK_MB,
            reason,
        )


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser("Measure bulkpipe's overhead against baselines in one run.", SECTIONS)
    args = parse_common(parser, SECTIONS, argv)
    if args.memory_child is not None:
        if BULKPIPE_IMPORT_ERROR is not None:
            print(f"cannot import bulkpipe: {BULKPIPE_IMPORT_ERROR}", file=sys.stderr)
            return 2
        return memory_child(memory_child_main, args.memory_child, args.backend)

    print_header(
        "bulkpipe overhead benchmark",
        args,
        [("bulkpipe", f"{version_of('bulkpipe')}; aiometer: {version_of('aiometer')}")],
    )
    report = Report()
    sections: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("noop", partial(section_noop, report, args.backend, args.quick, args.rounds)),
        ("io", partial(section_io, report, args.quick, args.rounds)),
    ]
    runs = [(name, run) for name, run in sections if name in args.only]
    run_sections(report, runs, args.backend, SectionAborted)
    if "memory" in args.only:
        section_memory(report, args.backend, args.quick)
    print_summary(report, args.quick)

    if report.problems:
        return 1
    if BULKPIPE_IMPORT_ERROR is not None:
        print(f"\nbulkpipe could not be imported: {BULKPIPE_IMPORT_ERROR}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
