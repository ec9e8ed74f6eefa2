"""``bulkpipe submit``: create a job from a JSON Lines or CSV file, or from an item source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..errors import InvalidArgument
from ..jobs import check_idempotency_key
from ..models import Job
from ..options import PRIORITY_MAX, PRIORITY_MIN
from ..pipeline import Pipeline
from ..processors import ProcessorRegistry
from ..submit_lease import MAX_SUBMIT_LEASE, MIN_SUBMIT_LEASE
from .inputs import FORMATS, parse_params, read_items
from .jobs import launch, wait_options
from .params import (
    FiniteFloat,
    allow_unserved_option,
    job_option_flags,
    job_options,
    json_option,
    store_option,
    store_url,
)
from .runtime import load_source


def _idempotency_key(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--idempotency-key``, checked as ``Pipeline.submit`` checks it."""
    try:
        return check_idempotency_key(value)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.argument("processor")
@click.argument("file", required=False, metavar="[FILE|-]")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Format of FILE [default: by extension: .jsonl/.ndjson or .csv; stdin: jsonl].",
)
@click.option(
    "--source",
    metavar="NAME",
    help="Take the items from an installed item source ('bulkpipe.sources' entry point).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A parameter of --source (repeatable); a VALUE that is JSON is decoded.",
)
@job_option_flags
@click.option(
    "--priority",
    type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX),
    default=0,
    show_default=True,
    help=f"Higher runs first; from {PRIORITY_MIN} to {PRIORITY_MAX}.",
)
@click.option("--owner", help="An owner or tenant tag to keep on the job.")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    callback=_idempotency_key,
    help="Submit at most once per KEY and owner: a repeat prints the job the first created "
    "and stores nothing (up to 200 characters).",
)
@click.option(
    "--submit-lease",
    type=FiniteFloat(MIN_SUBMIT_LEASE, MAX_SUBMIT_LEASE),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Should this command die mid-submit, the job is sealed this long after its last "
    "renewal, and ends failed (SubmitAbandoned) once the items stored have run.",
)
@allow_unserved_option
@wait_options
@json_option
@store_option
@click.pass_context
def submit(
    ctx: click.Context,
    /,
    processor: str,
    file: str | None,
    fmt: str | None,
    source: str | None,
    params: tuple[str, ...],
    priority: int,
    owner: str | None,
    idempotency_key: str | None,
    submit_lease: float,
    allow_unserved: bool,
    wait: bool,
    workers: int,
    as_json: bool,
    store: str | None,
    **flags: Any,
) -> None:
    """Submit a job over the items of a file or a source.

    The job runs PROCESSOR over the items of FILE (- for stdin). As soon as the job exists,
    "job ID created" is printed on stderr (watch or cancel it from another shell while its
    items are still read); its id is printed on stdout once every item is in. FILE is JSON
    Lines (one JSON object per line) or CSV (a header line, then one item per
    row; cells that are JSON numbers become numbers, the id column stays text). Each item
    needs a unique id under --id-key. Or take the items from --source NAME with --param
    KEY=VALUE.

    Without --wait the job waits in the store until a 'bulkpipe worker' (on this or another
    machine) runs it. A PROCESSOR that is neither installed here nor served by a live worker
    (see 'bulkpipe workers') is an error (exit 2), unless --allow-unserved. With --wait this
    process runs it with in-process workers (which also help with other pending jobs of the
    store meanwhile), shows its progress, and exits 0 if it completed, 1 if it failed or was
    cancelled.
    """
    if (file is None) == (source is None):
        raise click.UsageError("give a FILE (or - for stdin), or --source NAME", ctx)
    if params and source is None:
        raise click.UsageError("--param goes with --source", ctx)
    if fmt is not None and file is None:
        raise click.UsageError("--format goes with FILE", ctx)
    options = job_options(flags)
    source_params = parse_params(params) if source is not None else None
    sources = {source: load_source(source)} if source is not None else None
    items = read_items(file, fmt, id_key=options.id_key) if file is not None else None

    async def start(pipeline: Pipeline, created: Callable[[Job], None]) -> Job:
        return await pipeline.submit(
            processor,
            items,
            source=source,
            params=source_params,
            options=options,
            priority=priority,
            owner=owner,
            idempotency_key=idempotency_key,
            allow_unserved=allow_unserved,
            on_created=created,
        )

    try:
        if allow_unserved and not wait and not ProcessorRegistry().knows(processor):
            click.echo(
                f"bulkpipe: warning: no processor {processor!r} is installed here; the job "
                "waits for a worker that has one (see 'bulkpipe workers')",
                err=True,
            )
        launch(
            ctx,
            store_url(ctx, store),
            start,
            wait=wait,
            workers=workers,
            as_json=as_json,
            sources=sources,
            submit_lease=submit_lease,
        )
    finally:
        if items is not None:
            items.close()
