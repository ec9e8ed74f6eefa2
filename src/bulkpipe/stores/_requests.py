"""What the SQL stores' calls were asked for, checked and bundled for one dialect step."""

from __future__ import annotations

import attrs

from ..models import JobStatus, ProcessingError


@attrs.frozen(kw_only=True)
class ClaimRequest:
    """What ``claim_batch`` was asked for (see :meth:`bulkpipe.store.JobStore.claim_batch`)."""

    worker_id: str
    lease_seconds: float
    job_id: str | None
    exclude: list[str]
    types: list[str] | None


@attrs.frozen(kw_only=True)
class FinishRequest:
    """What ``finish_job`` was asked for, its status already checked to be terminal."""

    job_id: str
    status: JobStatus
    error: ProcessingError | None


@attrs.frozen(kw_only=True)
class OutcomePageRequest:
    """What ``read_outcomes`` was asked for; ``after`` is the cursor (0: from the start)."""

    job_id: str
    failed: bool | None
    after: int
    limit: int
    max_bytes: int | None
