"""The ``bulkpipe demo`` job: a ``full_analysis`` over synthetic nodes, and its text report.

:func:`run_demo` does the work and returns a :class:`DemoReport`; it knows nothing of terminals.
:func:`format_summary` renders the report as plain text for the CLI (whose progress bar lives in
:mod:`bulkpipe.cli.render`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio

from .nodes import DEFAULT_COUNT, generate_nodes
from .processors import FullAnalysis

if TYPE_CHECKING:
    from bulkpipe import JobOptions, JobStore
    from bulkpipe.models import ItemOutcome, Job

__all__ = [
    "PROCESSOR_NAME",
    "DemoConfig",
    "DemoReport",
    "Opportunity",
    "format_summary",
    "job_options",
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
    config: DemoConfig,
    *,
    store: JobStore | None = None,
    on_progress: Callable[[Job], object] | None = None,
) -> DemoReport:
    """Run the demo job in a pipeline on ``store`` (default: in memory) and rank its results.

    ``on_progress`` gets every snapshot from ``Pipeline.watch``, the terminal one last. When
    cancelled (Ctrl-C in the CLI), the demo cancels its job.
    """
    from bulkpipe import Pipeline

    options = job_options(config)
    processor = FullAnalysis(
        latency=config.latency, failure_rate=config.failure_rate, seed=config.seed
    )
    async with Pipeline(store=store) as pipeline:
        pipeline.register(PROCESSOR_NAME, processor)
        nodes = generate_nodes(config.nodes, seed=config.seed)
        job = await pipeline.submit(PROCESSOR_NAME, nodes, options=options)
        try:
            async for snapshot in pipeline.watch(job.id, interval=config.watch_interval):
                if on_progress is not None:
                    on_progress(snapshot)
            final = await pipeline.wait(job.id)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # an interrupted demo leaves no job behind
                await pipeline.cancel(job.id)
            raise
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
