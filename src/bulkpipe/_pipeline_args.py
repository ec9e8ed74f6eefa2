"""Small helpers of :class:`bulkpipe.Pipeline`: validating what its methods take."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import ValidationError

from ._snapshot import OPTIONS_UNREADABLE
from .error_types import ErrorType
from .errors import InvalidArgument
from .models import Job
from .options import JobOptions

E = TypeVar("E", bound=StrEnum)


def merge_options(
    default: JobOptions, options: JobOptions | Mapping[str, Any] | None
) -> JobOptions:
    """The options of a job: ``default``, or ``options`` (a mapping: over ``default``),
    validated."""
    if options is None:
        return validated(default)
    if isinstance(options, JobOptions):
        return validated(options)
    try:
        return default.model_copy(
            update=JobOptions.model_validate({**default.model_dump(), **options}).model_dump()
        )
    except ValidationError:
        raise
    except TypeError as exc:
        raise InvalidArgument(f"options must be JobOptions or a mapping: {exc}") from exc


def validated(options: JobOptions) -> JobOptions:
    """``options`` validated again: ``model_copy(update=...)`` and ``model_construct`` skip
    validation, and a value that is not finite would be stored as JSON ``null``, which no
    worker can read back."""
    return JobOptions.model_validate(options.model_dump())


def unreadable(job: Job) -> bool:
    """True if the job's stored options could not be read (its snapshot has default ones)."""
    return any(
        e.item_id is None
        and e.error_type == ErrorType.UNREADABLE_JOB
        and e.error.startswith(OPTIONS_UNREADABLE)
        for e in job.errors
    )


def parse_status(kind: type[E], status: E | str, what: str) -> E:
    try:
        return kind(status)
    except ValueError:
        raise InvalidArgument(
            f"unknown {what} status {status!r}; use one of {', '.join(s.value for s in kind)}"
        ) from None
