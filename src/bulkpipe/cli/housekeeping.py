"""``bulkpipe delete`` and ``bulkpipe prune``, and the duration type they and ``worker
--retention`` take (``30s``, ``15m``, ``12h``, ``7d``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import click

from ..housekeeping import TERMINAL
from .params import store_option, store_url
from .runtime import connect, run

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h`` or ``7d`` as a positive :class:`timedelta`."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit: 30s, 15m, 12h or 7d"
        )
    amount = float(match.group(1))
    if amount <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    try:
        return timedelta(**{_UNITS[match.group(2)]: amount})
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


class Duration(click.ParamType[timedelta]):
    """A positive duration: a number and a unit, s, m, h or d (``7d``)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``value`` (a timedelta passes through)."""
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


@click.command()
@click.argument("job_id", metavar="JOB")
@store_option
@click.pass_context
def delete(ctx: click.Context, job_id: str, store: str | None) -> None:
    """Delete a job that has ended, with its items and outcomes.

    A job that is still pending or processing is refused: cancel it first. Rows go in chunks;
    if the command is interrupted, the job is left (ended, with part of its rows) and running
    the command again finishes the delete.
    """
    url = store_url(ctx, store)

    async def go() -> None:
        async with connect(url) as pipeline:
            await pipeline.delete(job_id)

    run(go)
    click.echo(f"deleted job {job_id}")


@click.command()
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Delete the jobs that ended longer ago than this: 30s, 15m, 12h, 7d.",
)
@click.option(
    "--status",
    "statuses",
    type=click.Choice([s.value for s in TERMINAL]),
    multiple=True,
    help="Only jobs that ended with this status; repeat for several [default: all three].",
)
@store_option
@click.pass_context
def prune(
    ctx: click.Context, older_than: timedelta, statuses: tuple[str, ...], store: str | None
) -> None:
    """Delete old jobs that have ended.

    Deletes every completed, failed or cancelled job (or only those of --status) that ended
    more than --older-than ago, with its items and outcomes, and prints how many. Running jobs
    are never touched. Workers can do this on their own with 'bulkpipe worker --retention'.
    """
    url = store_url(ctx, store)

    async def go() -> int:
        async with connect(url) as pipeline:
            return await pipeline.prune(older_than=older_than, statuses=statuses or TERMINAL)

    count = run(go)
    click.echo(f"deleted {count} job{'s' if count != 1 else ''} that ended over {older_than} ago")
