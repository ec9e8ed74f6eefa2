"""The ``bulkpipe`` command group, and the one place where errors become exit codes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from .db import db
from .demo import demo
from .errors import EXIT_OK, CliError, CliInterrupted, Interrupted, describe
from .housekeeping import delete, prune
from .jobs import cancel, list_jobs, results, retry, status, watch
from .params import DEFAULT_STORE, STORE_ENV
from .plugins import processors
from .serve import serve
from .submit import submit
from .worker import worker
from .workers import workers


def _usage(exc: click.UsageError) -> click.ClickException:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # shows the help
    where = exc.ctx.command_path if exc.ctx is not None else "bulkpipe"
    return CliError(f"{exc.format_message().rstrip('.')} (see '{where} --help')")


class BulkpipeGroup(click.Group):
    """A click group that shows a user's mistake as one line and exits 2, never a traceback.

    Usage errors, :class:`bulkpipe.BulkpipeError`, pydantic validation errors and file errors
    are user errors; anything else is a bug and keeps its traceback.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse the group's own options, as one-line usage errors."""
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning user errors into :class:`CliError`."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage(exc) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (Interrupted, KeyboardInterrupt):
            raise CliInterrupted("interrupted") from None
        except Exception as exc:
            message = describe(exc)
            if message is None:
                raise
            raise CliError(message) from None


@click.group(
    cls=BulkpipeGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Exit status: 0 success; 1 the job failed or was cancelled (submit --wait, retry "
        "--wait, watch, demo); 2 a usage or input error (bad option or file, unknown job, "
        "unreachable store); 130 interrupted. Progress goes to stderr (only on a terminal), "
        "data to stdout."
    ),
)
@click.option(
    "--store",
    metavar="URL",
    envvar=STORE_ENV,
    show_envvar=True,
    help=f"Job store URL: memory://, sqlite:///file.db, postgresql://... "
    f"[default: {DEFAULT_STORE}]",
)
@click.version_option(package_name="bulkpipe", prog_name="bulkpipe")
def cli(store: str | None) -> None:
    """Run, watch, cancel and retry bulk jobs; serve them with workers or over HTTP."""


for command in (
    demo,
    submit,
    worker,
    workers,
    status,
    watch,
    list_jobs,
    cancel,
    retry,
    delete,
    prune,
    results,
    processors,
    db,
    serve,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="bulkpipe")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        print(exc.code, file=sys.stderr)
        return 1
    return EXIT_OK
