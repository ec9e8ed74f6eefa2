"""Request and response bodies of the HTTP API (what the OpenAPI document describes).

Jobs and outcomes are returned as the library's own models (:class:`bulkpipe.Job`,
:class:`bulkpipe.ItemOutcome`); this module adds the bodies that exist only over HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ..models import ItemOutcome, Job
from ..options import PRIORITY_MAX, PRIORITY_MIN, JobOptions

#: A processor, source or owner name: 1 to 200 characters, no control characters (they have no
#: business in a name, and some stores cannot hold a NUL).
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]

#: Priorities fit a 32-bit signed integer, the narrowest column a store may use for them.
INT32_MIN, INT32_MAX = PRIORITY_MIN, PRIORITY_MAX


class SubmitOptions(JobOptions):
    """Job options for this job; fields left out take the server's defaults. Numbers must be
    finite: ``1e999`` (which JSON parsers read as infinity), ``NaN`` and ``Infinity`` get 422.

    Each field is checked on its own here; the combined checks (``item_concurrency`` not above
    ``batch_size``, ``retry_delay_max`` not below ``retry_delay``) run once the options are
    merged with the server's defaults, so they judge the options the job will really have.
    """

    # Replaces JobOptions' combined check (same name), which would judge the fields left out
    # by JobOptions' defaults instead of the server's; a test pins this down.
    @model_validator(mode="after")
    def _check(self) -> Self:
        return self


class SubmitJob(BaseModel):
    """A new job: a processor over ``items``, or over a registered ``source`` with ``params``."""

    model_config = ConfigDict(extra="forbid")

    processor: Name = Field(description="The processor to run, by name.")
    items: list[dict[str, Any]] | None = Field(
        None,
        description="The items, each an object with a unique id (under `options.id_key`, "
        "default `id`; all strings or all integers). Give either `items` or `source`.",
    )
    source: Name | None = Field(None, description="A registered item source, instead of items.")
    params: dict[str, Any] | None = Field(None, description="Parameters for the source.")
    options: SubmitOptions | None = Field(None, description="Job options; see JobOptions.")
    priority: int = Field(
        0, ge=INT32_MIN, le=INT32_MAX, description="Higher runs first when workers are busy."
    )
    owner: Name | None = Field(
        None,
        description="The owner or tenant tag of the job. A caller whose principal has an owner "
        "may leave it out (it is set to theirs) or give their own.",
    )
    allow_unserved: bool = Field(
        False,
        description="Create the job although neither the server nor any live worker serves "
        "the processor (one will start later); without it that is a 400.",
    )


class RetryJob(BaseModel):
    """What to retry of an ended job (the body may be left out: only the failed items)."""

    model_config = ConfigDict(extra="forbid")

    include_unfinished: bool = Field(
        False,
        description="Also run the items that never got an outcome (a cancelled or abandoned "
        "job's never-run items).",
    )


class JobList(BaseModel):
    """One page of jobs, newest first."""

    jobs: list[Job]
    next_offset: int | None = Field(
        description="The `offset` of the next page; null when this page is the last."
    )


class OutcomePage(BaseModel):
    """One page of item outcomes, in recording order."""

    outcomes: list[ItemOutcome]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to read the next page; null when there are no more "
        "outcomes now (a running job may record more later)."
    )


class FieldError(BaseModel):
    """One invalid value of a request: where it is and what is wrong with it."""

    loc: list[str | int] = Field(description='Where the value is, e.g. ["body", "items", 3].')
    msg: str
    type: str


class Problem(BaseModel):
    """An error response (after RFC 9457, "problem details"); never a traceback."""

    type: str = Field("about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="The HTTP status phrase, e.g. 'Not Found'.")
    status: int
    detail: str = Field(description="What went wrong, and what to do about it.")
    errors: list[FieldError] | None = Field(
        None, description="The invalid values (validation errors, status 422, only)."
    )
