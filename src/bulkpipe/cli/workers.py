"""``bulkpipe workers``: the live workers of the store, as a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import click
from rich.table import Table
from rich.text import Text

from ..models import WorkerInfo
from .params import json_option, store_option, store_url
from .render import print_table
from .runtime import connect, run


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def workers_table(workers: Sequence[WorkerInfo]) -> Table:
    """One row per worker, oldest first as given."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("WORKER", no_wrap=True)
    table.add_column("HOST")
    table.add_column("PID", justify="right")
    table.add_column("PROCESSORS")
    table.add_column("STARTED")
    table.add_column("LAST SEEN")
    table.add_column("IN FLIGHT", justify="right")
    for worker in workers:
        table.add_row(
            worker.id,
            Text(worker.host),
            str(worker.pid),
            Text(", ".join(worker.processors) or "-"),
            _when(worker.started_at),
            _when(worker.last_seen),
            f"{worker.in_flight:,}",
        )
    return table


@click.command()
@json_option
@store_option
@click.pass_context
def workers(ctx: click.Context, as_json: bool, store: str | None) -> None:
    """List the live workers of the store, oldest first.

    Every worker ('bulkpipe worker', 'bulkpipe serve' and the in-process workers of 'submit
    --wait') registers while it serves, with the processors it serves and the items it has in
    flight, and refreshes that about every second; one that stops is removed, and one that
    was killed drops out within a few seconds.
    """
    url = store_url(ctx, store)

    async def read() -> list[WorkerInfo]:
        async with connect(url) as pipeline:
            return await pipeline.workers()

    found = run(read)
    if as_json:
        click.echo(json.dumps([w.model_dump(mode="json") for w in found], indent=2))
    elif found:
        print_table(workers_table(found))
    else:
        click.echo("no live workers", err=True)
