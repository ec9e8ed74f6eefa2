"""``bulkpipe processors``: what is installed here (processors and item sources)."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click
from rich.table import Table

from ..processors import ENTRY_POINT_GROUP
from .params import json_option
from .render import print_table
from .runtime import SOURCE_GROUP, installed_sources


def _describe(ep: EntryPoint) -> dict[str, Any]:
    return {"name": ep.name, "target": ep.value, "package": ep.dist.name if ep.dist else None}


@click.command()
@json_option
def processors(as_json: bool) -> None:
    """List the installed processors and item sources.

    Processors ('bulkpipe.processors' entry points) are what 'bulkpipe worker' can run here;
    item sources ('bulkpipe.sources') are what 'bulkpipe submit --source' can read.
    """
    found = {
        "processors": [
            _describe(ep)
            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        ],
        "sources": [_describe(ep) for ep in installed_sources()],
    }
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for kind, group in (("processors", ENTRY_POINT_GROUP), ("sources", SOURCE_GROUP)):
        if not found[kind]:
            click.echo(f"no {kind} installed (entry point group {group!r})")
            continue
        table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
        table.title = f"{kind} ({group})"
        for column in ("NAME", "TARGET", "PACKAGE"):
            table.add_column(column)
        for row in found[kind]:
            table.add_row(row["name"], row["target"], row["package"] or "-")
        print_table(table)
