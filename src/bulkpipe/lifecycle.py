"""Decisions about a job's end, taken by whoever learns that the last batch is done."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from .error_types import ErrorType
from .models import Job, JobStatus, ProcessingError
from .store import JobStore, Progress

log = logging.getLogger("bulkpipe.lifecycle")


async def settle(store: JobStore, job_id: str, progress: Progress) -> Job | None:
    """Complete the job if every item is in and every batch is done; None if not (yet) ours."""
    if progress.status.is_terminal or not progress.sealed or progress.open_batches:
        return None
    job, changed = await store.finish_job(job_id, JobStatus.COMPLETED)
    if not changed and not job.status.is_terminal:
        log.warning(
            "job %s: every batch looked done, but the store refused to complete the job: "
            "%d of its %d items have an outcome; it stays %s",
            job_id,
            job.processed_items,
            job.total_items,
            job.status.value,
        )
    return job if changed else None


def failure_ratio_exceeded(progress: Progress, ratio: float | None) -> ProcessingError | None:
    """The error to fail the job with, if its failed share has reached ``ratio``."""
    if ratio is None or not progress.total or progress.failed < ratio * progress.total:
        return None
    return ProcessingError(
        item_id=None,
        error=(
            f"{progress.failed} of {progress.total} items failed, reaching "
            f"max_failure_ratio={ratio:g}; the job was stopped"
        ),
        error_type=ErrorType.FAILURE_RATIO_EXCEEDED,
        timestamp=datetime.now(UTC),
    )
