"""The ``bulkpipe demo`` job: a ``full_analysis`` over synthetic nodes, and its text report.

:func:`run_demo` does the work and returns a :class:`DemoReport`; it knows nothing of terminals.
:class:`ProgressBar` and :func:`format_summary` render plain text for the CLI.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TextIO

from .nodes import DEFAULT_COUNT, generate_nodes
from .processors import FullAnalysis

if TYPE_CHECKING:
    from bulkpipe import JobOptions
    from bulkpipe.models import ItemOutcome, Job

__all__ = [
    "PROCESSOR_NAME",
    "DemoConfig",
    "DemoReport",
    "Opportunity",
    "ProgressBar",
    "format_summary",
    "job_options",
    "render_progress",
    "run_demo",
    "top_opportunities",
]

PROCESSOR_NAME: Final = "full_analysis"
"""The name the demo registers its processor under."""


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What the demo runs: the nodes, the simulated upstream, and the job options.

    The defaults are the acceptance scenario: 3,000 nodes, 20 ms per upstream call, 5 %
    transient failures per call.
    """

    nodes: int = DEFAULT_COUNT
    latency: float = 0.02
    failure_rate: float = 0.05
    seed: int = 42
    batch_size: int = 100
    concurrency: int = 5
    retry_delay: float = 0.05
    top: int = 10
    watch_interval: float = 0.1


@dataclass(frozen=True, slots=True)
class Opportunity:
    """One ranked node of the report."""

    node_id: str
    name: str
    combined_value: float


@dataclass(frozen=True, slots=True)
class DemoReport:
    """The outcome of :func:`run_demo`: the final job snapshot and the best opportunities."""

    job: Job
    top: list[Opportunity]

    @property
    def completed(self) -> bool:
        """True when the job ended ``completed`` (the CLI's exit status 0)."""
        from bulkpipe import JobStatus

        return self.job.status == JobStatus.COMPLETED


def job_options(config: DemoConfig) -> JobOptions:
    """The validated job options of ``config``; a bad value raises :class:`ValueError`."""
    from bulkpipe import JobOptions

    # Keep the backoff cap valid when a long --retry-delay is asked for.
    delay_cap = max(config.retry_delay, JobOptions.model_validate({}).retry_delay_max)
    return JobOptions.model_validate(
        {
            "batch_size": config.batch_size,
            "concurrency": config.concurrency,
            "retry_delay": config.retry_delay,
            "retry_delay_max": delay_cap,
        }
    )


async def run_demo(
    config: DemoConfig, *, on_progress: Callable[[Job], object] | None = None
) -> DemoReport:
    """Run the demo job in an in-memory pipeline and rank its results.

    ``on_progress`` gets every snapshot from ``Pipeline.watch``, the terminal one last.
    """
    from bulkpipe import Pipeline
    from bulkpipe.stores import MemoryStore

    options = job_options(config)
    processor = FullAnalysis(
        latency=config.latency, failure_rate=config.failure_rate, seed=config.seed
    )
    async with Pipeline(store=MemoryStore()) as pipeline:
        pipeline.register(PROCESSOR_NAME, processor)
        nodes = generate_nodes(config.nodes, seed=config.seed)
        job = await pipeline.submit(PROCESSOR_NAME, nodes, options=options)
        async for snapshot in pipeline.watch(job.id, interval=config.watch_interval):
            if on_progress is not None:
                on_progress(snapshot)
        final = await pipeline.wait(job.id)
        ranked = await top_opportunities(
            pipeline.outcomes(final.id, status="succeeded"), config.top
        )
    names = _names_of({node_id for node_id, _ in ranked}, config)
    top = [Opportunity(node_id, names.get(node_id, "?"), value) for node_id, value in ranked]
    return DemoReport(job=final, top=top)


async def top_opportunities(
    outcomes: AsyncIterable[ItemOutcome], limit: int
) -> list[tuple[str, float]]:
    """The ``limit`` best ``(item_id, combined_value)`` pairs, best first.

    Keeps a heap of at most ``limit`` entries while streaming, never the whole list.
    """
    heap: list[tuple[float, str]] = []
    async for outcome in outcomes:
        entry = (_combined_value_of(outcome), outcome.item_id)
        if len(heap) < limit:
            heapq.heappush(heap, entry)
        elif limit > 0 and entry > heap[0]:
            heapq.heapreplace(heap, entry)
    return [(item_id, value) for value, item_id in sorted(heap, reverse=True)]


def _combined_value_of(outcome: ItemOutcome) -> float:
    result = outcome.result
    value = result.get("combined_value") if isinstance(result, dict) else None
    return float(value) if isinstance(value, int | float) else -math.inf


def _names_of(node_ids: set[str], config: DemoConfig) -> dict[str, str]:
    """The names of ``node_ids``, by generating the (deterministic) nodes again."""
    names: dict[str, str] = {}
    for node in generate_nodes(config.nodes, seed=config.seed):
        if node["id"] in node_ids:
            names[node["id"]] = node["name"]
            if len(names) == len(node_ids):
                break
    return names


def render_progress(
    done: int, total: int, failed: int, percent: float, elapsed: float, width: int = 30
) -> str:
    """One progress line: ``[#####-----] 1500/3000  50.0%  2400 items/s  3 failed``."""
    fraction = min(1.0, max(0.0, percent / 100.0))
    filled = round(fraction * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    bar = "#" * filled + "-" * (width - filled)
    return f"[{bar}] {done}/{total}  {percent:5.1f}%  {rate:,.0f} items/s  {failed} failed"


class ProgressBar:
    """Plain-text job progress on ``stream``, fed with ``Pipeline.watch`` snapshots.

    On a terminal one line is rewritten with ``\\r``; elsewhere a line is written at each 10 %
    step and at the end, so logs stay short.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        interactive: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interactive = stream.isatty() if interactive is None else interactive
        self._clock = clock
        self._started = clock()
        self._line_length = 0
        self._last_step = -1
        self._open_line = False

    def update(self, snapshot: Job) -> None:
        """Show ``snapshot``; the terminal one ends the line."""
        line = render_progress(
            snapshot.processed_items,
            snapshot.total_items,
            snapshot.failed_items,
            snapshot.progress,
            self._clock() - self._started,
        )
        if self._interactive:
            self._rewrite(line, finished=snapshot.status.is_terminal)
        else:
            self._log(line, step=int(snapshot.progress // 10), final=snapshot.status.is_terminal)

    def close(self) -> None:
        """End a line left open (for example when the run was interrupted)."""
        if self._open_line:
            self._stream.write("\n")
            self._stream.flush()
            self._open_line = False

    def _rewrite(self, line: str, *, finished: bool) -> None:
        padding = " " * max(0, self._line_length - len(line))
        self._stream.write(f"\r{line}{padding}")
        self._line_length = len(line)
        self._open_line = True
        if finished:
            self.close()
        else:
            self._stream.flush()

    def _log(self, line: str, *, step: int, final: bool) -> None:
        if step > self._last_step or final:
            self._last_step = step
            self._stream.write(line + "\n")
            self._stream.flush()


def format_summary(report: DemoReport) -> str:
    """The report as text: the job's counts and rates, then the ranked opportunities."""
    return "\n".join([*_summary_lines(report.job), "", *_top_lines(report.top)]) + "\n"


def _summary_lines(job: Job) -> list[str]:
    summary = job.result
    total = summary.total if summary else job.total_items
    succeeded = summary.succeeded if summary else job.succeeded_items
    failed = summary.failed if summary else job.failed_items
    rows = [
        ("status", str(job.status)),
        ("total", f"{total:,}"),
        ("succeeded", f"{succeeded:,}"),
        ("failed", f"{failed:,}"),
    ]
    if summary is not None:
        rows += [
            ("success rate", f"{summary.success_rate:.2f}%"),
            ("duration", f"{summary.duration:.2f} s"),
            ("throughput", f"{summary.items_per_second:,.1f} items/s"),
        ]
    return [f"bulkpipe demo: {job.type} job {job.id}", *_table(rows)]


def _table(rows: Iterable[tuple[str, str]]) -> list[str]:
    return [f"  {label:<13} {value}" for label, value in rows]


def _top_lines(top: list[Opportunity]) -> list[str]:
    if not top:
        return ["No succeeded items to rank."]
    lines = [
        f"Top {len(top)} opportunities by combined value",
        f"  {'#':>3}  {'node':<12} {'value':>7}  name",
    ]
    for rank, item in enumerate(top, start=1):
        lines.append(f"  {rank:>3}  {item.node_id:<12} {item.combined_value:7.2f}  {item.name}")
    return lines
