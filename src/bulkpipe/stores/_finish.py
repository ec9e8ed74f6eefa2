"""The rules of ``JobStore.finish_job``, written once for every store.

A SQL store also states :func:`may_complete` in its ``finish_job`` statement (so the check and
the write are one atomic step); that clause must say what this function says.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import InvalidArgument
from ..models import JobStatus


def check_finish_status(status: JobStatus) -> None:
    """Raise :class:`InvalidArgument` (a ``ValueError``) unless ``status`` is terminal."""
    if not status.is_terminal:
        raise InvalidArgument(f"finish_job needs a terminal status, not {status}")


def may_complete(
    *, sealed: bool, open_batches: int, total: int, succeeded: int, failed: int
) -> bool:
    """Whether a job may become ``COMPLETED``: every item is in (sealed), every batch is
    closed, and every item has its outcome (succeeded + failed == total)."""
    return sealed and not open_batches and succeeded + failed == total


class JobCounts(Protocol):
    """What the rules read of a job: its status and counts (a ``Progress``, or a store's
    own record of the job)."""

    @property
    def status(self) -> JobStatus: ...
    @property
    def sealed(self) -> bool: ...
    @property
    def open_batches(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...


def may_finish(job: JobCounts, status: JobStatus) -> bool:
    """Whether ``finish_job`` moves ``job`` to ``status``: never out of a terminal status,
    and to ``COMPLETED`` only when :func:`may_complete` holds."""
    if job.status.is_terminal:
        return False
    return status is not JobStatus.COMPLETED or may_complete(
        sealed=job.sealed,
        open_batches=job.open_batches,
        total=job.total,
        succeeded=job.succeeded,
        failed=job.failed,
    )
