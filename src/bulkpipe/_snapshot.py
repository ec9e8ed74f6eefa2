"""Building job snapshots from stored counts; shared by every store so they agree."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from .error_types import ErrorType
from .models import ItemOutcome, ItemStatus, Job, JobStatus, JobSummary, ProcessingError
from .options import JobOptions
from .store import JobSpec, OutcomeRow

#: How many errors a job snapshot lists; ``error_count`` has the total.
MAX_ERRORS = 100

#: How an UnreadableJob error about the options begins (the snapshot then has default options).
OPTIONS_UNREADABLE = "the job's stored options cannot be read"


def to_datetime(ts: float | None) -> datetime | None:
    """Epoch seconds to an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@lru_cache(maxsize=256)
def options_from_json(text: str) -> JobOptions:
    """Stored options (JSON text), parsed once per distinct text."""
    return JobOptions.model_validate_json(text)


@lru_cache(maxsize=256)
def read_options(text: str) -> tuple[JobOptions, str | None]:
    """Stored options (JSON text), parsed once per distinct text, never raising: options that
    do not validate (e.g. ``"timeout": null``, which earlier versions stored for an infinite
    timeout, or a hand-edited row) give the default options and why they could not be read."""
    try:
        return JobOptions.model_validate_json(text), None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors()[:3]
        )
        return JobOptions(), (
            f"{OPTIONS_UNREADABLE} ({problems}); it cannot run, so it "
            "fails when a worker claims it: submit its items again with valid options"
        )


def job_spec(*, id: str, type: str, options: str, priority: int) -> JobSpec:
    """A :class:`JobSpec` from stored columns (``options`` as JSON text). Options that cannot
    be read give default ones and ``options_error``; the worker then fails the job."""
    parsed, problem = read_options(options)
    return JobSpec(id=id, type=type, options=parsed, priority=priority, options_error=problem)


def _decode_result(item_id: str, text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as exc:
        return None, (
            f"the stored result of item {item_id!r} cannot be decoded ({type(exc).__name__}: "
            f"{exc}); the item succeeded, but its result is lost"
        )


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
    """An :class:`ItemOutcome` from stored outcome columns (``OutcomeRow`` order). A result
    that cannot be decoded gives a succeeded outcome with no result, flagged with
    ``error_type`` ``ErrorType.UNREADABLE_RESULT`` and an ``error`` saying why, instead of
    raising."""
    value = None
    if ok and result is not None:
        value, problem = _decode_result(item_id, result)
        if problem is not None:
            error, error_type = problem, ErrorType.UNREADABLE_RESULT
    return ItemOutcome(
        item_id=item_id,
        status=ItemStatus.SUCCEEDED if ok else ItemStatus.FAILED,
        result=value,
        error=error,
        error_type=error_type,
        attempts=attempts,
        started_at=datetime.fromtimestamp(started_at, UTC),
        finished_at=datetime.fromtimestamp(finished_at, UTC),
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
    idempotency_key: str | None = None,
) -> Job:
    """A :class:`Job` snapshot; the summary is derived from the counts once terminal."""
    processed = succeeded + failed
    if status is JobStatus.COMPLETED:
        progress = 100.0
    elif not total:
        progress = 0.0
    else:
        # While the job is still being submitted (not sealed) this is the share of the items
        # stored so far, so it may go back as more items arrive; `sealed` says which it is.
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
        idempotency_key=idempotency_key,
        created_at=datetime.fromtimestamp(created_at, UTC),
        started_at=to_datetime(started_at),
        updated_at=to_datetime(updated_at),
        completed_at=to_datetime(completed_at),
    )
