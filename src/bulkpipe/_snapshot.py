"""Building job snapshots from stored counts; shared by every store so they agree."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from .models import ItemOutcome, ItemStatus, Job, JobStatus, JobSummary, ProcessingError
from .options import JobOptions
from .store import OutcomeRow

#: How many errors a job snapshot lists; ``error_count`` has the total.
MAX_ERRORS = 100


def to_datetime(ts: float | None) -> datetime | None:
    """Epoch seconds to an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@lru_cache(maxsize=256)
def options_from_json(text: str) -> JobOptions:
    """Stored options (JSON text), parsed once per distinct text."""
    return JobOptions.model_validate_json(text)


def outcome_from_row(
    item_id: str,
    ok: Any,
    result: str | None,
    error: str | None,
    error_type: str | None,
    attempts: int,
    started_at: float,
    finished_at: float,
) -> ItemOutcome:
    """An :class:`ItemOutcome` from stored outcome columns (``OutcomeRow`` order)."""
    return ItemOutcome(
        item_id=item_id,
        status=ItemStatus.SUCCEEDED if ok else ItemStatus.FAILED,
        result=json.loads(result) if ok and result is not None else None,
        error=error,
        error_type=error_type,
        attempts=attempts,
        started_at=datetime.fromtimestamp(started_at, UTC),
        finished_at=datetime.fromtimestamp(finished_at, UTC),
    )


def job_from_row(row: Sequence[Any], errors: list[ProcessingError]) -> Job:
    """A :class:`Job` from the job columns every SQL store selects, in this order: id, type,
    status, options (JSON), priority, retry_of, owner, source, params (JSON text or a dict),
    sealed, total, succeeded, failed, rejected, error_count, created_at, started_at,
    updated_at, completed_at."""
    (
        job_id,
        type_,
        status,
        options,
        priority,
        retry_of,
        owner,
        source,
        params,
        sealed,
        total,
        succeeded,
        failed,
        rejected,
        error_count,
        created_at,
        started_at,
        updated_at,
        completed_at,
    ) = row
    return build_job(
        id=job_id,
        type=type_,
        status=JobStatus(status),
        options=options_from_json(options),
        priority=priority,
        retry_of=retry_of,
        owner=owner,
        source=source,
        params=json.loads(params) if isinstance(params, str) else params,
        sealed=bool(sealed),
        total=total,
        succeeded=succeeded,
        failed=failed,
        rejected=rejected,
        errors=errors,
        error_count=error_count,
        created_at=created_at,
        started_at=started_at,
        updated_at=updated_at,
        completed_at=completed_at,
    )


def errors_from_rows(rows: Iterable[OutcomeRow], room: int) -> list[ProcessingError]:
    """The first ``room`` failed outcomes of ``rows`` as errors."""
    out: list[ProcessingError] = []
    for row in rows:
        if len(out) >= room:
            break
        if not row.ok:
            out.append(
                ProcessingError(
                    item_id=row.item_id,
                    error=row.error or "",
                    error_type=row.error_type or "Error",
                    timestamp=datetime.fromtimestamp(row.finished_at, UTC),
                    retry_count=max(0, row.attempts - 1),
                )
            )
    return out


def build_job(
    *,
    id: str,
    type: str,
    status: JobStatus,
    options: JobOptions,
    priority: int,
    retry_of: str | None,
    owner: str | None,
    source: str | None,
    params: dict[str, Any] | None,
    sealed: bool,
    total: int,
    succeeded: int,
    failed: int,
    rejected: int,
    errors: list[ProcessingError],
    error_count: int,
    created_at: float,
    started_at: float | None,
    updated_at: float | None,
    completed_at: float | None,
) -> Job:
    """A :class:`Job` snapshot; the summary is derived from the counts once terminal."""
    processed = succeeded + failed
    if status is JobStatus.COMPLETED:
        progress = 100.0
    elif not sealed or not total:
        # The total is not known until every item is in; a share of a growing total could
        # go backwards, so progress stays 0 until then (the counts still move).
        progress = 0.0
    else:
        progress = min(100.0, processed * 100.0 / total)
    result = None
    if status.is_terminal:
        start = started_at if started_at is not None else created_at
        end = completed_at if completed_at is not None else start
        duration = max(0.0, end - start)
        result = JobSummary(
            total=total,
            succeeded=succeeded,
            failed=failed,
            rejected=rejected,
            success_rate=round(succeeded * 100.0 / processed, 4) if processed else 0.0,
            duration=duration,
            items_per_second=processed / duration if duration > 0 else 0.0,
        )
    return Job(
        id=id,
        type=type,
        status=status,
        progress=min(100.0, progress),
        total_items=total,
        processed_items=processed,
        succeeded_items=succeeded,
        failed_items=failed,
        rejected_items=rejected,
        errors=errors,
        error_count=error_count,
        result=result,
        options=options,
        priority=priority,
        retry_of=retry_of,
        owner=owner,
        source=source,
        params=params,
        sealed=sealed,
        created_at=datetime.fromtimestamp(created_at, UTC),
        started_at=to_datetime(started_at),
        updated_at=to_datetime(updated_at),
        completed_at=to_datetime(completed_at),
    )
