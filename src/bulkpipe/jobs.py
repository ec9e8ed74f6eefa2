"""The record of a job just submitted: the one factory ``Pipeline`` and the test helpers use."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ._snapshot import OPTIONS_UNREADABLE
from .error_types import ErrorType
from .models import Job, JobStatus
from .options import JobOptions


def new_job(
    type: str,
    options: JobOptions,
    priority: int = 0,
    *,
    id: str | None = None,
    created_at: datetime | None = None,
    source: str | None = None,
    params: Mapping[str, Any] | None = None,
    retry_of: str | None = None,
    owner: str | None = None,
) -> Job:
    """A pending job with nothing in it yet, as ``JobStore.create_job`` takes it.

    ``id`` defaults to a fresh random hex id and ``created_at`` to now (UTC).
    """
    return Job(
        id=id or uuid.uuid4().hex,
        type=type,
        status=JobStatus.PENDING,
        progress=0.0,
        total_items=0,
        processed_items=0,
        succeeded_items=0,
        failed_items=0,
        errors=[],
        error_count=0,
        options=options,
        priority=priority,
        retry_of=retry_of,
        owner=owner,
        source=source,
        params=dict(params) if params is not None else None,
        created_at=created_at or datetime.now(UTC),
    )


def options_unreadable(job: Job) -> bool:
    """True if the job's stored options could not be read (its snapshot has default ones)."""
    return any(
        e.item_id is None
        and e.error_type == ErrorType.UNREADABLE_JOB
        and e.error.startswith(OPTIONS_UNREADABLE)
        for e in job.errors
    )
