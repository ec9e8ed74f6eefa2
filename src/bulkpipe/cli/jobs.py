"""Commands on jobs in the store: status, watch, list, cancel, retry, results."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping

import click

from ..models import Job, JobStatus
from ..pipeline import Pipeline, Source
from .errors import EXIT_JOB_FAILED, EXIT_OK, CliInterrupted, Interrupted
from .params import POSITIVE, allow_unserved_option, json_option, store_option, store_url
from .render import (
    JobProgress,
    dump_jobs,
    job_table,
    jobs_table,
    outcome_writer,
    print_table,
    summary_line,
)
from .runtime import connect, run

#: Seconds between snapshots while a progress bar follows a job.
FOLLOW_INTERVAL = 0.25

JOB = click.argument("job_id", metavar="JOB")

#: The largest ``list --limit`` and ``--offset`` (as over HTTP): a store's driver may refuse
#: a larger integer (SQLite: 64 bits).
MAX_OFFSET = 2**31 - 1


def job_exit(job: Job) -> int:
    """0 when the job completed; 1 when it failed or was cancelled."""
    return EXIT_OK if job.status is JobStatus.COMPLETED else EXIT_JOB_FAILED


async def follow(
    pipeline: Pipeline, job_id: str, *, interval: float, json_lines: bool = False
) -> Job:
    """Show the job's progress on stderr until it ends; return its terminal snapshot."""
    final: Job | None = None
    with JobProgress() as bar:
        async for snapshot in pipeline.watch(job_id, interval=interval):
            bar.update(snapshot)
            if json_lines:
                click.echo(snapshot.model_dump_json())
            final = snapshot
    assert final is not None
    return final


def launch(
    ctx: click.Context,
    url: str,
    start: Callable[[Pipeline, Callable[[Job], None]], Awaitable[Job]],
    *,
    wait: bool,
    workers: int,
    as_json: bool,
    sources: Mapping[str, Source] | None = None,
    submit_lease: float = 30.0,
) -> None:
    """Create a job with ``start`` and print its id (or JSON); with ``wait``, run ``workers``
    in-process workers, follow the job to its end and exit 0 (completed) or 1. ``start`` calls
    the function it is given with the job as soon as it exists: ``job <id> created`` is
    printed on stderr then, while its items may still be read."""
    started: list[str] = []
    created: list[str] = []

    def on_created(job: Job) -> None:
        created.append(job.id)
        click.echo(f"job {job.id} created", err=True)

    if not wait and url.lower().startswith("memory:"):
        click.echo(
            "bulkpipe: warning: a memory:// store lasts only for this command, so no worker "
            "will ever run this job; use --wait or a SQLite or PostgreSQL store",
            err=True,
        )

    async def go() -> Job:
        async with connect(
            url, workers=workers if wait else 0, sources=sources, submit_lease=submit_lease
        ) as pipeline:
            job = await start(pipeline, on_created)
            started.append(job.id)
            if not as_json:
                click.echo(job.id)
            if not wait:
                return job
            return await follow(pipeline, job.id, interval=FOLLOW_INTERVAL)

    try:
        job = run(go)
    except Interrupted:
        if created and not started:
            raise CliInterrupted(
                f"interrupted while submitting; job {created[0]} was marked failed "
                f"(SubmitCancelled) with the items stored so far ('bulkpipe status {created[0]}')"
            ) from None
        if not started:
            raise CliInterrupted(
                "interrupted while submitting; a partly submitted job may be left behind "
                "(see 'bulkpipe list' and 'bulkpipe cancel')"
            ) from None
        raise CliInterrupted(
            f"interrupted; job {started[0]} goes on when a worker serves it "
            f"('bulkpipe watch {started[0]}', 'bulkpipe cancel {started[0]}')"
        ) from None
    if as_json:
        click.echo(job.model_dump_json(indent=2))
    if wait:
        if not as_json:
            click.echo(summary_line(job), err=True)
        ctx.exit(job_exit(job))


def wait_options(fn: Callable[..., None]) -> Callable[..., None]:
    """``--wait`` and ``--workers N``."""
    fn = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="In-process workers that run jobs while --wait waits.",
    )(fn)
    return click.option(
        "--wait",
        is_flag=True,
        help="Run the job here (with --workers in-process workers), show its progress and "
        "exit 0 if it completed, 1 if it failed or was cancelled. Without --wait the job "
        "waits in the store for 'bulkpipe worker'.",
    )(fn)


@click.command()
@JOB
@json_option
@store_option
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool, store: str | None) -> None:
    """Show a job.

    JOB's status, counts, timings, options and first errors.
    """
    url = store_url(ctx, store)

    async def read() -> Job:
        async with connect(url) as pipeline:
            return await pipeline.get(job_id)

    job = run(read)
    if as_json:
        click.echo(job.model_dump_json(indent=2))
    else:
        print_table(job_table(job))


@click.command()
@JOB
@click.option(
    "--interval",
    type=POSITIVE,
    default=0.5,
    show_default=True,
    help="Seconds between snapshots.",
)
@json_option
@store_option
@click.pass_context
def watch(
    ctx: click.Context, job_id: str, interval: float, as_json: bool, store: str | None
) -> None:
    """Follow a job until it ends.

    Shows a live progress bar of JOB on stderr (on a terminal), then prints its summary. Exits 0
    if the job completed, 1 if it failed or was cancelled. With --json, prints a
    snapshot of the job as one JSON line at least every --interval seconds, and the last.
    """
    url = store_url(ctx, store)

    async def go() -> Job:
        async with connect(url) as pipeline:
            return await follow(pipeline, job_id, interval=interval, json_lines=as_json)

    try:
        job = run(go)
    except Interrupted:
        raise CliInterrupted(f"stopped watching job {job_id}; it goes on") from None
    if not as_json:
        click.echo(summary_line(job))
    ctx.exit(job_exit(job))


@click.command("list")
@click.option(
    "--status",
    "status_",
    type=click.Choice([s.value for s in JobStatus]),
    help="Only jobs with this status.",
)
@click.option("--owner", help="Only jobs with this owner tag.")
@click.option("--limit", type=click.IntRange(1, MAX_OFFSET), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0, MAX_OFFSET), default=0, show_default=True)
@json_option
@store_option
@click.pass_context
def list_jobs(
    ctx: click.Context,
    status_: str | None,
    owner: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    store: str | None,
) -> None:
    """List jobs, newest first."""
    url = store_url(ctx, store)

    async def read() -> list[Job]:
        async with connect(url) as pipeline:
            return await pipeline.list_jobs(status=status_, owner=owner, limit=limit, offset=offset)

    jobs = run(read)
    if as_json:
        click.echo(dump_jobs(jobs))
    elif jobs:
        print_table(jobs_table(jobs))
    else:
        click.echo("no jobs", err=True)


@click.command()
@JOB
@json_option
@store_option
@click.pass_context
def cancel(ctx: click.Context, job_id: str, as_json: bool, store: str | None) -> None:
    """Cancel a job.

    None of JOB's items start any more and running ones stop; outcomes already recorded are
    kept. Workers in other processes notice at their next heartbeat (within about a second).
    """
    url = store_url(ctx, store)

    async def go() -> Job:
        async with connect(url) as pipeline:
            return await pipeline.cancel(job_id)

    job = run(go)
    if as_json:
        click.echo(job.model_dump_json(indent=2))
    else:
        click.echo(
            f"cancelled job {job.id} ({job.processed_items:,} of {job.total_items:,} items "
            "had finished)"
        )


@click.command()
@JOB
@click.option(
    "--include-unfinished",
    is_flag=True,
    help="Also run the items that never got an outcome (those a cancel or an abandoned "
    "submit left).",
)
@allow_unserved_option
@wait_options
@json_option
@store_option
@click.pass_context
def retry(
    ctx: click.Context,
    job_id: str,
    include_unfinished: bool,
    allow_unserved: bool,
    wait: bool,
    workers: int,
    as_json: bool,
    store: str | None,
) -> None:
    """Retry the failed items of a job, as a new job.

    The new job runs exactly the items of JOB that failed (with --include-unfinished, also
    those that never ran), with the same processor, options and priority; its id is printed.
    JOB must have ended. As for 'submit', a processor that nothing serves is an error unless
    --allow-unserved.
    """

    async def start(pipeline: Pipeline, _created: Callable[[Job], None]) -> Job:
        return await pipeline.retry_failed(
            job_id, include_unfinished=include_unfinished, allow_unserved=allow_unserved
        )

    launch(ctx, store_url(ctx, store), start, wait=wait, workers=workers, as_json=as_json)


@click.command()
@JOB
@click.option("--failed", "only", flag_value="failed", help="Only the items that failed.")
@click.option("--succeeded", "only", flag_value="succeeded", help="Only the items that succeeded.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="JSON Lines (one outcome per line) or CSV (result as JSON text). [default: jsonl]",
)
@json_option
@store_option
@click.pass_context
def results(
    ctx: click.Context,
    job_id: str,
    only: str | None,
    fmt: str | None,
    as_json: bool,
    store: str | None,
) -> None:
    """Export the item outcomes of a job.

    Writes the final outcome of every item of JOB to stdout, streamed in recording order.
    """
    if as_json and fmt == "csv":
        raise click.UsageError("--json and --format csv do not go together", ctx)
    url = store_url(ctx, store)
    chosen = fmt or "jsonl"

    async def go() -> None:
        async with connect(url) as pipeline:
            await pipeline.get(job_id)  # an unknown job fails before a CSV header is written
            write = outcome_writer(chosen, sys.stdout)
            async for outcome in pipeline.outcomes(job_id, status=only):
                write(outcome)

    run(go)
