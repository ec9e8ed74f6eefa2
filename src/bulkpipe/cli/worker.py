"""``bulkpipe worker``: serve the store's jobs with the installed processors until stopped."""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import timedelta

import anyio
import click

from ..housekeeping import run_retention
from ..processors import ProcessorRegistry
from ..worker import STOP_SIGNALS, Worker
from .errors import redact
from .housekeeping import DURATION
from .params import POSITIVE, store_option, store_url
from .runtime import open_cli_store

_LOG_LEVELS = ("debug", "info", "warning", "error")

#: The exit status of ``bulkpipe worker --exit-on-limit`` when --max-items or --max-memory was
#: reached (EX_TEMPFAIL): the worker stopped cleanly and wants to be started again.
EXIT_LIMIT = 75


async def serve_with_retention(served: Worker, url: str, retention: timedelta | None) -> None:
    """Run ``served`` until it stops and, with ``retention``, prune old jobs beside it (on a
    store object of its own, so its deletes never queue behind the worker's calls)."""
    if retention is None:
        await served.run(handle_signals=True)
        return
    pruner = open_cli_store(url)
    await pruner.open()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_retention, pruner, retention, served.worker_id)
            await served.run(handle_signals=True)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await pruner.close()


@click.command()
@click.option(
    "--lease-timeout",
    type=POSITIVE,
    default=30.0,
    show_default=True,
    help="Seconds a claimed batch stays leased without a heartbeat; after that, another "
    "worker takes it over.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Most items this worker runs at once, over all jobs [default: no limit].",
)
@click.option(
    "--poll-interval",
    type=POSITIVE,
    default=0.5,
    show_default=True,
    help="Seconds between looks for new work when idle.",
)
@click.option(
    "--max-items",
    type=click.IntRange(min=1),
    default=None,
    help="Recycle after claiming this many items (counted per batch): claim nothing more, "
    "finish the open batches, then start serving afresh [default: never].",
)
@click.option(
    "--max-memory",
    type=click.IntRange(min=1),
    default=None,
    metavar="MB",
    help="Recycle once the process's resident memory reaches MB megabytes (checked every "
    "heartbeat): finish the open batches, then re-execute the process [default: never].",
)
@click.option(
    "--exit-on-limit",
    is_flag=True,
    help=f"When --max-items or --max-memory is reached, exit with status {EXIT_LIMIT} "
    "(after finishing the open batches) instead of restarting, for a supervisor to restart.",
)
@click.option(
    "--give-up-after",
    type=POSITIVE,
    default=None,
    metavar="SECONDS",
    help="Exit (status 2, one line on stderr) once the store has not answered for this long "
    "[default: never; the worker waits for the store and goes on when it is back].",
)
@click.option(
    "--retention",
    type=DURATION,
    default=None,
    help="Delete jobs that ended longer ago than this (30s, 15m, 12h, 7d), checking every "
    "tenth of it (at most hourly); one worker of the store at a time does it [default: keep "
    "every job].",
)
@click.option("--log-level", type=click.Choice(_LOG_LEVELS), default="info", show_default=True)
@store_option
@click.pass_context
def worker(
    ctx: click.Context,
    lease_timeout: float,
    max_in_flight: int | None,
    poll_interval: float,
    max_items: int | None,
    max_memory: int | None,
    exit_on_limit: bool,
    give_up_after: float | None,
    retention: timedelta | None,
    log_level: str,
    store: str | None,
) -> None:
    """Run the store's jobs until stopped.

    Serves every job of the store whose processor is installed here, until SIGTERM or Ctrl-C.
    On the first signal the worker claims nothing more, finishes or hands back its batches
    and exits 0; a second signal stops it at once (its leases then expire and other workers
    take its batches over). Any number of workers, on this machine or others, may serve one
    store; each runs up to a job's --concurrency batches of it.

    With --max-items or --max-memory the worker recycles itself when the limit is reached: it
    claims nothing more, finishes its open batches and records them, then serves afresh (a new
    worker and processors; for --max-memory the process re-executes itself, same command and
    pid). With --exit-on-limit it exits with status 75 instead, for a supervisor to restart.

    With --retention the worker also deletes the jobs that ended longer ago than that, with
    their items and outcomes; workers take turns through a lock in the store.
    """
    url = store_url(ctx, store)
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    names = ProcessorRegistry().installed()
    if not names:
        click.echo("bulkpipe: warning: no processors are installed; nothing can run", err=True)
    while True:
        served = Worker(
            open_cli_store(url),
            lease_timeout=lease_timeout,
            max_in_flight=max_in_flight,
            poll_interval=poll_interval,
            max_items=max_items,
            max_memory=max_memory * 2**20 if max_memory is not None else None,
            give_up_after=give_up_after,
        )
        click.echo(
            f"bulkpipe worker {served.worker_id}: serving {redact(url)} with processors "
            f"{', '.join(names) or '(none)'}; stop with Ctrl-C or SIGTERM",
            err=True,
        )
        anyio.run(serve_with_retention, served, url, retention)
        limit = served.limit_reached
        if limit is None or served.stop_requested:
            break
        flag = "--max-items" if limit == "max_items" else "--max-memory"
        if exit_on_limit:
            click.echo(
                f"bulkpipe worker {served.worker_id}: {flag} reached; exiting with status "
                f"{EXIT_LIMIT} (--exit-on-limit)",
                err=True,
            )
            ctx.exit(EXIT_LIMIT)
        if limit == "max_memory":
            click.echo(
                f"bulkpipe worker {served.worker_id}: {flag} reached; re-executing", err=True
            )
            sys.stdout.flush()
            sys.stderr.flush()
            # A stop signal that arrives while the new program starts must not kill it before
            # it can stop gracefully: the mask survives exec, and the new worker unblocks the
            # signals once it handles them (a pending one is delivered then).
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            os.execv(sys.executable, sys.orig_argv)
        click.echo(f"bulkpipe worker {served.worker_id}: {flag} reached; serving afresh", err=True)
    click.echo(f"bulkpipe worker {served.worker_id}: stopped", err=True)
