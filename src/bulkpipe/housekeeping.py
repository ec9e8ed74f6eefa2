"""Deleting and pruning jobs, and copying a job's items into its retry: what
:meth:`Pipeline.delete`, :meth:`Pipeline.prune` and :meth:`Pipeline.retry_failed` do with the
store, and the retention loop a worker may run (:func:`run_retention`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import timedelta

import anyio
import anyio.lowlevel

from ._pipeline_args import unreadable
from .errors import InvalidArgument, JobNotFinished, JobNotFound, NothingToRetry
from .models import Job, JobStatus
from .options import JobOptions
from .store import JobStore
from .submission import ADD_ITEMS, Encoded, ItemWriter

log = logging.getLogger("bulkpipe.housekeeping")

#: Every terminal status: what :meth:`Pipeline.prune` deletes unless told otherwise.
TERMINAL = tuple(s for s in JobStatus if s.is_terminal)

#: How many ended jobs one prune step lists (each is then deleted in chunks of rows).
PRUNE_PAGE = 100

#: The named lock that keeps retention to one worker at a time.
RETENTION_LOCK = "retention"


def check_age(older_than: timedelta) -> float:
    """``older_than`` in seconds, which must be a positive :class:`timedelta`."""
    if not isinstance(older_than, timedelta):
        raise InvalidArgument(f"older_than must be a datetime.timedelta, not {older_than!r}")
    if older_than <= timedelta(0):
        raise InvalidArgument(f"older_than must be a positive timedelta, not {older_than}")
    return older_than.total_seconds()


def check_statuses(statuses: Iterable[JobStatus | str]) -> list[JobStatus]:
    """``statuses`` as :class:`JobStatus` values, each terminal, at least one."""
    found: list[JobStatus] = []
    for status in [statuses] if isinstance(statuses, str) else statuses:
        try:
            value = JobStatus(status)
        except ValueError:
            value = None
        if value is None or not value.is_terminal:
            raise InvalidArgument(
                f"only jobs that have ended can be pruned: use completed, failed or cancelled, "
                f"not {status!r}"
            )
        found.append(value)
    if not found:
        raise InvalidArgument("give at least one status to prune: completed, failed, cancelled")
    return found


async def delete(store: JobStore, job_id: str) -> None:
    """Delete a terminal job; :class:`JobNotFinished` for a live one."""
    job = await store.get_job(job_id)
    if not job.status.is_terminal or not await store.delete_job(job_id):
        raise JobNotFinished(job_id, job.status.value, deleting=True)


async def prune(
    store: JobStore, *, older_than: timedelta, statuses: Iterable[JobStatus | str] = TERMINAL
) -> int:
    """Delete the jobs of ``statuses`` that ended more than ``older_than`` ago; how many."""
    before = time.time() - check_age(older_than)
    wanted = check_statuses(statuses)
    deleted = 0
    tried: set[str] = set()
    while True:
        ids = await store.ended_jobs(before=before, statuses=wanted, limit=PRUNE_PAGE)
        fresh = [job_id for job_id in ids if job_id not in tried]
        if not fresh:
            return deleted
        for job_id in fresh:
            tried.add(job_id)
            with contextlib.suppress(JobNotFound):  # another process deleted it meanwhile
                deleted += await store.delete_job(job_id)


def retryable(job: Job, *, unfinished: bool) -> int:
    """How many items a retry of ``job`` takes: the failed ones, and with ``unfinished`` the
    ones without an outcome."""
    return job.failed_items + (job.total_items - job.processed_items if unfinished else 0)


def check_retry(job: Job, options: JobOptions | None, *, unfinished: bool) -> None:
    """Refuse to retry ``job`` while it runs, when it has nothing to retry, or when its
    stored options cannot be read and no ``options`` are given."""
    if not job.status.is_terminal:
        raise JobNotFinished(job.id, job.status.value)
    if not retryable(job, unfinished=unfinished):
        raise NothingToRetry(job.id, unfinished=unfinished)
    if options is None and unreadable(job):
        raise InvalidArgument(
            f"the stored options of job {job.id!r} cannot be read (see its errors); pass "
            "options=... to retry it"
        )


async def copy_items(store: JobStore, job_id: str, writer: ItemWriter, *, unfinished: bool) -> None:
    """Add the failed (and with ``unfinished``, never-run) items of ``job_id`` to the job of
    ``writer``, a page at a time."""
    size = writer.options.batch_size
    cursor: int | None = None
    while True:
        page = await store.read_failed_items(
            job_id,
            cursor=cursor,
            limit=size * max(1, ADD_ITEMS // size),
            unfinished=unfinished,
        )
        if page.rows:
            batches: list[Encoded] = [
                (page.rows[i : i + size], []) for i in range(0, len(page.rows), size)
            ]
            await writer.add(batches)
            await anyio.lowlevel.checkpoint()  # let workers start on what is in
        if page.cursor is None:
            return
        cursor = page.cursor


def retention_interval(retention: timedelta) -> float:
    """Seconds between a worker's prunes for ``retention``: a tenth of it, at least a second
    and at most an hour."""
    return min(max(check_age(retention) / 10, 1.0), 3600.0)


async def run_retention(
    store: JobStore, retention: timedelta, holder: str, *, every: float | None = None
) -> None:
    """Prune the jobs that ended more than ``retention`` ago, now and then every ``every``
    seconds (default :func:`retention_interval`), until cancelled. Each round runs only if
    ``holder`` gets the named lock ``"retention"``, so one worker of a store prunes at a
    time; a failed round is logged and the next one comes as planned."""
    interval = retention_interval(retention) if every is None else every
    while True:
        try:
            if await store.try_lock(RETENTION_LOCK, holder, max(interval, 60.0)):
                try:
                    pruned = await prune(store, older_than=retention)
                finally:
                    with anyio.CancelScope(shield=True):
                        await store.unlock(RETENTION_LOCK, holder)
                if pruned:
                    log.info("retention: deleted %d jobs that ended over %s ago", pruned, retention)
        except Exception as exc:  # a store outage: try again next round
            log.warning("retention: pruning failed (%s: %s)", type(exc).__name__, exc)
        await anyio.sleep(interval)
