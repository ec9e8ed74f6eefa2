"""Exit codes, and turning a user's mistake into one line on stderr instead of a traceback."""

from __future__ import annotations

from typing import IO, Any, Final
from urllib.parse import urlsplit

import click
from pydantic import ValidationError

from ..errors import BulkpipeError, ItemSourceError

EXIT_OK: Final = 0
EXIT_JOB_FAILED: Final = 1
"""The job the command waited for ended ``failed`` or ``cancelled``."""
EXIT_USAGE: Final = 2
"""A usage or input error: bad option, bad file, unknown job, unreachable store."""
EXIT_INTERRUPTED: Final = 130


class CliError(click.ClickException):
    """A user error, shown as one ``bulkpipe: error: ...`` line on stderr; exit status 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        """Write the one line to stderr (or ``file``)."""
        click.echo(f"bulkpipe: error: {self.message}", file=file, err=file is None)


class CliInterrupted(CliError):
    """Ctrl-C stopped the command; exit status 130."""

    exit_code = EXIT_INTERRUPTED


class InputError(BulkpipeError):
    """The items, parameters or names given on the command line cannot be used."""


class Interrupted(Exception):
    """Ctrl-C stopped the command after it had cleaned up."""


def one_line(message: str) -> str:
    """``message`` with its whitespace (newlines included) collapsed, so it fits one line."""
    return " ".join(message.split())


def single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (task groups wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``exc`` is a bug (keep its traceback)."""
    exc = single_leaf(exc)
    if isinstance(exc, ItemSourceError) and isinstance(exc.__cause__, BulkpipeError):
        return f"{exc.__cause__}; job {exc.job_id} was marked failed"
    if isinstance(exc, ValidationError):
        return validation_message(exc)
    if isinstance(exc, BulkpipeError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


def validation_message(exc: ValidationError) -> str:
    """The first validation error, naming the command-line flag of the field it is about."""
    errors = exc.errors()
    first = errors[0]
    message = first["msg"].removeprefix("Value error, ")
    loc = first["loc"]
    text = f"invalid --{str(loc[0]).replace('_', '-')}: {message}" if loc else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return url
