"""``bulkpipe db upgrade``: create or migrate the store's schema."""

from __future__ import annotations

import inspect
import json

import anyio
import click

from ..store import JobStore
from .errors import redact
from .params import json_option, store_option, store_url
from .runtime import open_cli_store, run


@click.group()
def db() -> None:
    """The store's database schema."""


async def schema_version(store: JobStore) -> int | None:
    """The schema version of an open store, if it has one (an attribute or a method)."""
    value = getattr(store, "schema_version", None)
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value if isinstance(value, int) else None


@db.command()
@json_option
@store_option
@click.pass_context
def upgrade(ctx: click.Context, as_json: bool, store: str | None) -> None:
    """Create or migrate the store's schema.

    Creates the store's tables, or migrates them to this version of bulkpipe. Opening a store
    does this too; run it once before starting workers on a new database.
    """
    url = store_url(ctx, store)

    async def go() -> int | None:
        opened = open_cli_store(url)
        await opened.open()
        try:
            return await schema_version(opened)
        finally:
            with anyio.CancelScope(shield=True):
                await opened.close()

    version = run(go)
    if as_json:
        click.echo(json.dumps({"store": redact(url), "schema_version": version}))
    elif version is None:
        click.echo(f"store {redact(url)} is ready (it has no schema version)")
    else:
        click.echo(f"store {redact(url)} is ready: schema version {version}")
