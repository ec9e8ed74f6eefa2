"""What ``benchmarks/overhead.py`` and ``benchmarks/stores.py`` share to run and report.

The header (command line, python, backend, load), the common command-line options, the
interleaved rounds and their table (per round, best, median), the ratios between contenders,
the PASS/FAIL/SKIP/INFO target lines with the load-average warning, RSS readings and the
``--memory-child`` subprocess runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

import anyio

if TYPE_CHECKING:
    from bulkpipe import Job

MB = 1_000_000  # figures in MB are decimal megabytes
BACKENDS = ("asyncio", "trio")

# Takes an item (or row) count, runs one contender over that many, returns the seconds it took.
Runner = Callable[[int], Awaitable[float]]


# -- figures ------------------------------------------------------------------------------------


def scaled(n: int, quick: bool) -> int:
    return n // 10 if quick else n


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def best(values: list[float]) -> float:
    return max(values)


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- targets and wrong results ------------------------------------------------------------------


@dataclass
class Report:
    """What the run found: the target lines, notes, and any job with a wrong result.

    ``digits``: the decimals a measured value is shown with on its target line.
    """

    digits: int = 2
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
                f"{text} = {value:.{self.digits}f}{unit} (target {op} {threshold:g}{unit})",
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


# -- interleaved rounds and ratios --------------------------------------------------------------


async def interleave(
    contenders: list[tuple[str, Runner]], n: int, rounds: int, warmup: int, unit: str
) -> dict[str, list[float]]:
    """Run every contender ``rounds`` times over ``n``, interleaved; rate (per second) per run.

    Each contender first runs once over ``warmup`` (not counted) so that first-use costs
    (imports, caches) do not land in round 1. The order rotates every round so no contender
    always runs right after the same other one. ``unit`` follows the rate on each round's line.
    """
    for _, runner in contenders:
        await runner(warmup)
    rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        for name, runner in contenders[shift:] + contenders[:shift]:
            seconds = await runner(n)
            rates[name].append(n / seconds)
            print(
                f"  round {round_index + 1}/{rounds}  {name:<28} {fmt_rate(n / seconds):>10} "
                f"{unit}  ({seconds:.2f} s)",
                flush=True,
            )
    return rates


def print_rates(rates: dict[str, list[float]], rounds: int, unit: str, width: int) -> None:
    """The table of rates: a row per contender, a column per round, then best and median."""
    print(
        f"  {unit:<28}"
        + "".join(f"{f'round {i + 1}':>{width}}" for i in range(rounds))
        + f"{'best':>{width}}{'median':>{width}}"
    )
    for name, values in rates.items():
        print(
            f"  {name:<28}"
            + "".join(f"{fmt_rate(v):>{width}}" for v in values)
            + f"{fmt_rate(best(values)):>{width}}{fmt_rate(median(values)):>{width}}"
        )


@dataclass(frozen=True)
class Ratio:
    """One contender's rate over another's, three ways."""

    best: float  # best run over best run: what the targets are judged on
    median: float  # median run over median run
    per_round: list[float]  # run over run within each round (back to back, similar load)


def ratio(rates: dict[str, list[float]], top: str, bottom: str) -> Ratio | None:
    """How ``top`` compares with ``bottom``, or None if either did not run."""
    if top not in rates or bottom not in rates:
        return None
    return Ratio(
        best=best(rates[top]) / best(rates[bottom]),
        median=median(rates[top]) / median(rates[bottom]),
        per_round=[a / b for a, b in zip(rates[top], rates[bottom], strict=True)],
    )


def print_ratio(
    label: str,
    value: Ratio | None,
    threshold: float | None = None,
    *,
    width: int = 28,
    digits: int = 2,
) -> None:
    """One ratio line (nothing if ``value`` is None), with its target if it has one."""
    if value is None:
        return
    rounds = " ".join(f"{r:.{digits}f}" for r in value.per_round)
    target = f"   target >= {threshold:g}" if threshold is not None else ""
    print(
        f"  {label:<{width}} best {value.best:.{digits}f}   median {value.median:.{digits}f}   "
        f"per round {rounds}{target}"
    )


# -- command line and header --------------------------------------------------------------------


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def argument_parser(description: str, sections: Sequence[str]) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: --quick, --backend, --only, --rounds
    and the hidden --memory-child."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="divide every item count by 10")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio", help="anyio backend")
    parser.add_argument(
        "--only",
        default=",".join(sections),
        help=f"comma-separated sections to run, of {','.join(sections)} (default: all)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds per contender (default: 3)"
    )
    parser.add_argument("--memory-child", type=int, metavar="N", help=argparse.SUPPRESS)
    return parser


def parse_common(
    parser: argparse.ArgumentParser, sections: Sequence[str], argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse ``argv`` and check the common options; ``--only`` becomes a list of sections."""
    args = parser.parse_args(argv)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(only) - set(sections))
    if unknown or not only:
        parser.error(f"--only takes a comma-separated subset of {','.join(sections)}")
    args.only = only
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, or "unknown" where the OS has none."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def print_header(
    title: str, args: argparse.Namespace, extra: Sequence[tuple[str, str]] = ()
) -> None:
    """The run's header: ``title``, then labelled lines (``extra`` after the backend)."""
    backend_version = f"anyio {version_of('anyio')}"
    if args.backend == "trio":
        backend_version += f", trio {version_of('trio')}"
    mode = "quick (item counts divided by 10)" if args.quick else "full"
    lines = [
        ("command", shlex.join([sys.executable, *sys.argv])),
        (
            "python",
            f"{platform.python_version()} ({platform.python_implementation()}) on "
            f"{platform.platform()}, {os.cpu_count()} CPUs",
        ),
        ("backend", f"{args.backend} ({backend_version})"),
        *extra,
        ("mode", f"{mode}; sections: {','.join(args.only)}; rounds: {args.rounds}"),
        ("load", f"{load_average()} before the run"),
    ]
    width = max(len(label) for label, _ in lines) + 2
    print(title)
    for label, value in lines:
        print(f"{label + ':':<{width}}{value}")
    print("targets are judged on each contender's best run; medians and per-round ratios shown")
    sys.stdout.flush()


# -- summary ------------------------------------------------------------------------------------


def warn_if_busy() -> None:
    """Say so when other work competed for the CPUs: the throughput figures are then unreliable."""
    try:
        recent = os.getloadavg()[1]
    except OSError:
        return
    cpus = os.cpu_count() or 1
    # A run keeps about one CPU busy itself; warn once other work takes half of the rest.
    if recent > 1 + 0.5 * max(cpus - 1, 1):
        print(
            f"WARNING  5-minute load average {recent:.2f} on {cpus} CPUs: other work competed "
            "for the CPUs during this run, so throughput figures are unreliable; rerun on a "
            "quiet machine and compare the per-round ratios"
        )


def print_summary(report: Report, quick: bool) -> None:
    """The target lines, the notes, the load average and any wrong results."""
    print("\n== targets ==")
    for verdict, text in report.targets:
        print(f"{verdict}  {text}")
    for note in report.notes:
        print(f"INFO  {note}")
    if quick:
        print("INFO  --quick: fewer items than the targets are set for; figures are indicative")
    print(f"INFO  load average at the end: {load_average()}")
    warn_if_busy()
    if report.problems:
        print(f"\nWRONG RESULTS from bulkpipe ({len(report.problems)}):")
        for problem in report.problems:
            print(f"  {problem}")


# -- memory -------------------------------------------------------------------------------------


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


def peak_rss() -> int:
    """Peak resident set size of this program, in bytes: ``VmHWM`` where ``/proc`` has it
    (a fresh child's ``ru_maxrss`` would include its parent's peak), else ``ru_maxrss``."""
    own = own_peak_rss()
    return own if own is not None else maxrss()


def run_memory_child(
    report: Report, script: str, n: int, backend: str, what: str
) -> dict[str, Any] | None:
    """Run ``script --memory-child n`` in a fresh process; its JSON result, or None.

    A child that reports a job which did not complete with every item succeeded (exit 1), or
    that reports nothing, is recorded as a problem; ``what`` names the job in that message.
    """
    command = [sys.executable, os.path.abspath(script), "--memory-child", str(n)]
    command += ["--backend", backend]
    print(f"  running: {shlex.join(command)}", flush=True)
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.stderr:
        sys.stderr.write(completed.stderr)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode == 2 or not lines:
        report.problem(f"memory child for {n:,} items failed (exit {completed.returncode})")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    if completed.returncode != 0:
        report.problem(
            f"{what} over {n:,} items in the memory child: "
            f"status={result['status']} succeeded={result['succeeded_items']} "
            f"failed={result['failed_items']} total={result['total_items']}"
        )
    return result


def memory_child(main: Callable[[int], Awaitable[dict[str, Any]]], n: int, backend: str) -> int:
    """The body of ``--memory-child N``: runs ``main(n)``, prints its result as one JSON line;
    exit 1 if the job did not complete with every item succeeded."""
    result = anyio.run(main, n, backend=backend)
    print(json.dumps(result), flush=True)
    ok = result["status"] == "completed" and result["succeeded_items"] == n
    return 0 if ok else 1


def memory_result(
    job: Job, n: int, rss_before: int, peak_rss: int, seconds: float, **extra: Any
) -> dict[str, Any]:
    """A memory child's JSON result: its figures (``extra`` too) and how its job ended."""
    return {
        "items": n,
        "rss_before": rss_before,
        "peak_rss": peak_rss,
        "seconds": seconds,
        **extra,
        "status": str(job.status),
        "succeeded_items": job.succeeded_items,
        "failed_items": job.failed_items,
        "total_items": job.total_items,
    }


def run_sections(
    report: Report,
    runs: Sequence[tuple[str, Callable[[], Awaitable[None]]]],
    backend: str,
    aborted: type[Exception],
) -> None:
    """Run each section in its own event loop; one that raises ``aborted`` gets a FAIL line."""
    for name, run_section in runs:
        try:
            anyio.run(run_section, backend=backend)
        except aborted as exc:
            print(f"  section {name} aborted: {exc}", flush=True)
            report.targets.append(("FAIL", f"{name}: section aborted: {exc}"))
