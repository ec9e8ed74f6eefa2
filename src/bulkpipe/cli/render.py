"""What the command line shows: a live progress bar (stderr), job tables, JSON, result rows.

Data goes to stdout (ids, tables, JSON, results); progress and messages go to stderr.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..models import ItemOutcome, ItemStatus, Job, JobStatus

_STYLES: Final = {
    JobStatus.PENDING: "dim",
    JobStatus.PROCESSING: "cyan",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "yellow",
}
_SHOWN_ERRORS: Final = 5
_PIPE_WIDTH: Final = 250
RESULT_COLUMNS: Final = (
    "item_id",
    "status",
    "attempts",
    "result",
    "error",
    "error_type",
    "started_at",
    "finished_at",
)


def print_table(table: Table) -> None:
    """Print ``table`` on stdout; when stdout is not a terminal, without wrapping rows and
    without the padding at the ends of lines."""
    if _isatty(sys.stdout):
        Console(file=sys.stdout, highlight=False).print(table)
        return
    console = Console(file=sys.stdout, highlight=False, width=_PIPE_WIDTH, color_system=None)
    with console.capture() as captured:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


class RateColumn(ProgressColumn):
    """Items per second: recent while the job runs, the job's own once it has ended."""

    def render(self, task: Task) -> Text:
        """The rate of ``task``."""
        speed = task.fields.get("rate") or task.speed
        return Text("-- items/s" if speed is None else f"{speed:,.0f} items/s", style="blue")


class FailedColumn(ProgressColumn):
    """How many items have failed, in red once there are any."""

    def render(self, task: Task) -> Text:
        """The failures of ``task``."""
        failed = int(task.fields.get("failed", 0))
        return Text(f"{failed:,} failed", style="red" if failed else "dim")


class JobProgress:
    """A live progress bar of one job on stderr: count, percent, rate, ETA and failures.

    Off (shows nothing) when the stream is not a terminal, unless ``enabled`` says otherwise.
    Use it as a context manager and feed it ``Pipeline.watch`` snapshots.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        auto_refresh: bool = True,
    ) -> None:
        stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(stream) if enabled is None else enabled
        self._task: TaskID | None = None
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                RateColumn(),
                TimeRemainingColumn(compact=True, elapsed_when_finished=True),
                FailedColumn(),
                console=Console(file=stream, force_terminal=True),
                auto_refresh=auto_refresh,
                refresh_per_second=8,
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, job: Job) -> None:
        """Show ``job`` (a snapshot)."""
        if self._progress is None:
            return
        total = job.total_items if job.sealed or job.status.is_terminal else None
        if self._task is None:
            self._task = self._progress.add_task(f"{job.type} {job.id[:8]}", total=total)
        self._progress.update(
            self._task,
            completed=job.processed_items,
            total=total,
            failed=job.failed_items,
            rate=job.result.items_per_second if job.result is not None else None,
        )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def status_text(status: JobStatus) -> Text:
    """``status`` in its colour."""
    return Text(status.value, style=_STYLES[status])


def submitting(job: Job) -> str | None:
    """``submitting, N items stored`` while the job's items are still being submitted."""
    if job.sealed or job.status.is_terminal:
        return None
    return f"submitting, {job.total_items:,} items stored"


def summary_line(job: Job) -> str:
    """One line about ``job``: its counts, and duration and rate once it has ended."""
    head = f"job {job.id} {job.status.value}"
    summary = job.result
    if summary is None:
        fed = submitting(job)
        return (
            f"{head}: {fed + ', ' if fed else ''}{job.processed_items:,}/{job.total_items:,} "
            f"items ({job.progress:.1f}%), {job.failed_items:,} failed"
        )
    text = (
        f"{head}: {summary.total:,} items, {summary.succeeded:,} succeeded, "
        f"{summary.failed:,} failed"
    )
    if summary.rejected:
        text += f", {summary.rejected:,} rejected"
    return text + f" in {summary.duration:.2f} s ({summary.items_per_second:,.0f} items/s)"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def job_table(job: Job) -> Table:
    """Every field of ``job`` that a person asks about, as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("job", job.id),
        ("processor", job.type),
        ("status", status_text(job.status)),
        ("progress", f"{job.progress:.1f}% ({job.processed_items:,}/{job.total_items:,} items)"),
        (
            "items",
            submitting(job) or f"{job.total_items:,}" + ("" if job.sealed else " (cut short)"),
        ),
        ("succeeded", f"{job.succeeded_items:,}"),
        ("failed", f"{job.failed_items:,}"),
        ("rejected", f"{job.rejected_items:,}"),
        ("priority", str(job.priority)),
    ]
    if job.owner is not None:
        rows.append(("owner", job.owner))
    if job.source is not None:
        rows.append(("source", f"{job.source} {json.dumps(job.params or {})}"))
    if job.retry_of is not None:
        rows.append(("retry of", job.retry_of))
    rows += [("created", _when(job.created_at)), ("started", _when(job.started_at))]
    rows.append(("ended", _when(job.completed_at)))
    if job.result is not None:
        rows.append(("duration", f"{job.result.duration:.2f} s"))
        rows.append(("throughput", f"{job.result.items_per_second:,.1f} items/s"))
        rows.append(("success rate", f"{job.result.success_rate:.2f}%"))
    options = job.options.model_dump(exclude_defaults=True)
    rows.append(("options", ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"))
    for label, value in rows:
        grid.add_row(label, value if isinstance(value, Text) else Text(value))
    if job.error_count:
        grid.add_row("errors", Text(f"{job.error_count:,}", style="red"))
        for error in job.errors[:_SHOWN_ERRORS]:
            where = f"item {error.item_id}" if error.item_id is not None else "job"
            grid.add_row("", Text(f"{where}: {error.error_type}: {error.error}"))
        if job.error_count > _SHOWN_ERRORS:
            more = job.error_count - _SHOWN_ERRORS
            grid.add_row("", Text(f"... {more:,} more (bulkpipe results {job.id} --failed)"))
    return grid


def jobs_table(jobs: Sequence[Job]) -> Table:
    """One row per job, newest first as given."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("JOB", no_wrap=True)
    table.add_column("PROCESSOR")
    table.add_column("STATUS")
    for column in ("PROGRESS", "ITEMS", "FAILED"):
        table.add_column(column, justify="right")
    table.add_column("OWNER")
    table.add_column("CREATED")
    for job in jobs:
        table.add_row(
            job.id,
            Text(job.type),
            status_text(job.status),
            f"{job.progress:.1f}%",
            submitting(job) or f"{job.total_items:,}",
            f"{job.failed_items:,}",
            Text(job.owner or "-"),
            _when(job.created_at),
        )
    return table


def dump_jobs(jobs: Sequence[Job]) -> str:
    """``jobs`` as a JSON array."""
    return json.dumps([job.model_dump(mode="json") for job in jobs], indent=2)


def outcome_writer(fmt: str, out: TextIO) -> Callable[[ItemOutcome], None]:
    """A function that writes one outcome to ``out`` as a JSON line or a CSV row.

    CSV writes its header at once; its ``result`` column holds the result as JSON text.
    """
    if fmt == "jsonl":

        def write_line(outcome: ItemOutcome) -> None:
            out.write(outcome.model_dump_json())
            out.write("\n")

        return write_line
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)

    def write_row(outcome: ItemOutcome) -> None:
        writer.writerow(_csv_row(outcome))

    return write_row


def _csv_row(outcome: ItemOutcome) -> list[Any]:
    ok = outcome.status is ItemStatus.SUCCEEDED
    return [
        outcome.item_id,
        outcome.status.value,
        outcome.attempts,
        json.dumps(outcome.result, ensure_ascii=False, separators=(",", ":")) if ok else "",
        outcome.error or "",
        outcome.error_type or "",
        outcome.started_at.isoformat(),
        outcome.finished_at.isoformat(),
    ]
