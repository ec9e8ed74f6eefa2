"""The public data models: job snapshots, item outcomes and errors."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .options import JobOptions


class JobStatus(StrEnum):
    """Where a job is in its life. ``completed``, ``failed`` and ``cancelled`` are terminal."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class ItemStatus(StrEnum):
    """The final status of one item."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ProcessingError(BaseModel):
    """One error of a job: an item that failed for good, a rejected item, or a job-level error.

    ``item_id`` is ``None`` for job-level errors (for example, the item source raised), else
    the item's id as text (an integer id as its decimal digits, ``7`` as ``"7"``).
    """

    model_config = ConfigDict(frozen=True)

    item_id: str | None
    error: str
    error_type: str
    timestamp: datetime
    retry_count: int = 0


class JobSummary(BaseModel):
    """The aggregate result of a job: counts and rates, never per-item data."""

    model_config = ConfigDict(frozen=True)

    total: int
    succeeded: int
    failed: int
    rejected: int
    success_rate: float = Field(description="Succeeded items over items processed, in percent.")
    duration: float = Field(description="Seconds from start to end.")
    items_per_second: float


class Job(BaseModel):
    """A snapshot of a job as stored. Read a fresh one with ``Pipeline.get()``."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str = Field(description="The processor name.")
    status: JobStatus
    progress: float = Field(
        ge=0,
        le=100,
        description="Percent of items with a final outcome (while not `sealed`: of the items "
        "stored so far).",
    )
    total_items: int = Field(description="Items accepted so far; final once `sealed`.")
    processed_items: int
    succeeded_items: int
    failed_items: int
    rejected_items: int = Field(
        default=0, description="Submitted items refused (no id, repeated id...)."
    )
    errors: list[ProcessingError] = Field(description="The first errors, capped; see error_count.")
    error_count: int
    result: JobSummary | None = Field(default=None, description="Set once the job is terminal.")
    options: JobOptions
    priority: int = 0
    retry_of: str | None = None
    owner: str | None = Field(default=None, description="An owner or tenant tag set at submit.")
    source: str | None = None
    params: dict[str, Any] | None = None
    sealed: bool = Field(
        default=False,
        description="True once every item has been submitted; False while the job is still "
        "being submitted (it may already run).",
    )
    idempotency_key: str | None = Field(
        default=None, description="The key a repeated submit of this job is known by."
    )
    created_at: datetime
    started_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None


class ItemOutcome(BaseModel):
    """The final outcome of one item, read back with ``Pipeline.outcomes()``.

    ``item_id`` is always a string: the item's id, an integer id as its decimal digits (``7``
    as ``"7"``; a job's ids are all strings or all integers, so this names one item).
    """

    model_config = ConfigDict(frozen=True)

    item_id: str
    status: ItemStatus
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    attempts: int
    started_at: datetime
    finished_at: datetime


class WorkerInfo(BaseModel):
    """A worker as registered in the store (``Pipeline.workers()``, ``bulkpipe workers``).

    A worker registers when it starts serving and refreshes ``last_seen`` and ``in_flight``
    from its heartbeat; it is listed while its registration has not expired (a few heartbeat
    intervals after it was last seen).
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="The worker id (by default host:pid:random).")
    host: str
    pid: int
    processors: list[str] = Field(description="The processor names it serves, sorted.")
    started_at: datetime
    last_seen: datetime
    in_flight: int = Field(
        default=0, description="Items of the batches it holds that have no outcome yet."
    )
