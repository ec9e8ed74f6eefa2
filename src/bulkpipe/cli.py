"""The ``bulkpipe`` command line. Thin: parsing and exit codes here, the work in the library.

``bulkpipe demo`` runs :func:`bulkpipe.demo.run.run_demo`. Exit status: 0 when the job
completed, 1 when it did not (or bulkpipe failed), 2 for usage errors, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TypeVar

import anyio

__all__ = ["build_parser", "main"]

_T = TypeVar("_T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_status(exc.code)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return handler(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bulkpipe`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="bulkpipe",
        description="Bulk item processing with bounded concurrency, retries and progress.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_demo(commands)
    return parser


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="score synthetic taxonomy nodes with a simulated flaky upstream",
        description=(
            "Run a full_analysis job (opportunity score + revenue projection) over synthetic "
            "taxonomy nodes in an in-memory pipeline, then print a summary and the top 10 "
            "opportunities. Progress goes to stderr, the summary to stdout."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = demo.add_argument
    add("--nodes", type=_positive_int, default=3000, help="how many nodes to process")
    add("--latency", type=_non_negative_float, default=0.02, help="seconds per upstream call")
    add("--failure-rate", type=_probability, default=0.05, help="chance an upstream call fails")
    add("--seed", type=int, default=42, help="seed of the nodes and of the failure draws")
    add("--batch-size", type=_positive_int, default=100, help="items per batch")
    add("--concurrency", type=_positive_int, default=5, help="batches in flight")
    add("--retry-delay", type=_non_negative_float, default=0.05, help="base backoff in seconds")
    demo.set_defaults(handler=_run_demo_command)


def _run_demo_command(args: argparse.Namespace) -> int:
    from bulkpipe.demo.run import DemoConfig, ProgressBar, format_summary, job_options, run_demo
    from bulkpipe.errors import BulkpipeError

    config = DemoConfig(
        nodes=args.nodes,
        latency=args.latency,
        failure_rate=args.failure_rate,
        seed=args.seed,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        retry_delay=args.retry_delay,
    )
    try:
        job_options(config)
    except ValueError as exc:
        return _fail(f"invalid job options: {exc}", EXIT_USAGE)
    progress = ProgressBar(sys.stderr)
    try:
        report = anyio.run(functools.partial(run_demo, config, on_progress=progress.update))
    except KeyboardInterrupt:
        progress.close()
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BulkpipeError as exc:
        progress.close()
        return _fail(str(exc), EXIT_FAILED)
    sys.stdout.write(format_summary(report))
    return EXIT_OK if report.completed else EXIT_FAILED


def _fail(message: str, status: int) -> int:
    print(f"bulkpipe: error: {message}", file=sys.stderr)
    return status


def _exit_status(code: str | int | None) -> int:
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def _version() -> str:
    try:
        return metadata.version("bulkpipe")
    except metadata.PackageNotFoundError:
        return "unknown"


def _positive_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = _parse(float, text, "a number")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _parse(convert: Callable[[str], _T], text: str, what: str) -> _T:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
