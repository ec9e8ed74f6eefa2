"""Encoding a new job's columns and a job error's JSON, and decoding a job's counts: the same
in both SQL dialects."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..errors import InvalidArgument
from ..items import encode_json
from ..models import Job, JobStatus, ProcessingError
from ..store import Progress
from ._rows import HasCounts


def job_params(job: Job) -> dict[str, Any]:
    """The ``insert_job`` / ``create_job`` parameters of a new job."""
    try:
        params = encode_json(job.params) if job.params is not None else None
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"job params must be JSON-serialisable: {exc}") from exc
    return {
        "id": job.id,
        "type": job.type,
        "options": job.options.model_dump_json(),
        "priority": job.priority,
        "retry_of": job.retry_of,
        "owner": job.owner,
        "source": job.source,
        "params": params,
        "created_at": job.created_at.timestamp(),
        "idempotency_key": job.idempotency_key,
        "now": time.time(),  # SQLite's clock for the submit lease; PostgreSQL uses now()
    }


def clean_text(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters; keep the rest of a message."""
    return text.replace("\x00", "\ufffd") if text is not None and "\x00" in text else text


def error_json(error: ProcessingError) -> dict[str, Any]:
    """A job error as the JSON object a store keeps (see :func:`error_from_json`)."""
    return {
        "item_id": clean_text(error.item_id),
        "error": clean_text(error.error),
        "error_type": clean_text(error.error_type),
        "at": error.timestamp.timestamp(),
        "retry_count": error.retry_count,
    }


def error_from_json(entry: Mapping[str, Any]) -> ProcessingError:
    """A job error from the JSON object :func:`error_json` made."""
    return ProcessingError(
        item_id=entry["item_id"],
        error=entry["error"],
        error_type=entry["error_type"],
        timestamp=datetime.fromtimestamp(entry["at"], UTC),
        retry_count=entry["retry_count"],
    )


def progress_of(counts: HasCounts, lost: tuple[int, ...] = ()) -> Progress:
    """A :class:`Progress` from a job's stored counts."""
    return Progress(
        status=JobStatus(counts.status),
        sealed=bool(counts.sealed),
        total=counts.total,
        succeeded=counts.succeeded,
        failed=counts.failed,
        open_batches=counts.open_batches,
        lost=lost,
        abandoned=bool(counts.abandoned),
    )
