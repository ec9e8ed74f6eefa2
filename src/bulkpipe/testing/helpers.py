"""Builders of the records the store protocol takes, and small drivers of a store in tests."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..items import encode_json
from ..jobs import new_job
from ..models import ItemOutcome, Job, ProcessingError
from ..options import JobOptions
from ..store import BatchReport, ClaimedBatch, EncodedItem, JobStore, Lease, OutcomeRow, Page

T = TypeVar("T")

#: A lease long enough never to expire during a test, in seconds.
LONG_LEASE = 3600.0

#: A job id no test creates, and a lease on it.
UNKNOWN_JOB = "no-such-job"
GHOST_LEASE = Lease(job_id=UNKNOWN_JOB, batch_no=0, token=1)


def make_job(
    *,
    id: str | None = None,
    type: str = "demo",
    priority: int = 0,
    options: JobOptions | None = None,
    created_at: datetime | None = None,
    retry_of: str | None = None,
    owner: str | None = None,
    source: str | None = None,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """A new pending job, as ``Pipeline.submit`` hands it to ``create_job``."""
    return new_job(
        type,
        options or JobOptions(),
        priority,
        id=id,
        created_at=created_at,
        source=source,
        params=params,
        retry_of=retry_of,
        owner=owner,
        idempotency_key=idempotency_key,
    )


def encoded(n: int, start: int = 0, *, prefix: str = "item-") -> list[EncodedItem]:
    """``n`` stored items with ids ``item-<start>`` on and small JSON payloads."""
    return [
        (f"{prefix}{i}", encode_json({"id": f"{prefix}{i}", "n": i, "tags": ["x", i % 3]}))
        for i in range(start, start + n)
    ]


def ok_row(item_id: str, result: Any = None, *, attempts: int = 1) -> OutcomeRow:
    """A succeeded outcome; ``result`` is a Python value, stored as JSON (None: no result)."""
    now = time.time()
    return OutcomeRow(
        item_id=item_id,
        ok=True,
        result=None if result is None else encode_json(result),
        error=None,
        error_type=None,
        attempts=attempts,
        started_at=now - 0.01,
        finished_at=now,
    )


def fail_row(
    item_id: str, error: str = "boom", error_type: str = "ValueError", *, attempts: int = 1
) -> OutcomeRow:
    """A failed outcome."""
    now = time.time()
    return OutcomeRow(
        item_id=item_id,
        ok=False,
        result=None,
        error=error,
        error_type=error_type,
        attempts=attempts,
        started_at=now - 0.01,
        finished_at=now,
    )


def job_error(item_id: str | None = None, error: str = "rejected") -> ProcessingError:
    """A job-level error, as ``add_errors`` and ``finish_job`` take."""
    return ProcessingError(
        item_id=item_id, error=error, error_type="InvalidItem", timestamp=datetime.now(UTC)
    )


def report(
    claimed: ClaimedBatch | Lease,
    rows: Sequence[OutcomeRow] | None = None,
    *,
    done: bool = True,
) -> BatchReport:
    """A report for a claimed batch; by default every claimed item succeeded."""
    lease = claimed if isinstance(claimed, Lease) else claimed.lease
    if rows is None:
        assert isinstance(claimed, ClaimedBatch), "pass rows when reporting on a bare lease"
        rows = [ok_row(item_id) for item_id, _ in claimed.items]
    return BatchReport(lease=lease, outcomes=list(rows), done=done)


async def add_job(
    store: JobStore, *batches: Sequence[EncodedItem], seal: bool = False, **fields: Any
) -> Job:
    """Create a job (``fields`` go to :func:`make_job`), add ``batches``, optionally seal it."""
    job = make_job(**fields)
    await store.create_job(job)
    for batch in batches:
        await store.add_batch(job.id, batch)
    if seal:
        await store.seal_job(job.id)
    return job


async def claim(
    store: JobStore,
    job_id: str | None = None,
    *,
    worker_id: str = "w1",
    lease_seconds: float = LONG_LEASE,
    exclude: Collection[str] = (),
    types: Collection[str] | None = None,
) -> ClaimedBatch:
    """Claim a batch that the test expects to be there."""
    claimed = await store.claim_batch(
        worker_id=worker_id,
        lease_seconds=lease_seconds,
        job_id=job_id,
        exclude=exclude,
        types=types,
    )
    assert claimed is not None, "expected a batch to claim, got None"
    return claimed


async def read_all_outcomes(
    store: JobStore, job_id: str, *, failed: bool | None = None, limit: int = 1000
) -> list[ItemOutcome]:
    """Every outcome of a job, following cursors."""
    return await read_pages(
        lambda cursor: store.read_outcomes(job_id, failed=failed, cursor=cursor, limit=limit)
    )


async def read_pages(read: Callable[[int | None], Awaitable[Page[T]]]) -> list[T]:
    """Follow cursors to the end, checking that they increase and that no page is empty."""
    rows: list[T] = []
    cursor: int | None = None
    while True:
        page = await read(cursor)
        if cursor is not None:
            assert page.rows, f"cursor {cursor} led to an empty page; the previous cursor was None"
            assert page.cursor is None or page.cursor > cursor, "cursors must increase"
        rows.extend(page.rows)
        if page.cursor is None:
            return rows
        cursor = page.cursor


def decoded(items: Sequence[EncodedItem]) -> list[tuple[str, Any]]:
    """Items with their payloads parsed, so that stores may re-format the JSON text."""
    return [(item_id, json.loads(payload)) for item_id, payload in items]
