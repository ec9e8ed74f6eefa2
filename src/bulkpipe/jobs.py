"""The record of a job just submitted: the one factory ``Pipeline`` and the test helpers use."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .errors import InvalidArgument
from .models import Job, JobStatus
from .options import JobOptions

#: The longest idempotency key a job takes, in characters.
MAX_IDEMPOTENCY_KEY = 200


def check_idempotency_key(key: object) -> str | None:
    """``key`` if it is a valid idempotency key (a non-empty string of at most
    :data:`MAX_IDEMPOTENCY_KEY` characters) or None; :class:`InvalidArgument` if not."""
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise InvalidArgument(
            f"an idempotency key must be a non-empty string, not {key!r}; pass a key that "
            "names this submit (e.g. a request id), or none"
        )
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument(
            f"an idempotency key must be at most {MAX_IDEMPOTENCY_KEY} characters, not "
            f"{len(key)}; use a shorter key (e.g. a hash of a longer one)"
        )
    if "\x00" in key:
        raise InvalidArgument("an idempotency key cannot contain NUL characters")
    return key


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
    idempotency_key: str | None = None,
) -> Job:
    """A pending job with nothing in it yet, as ``JobStore.create_job`` takes it.

    ``id`` defaults to a fresh random hex id and ``created_at`` to now (UTC); an
    ``idempotency_key`` is checked with :func:`check_idempotency_key`.
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
        idempotency_key=check_idempotency_key(idempotency_key),
        created_at=created_at or datetime.now(UTC),
    )
