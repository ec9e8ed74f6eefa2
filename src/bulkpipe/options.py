"""Validated, immutable job options."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InvalidArgument

#: The range of a job's priority: what every store can hold (PostgreSQL ``integer``).
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1

#: The longest ``timeout`` and ``item_timeout``, in seconds (a week).
MAX_TIMEOUT = 7 * 86_400.0

#: The longest ``retry_delay`` and ``retry_delay_max``, in seconds (a day).
MAX_RETRY_DELAY = 86_400.0


def check_priority(priority: object) -> int:
    """``priority`` if it is an integer every store can hold, else :class:`InvalidArgument`."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgument(f"priority must be an integer, not {priority!r}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidArgument(
            f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX} (what every store can "
            f"hold), not {priority}"
        )
    return priority


class JobOptions(BaseModel):
    """How a job is run. Immutable; derive a variant with ``options.model_copy(update=...)``.

    Every value is validated when the options are built; a bad one raises
    :class:`pydantic.ValidationError` naming the field. Numbers must be finite (no infinity,
    no NaN) and within their field's bounds. ``model_copy(update=...)`` does not validate;
    ``Pipeline.submit`` validates the options again before it stores a job.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    batch_size: int = Field(
        default=100, ge=1, le=100_000, description="Items claimed and recorded together."
    )
    concurrency: int = Field(
        default=5, ge=1, le=10_000, description="Batches in flight per worker."
    )
    item_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Cap on items in flight per batch; default: the whole batch.",
    )
    max_retries: int = Field(
        default=3, ge=0, le=100, description="Retries after the first attempt."
    )
    retry_delay: float = Field(
        default=1.0, ge=0, le=MAX_RETRY_DELAY, description="Base backoff delay in seconds."
    )
    retry_delay_max: float = Field(
        default=30.0, ge=0, le=MAX_RETRY_DELAY, description="Cap on one backoff delay in seconds."
    )
    timeout: float = Field(
        default=300.0, gt=0, le=MAX_TIMEOUT, description="Seconds a batch may run once claimed."
    )
    item_timeout: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT, description="Seconds one attempt may run."
    )
    progress_interval: float = Field(
        default=2.0, gt=0, le=3600, description="Most seconds the stored progress may lag behind."
    )
    max_failure_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fail the job once this share of its items has failed: failed items "
        "over the items stored so far, judged once failure_ratio_min_outcomes items have an "
        "outcome, or once a sealed job has all its outcomes.",
    )
    failure_ratio_min_outcomes: int = Field(
        default=100,
        ge=1,
        le=1_000_000_000,
        description="Outcomes a job needs before max_failure_ratio is judged (unless every "
        "item of the sealed job has one), so that an early failure cannot end a large job.",
    )
    max_claims: int = Field(
        default=5,
        ge=2,
        le=1000,
        description="Most times one batch is claimed: claimed once more (its workers kept "
        "dying), its remaining items fail as BatchKeptCrashing instead of running. A graceful "
        "release gives its claim back (the first claim always counts).",
    )
    id_key: str = Field(
        default="id", min_length=1, description="The item key that holds its unique id."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.item_concurrency is not None and self.item_concurrency > self.batch_size:
            raise ValueError(
                f"item_concurrency ({self.item_concurrency}) cannot exceed batch_size "
                f"({self.batch_size})"
            )
        if self.retry_delay_max < self.retry_delay:
            raise ValueError(
                f"retry_delay_max ({self.retry_delay_max}) must be >= retry_delay "
                f"({self.retry_delay})"
            )
        return self

    @property
    def items_in_flight(self) -> int:
        """The most items of one job that one worker runs at once."""
        return self.concurrency * (self.item_concurrency or self.batch_size)
