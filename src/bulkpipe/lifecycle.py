"""A job's fate: the one place that moves a job to a terminal status, and tells listeners.

:class:`Lifecycle` completes a job when its work is done (:meth:`~Lifecycle.settle`), fails it
with an :class:`~bulkpipe.ErrorType` and a message (:meth:`~Lifecycle.fail`), and cancels it
(:meth:`~Lifecycle.cancel`); nothing else in bulkpipe calls ``JobStore.finish_job``. Each
change it makes is announced on its :class:`JobEvents`, which a :class:`~bulkpipe.Pipeline`
shares with its in-process workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from .error_types import ErrorType
from .models import Job, JobStatus, ProcessingError
from .store import JobStore, Progress

log = logging.getLogger("bulkpipe.lifecycle")

#: A listener of job ends: called with the job's id and the terminal status it reached.
JobListener = Callable[[str, JobStatus], None]


class JobEvents:
    """In-process notifier of jobs reaching a terminal status through a :class:`Lifecycle`.

    Listeners are called synchronously, in the order they subscribed, on the event loop of the
    code that ended the job; one that raises is logged and the others are still called.
    """

    def __init__(self) -> None:
        self._listeners: list[JobListener] = []

    def subscribe(self, listener: JobListener) -> Callable[[], None]:
        """Call ``listener(job_id, status)`` whenever a job ends; returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def notify(self, job_id: str, status: JobStatus) -> None:
        """Tell every listener that ``job_id`` reached ``status``."""
        for listener in list(self._listeners):
            try:
                listener(job_id, status)
            except Exception:
                log.exception("a listener of job %s ending %s failed", job_id, status.value)


async def settle(store: JobStore, job_id: str, progress: Progress) -> Job | None:
    """Complete the job if every item is in and every batch is done (fail it with
    ``SubmitAbandoned`` if it was sealed because its submitter stopped renewing its submit
    lease); None if not (yet) ours."""
    if progress.status.is_terminal or not progress.sealed or progress.open_batches:
        return None
    if progress.abandoned:
        error = ProcessingError(
            item_id=None,
            error=abandoned_message(progress),
            error_type=ErrorType.SUBMIT_ABANDONED,
            timestamp=datetime.now(UTC),
        )
        job, changed = await store.finish_job(job_id, JobStatus.FAILED, error)
        return job if changed else None
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


def abandoned_message(progress: Progress) -> str:
    """The ``SubmitAbandoned`` error of a job whose submitter stopped renewing its lease."""
    stored = progress.total
    if not stored:
        return "the submitter stopped renewing its submit lease before any item was stored"
    return (
        f"the submitter stopped renewing its submit lease after {stored:,} "
        f"item{'s' if stored != 1 else ''} {'were' if stored != 1 else 'was'} stored; "
        f"they ran: {progress.succeeded:,} succeeded, {progress.failed:,} failed"
    )


def failure_ratio_exceeded(
    progress: Progress, ratio: float | None, min_outcomes: int = 1
) -> str | None:
    """Why the job must fail (a FailureRatioExceeded message), if its failed share has reached
    ``ratio``; None if it has not.

    The share is failed items over the items stored so far (``total``). It is judged only
    once ``min_outcomes`` items have an outcome, or once the job is sealed and every item has
    one (a small job), so that one early failure cannot end a large job."""
    processed = progress.succeeded + progress.failed
    judged = processed >= min_outcomes or (progress.sealed and processed >= progress.total)
    if ratio is None or not progress.total or not judged:
        return None
    if progress.failed < ratio * progress.total:
        return None
    return (
        f"{progress.failed} of {progress.total} items failed, reaching "
        f"max_failure_ratio={ratio:g}; the job was stopped"
    )


class Lifecycle:
    """Moves jobs of one store to their terminal status, announcing each change on ``events``."""

    def __init__(self, store: JobStore, events: JobEvents | None = None) -> None:
        self.store = store
        #: Where each job this lifecycle ends is announced.
        self.events = events if events is not None else JobEvents()

    async def settle(self, job_id: str, progress: Progress) -> Job | None:
        """Complete the job if ``progress`` shows its work done (every item in, every batch
        done), or fail it with ``SubmitAbandoned`` if its submit was abandoned; the job so
        ended, or None if it was not ended here."""
        job = await settle(self.store, job_id, progress)
        if job is not None:
            self.events.notify(job_id, job.status)
        return job

    async def fail(
        self, job_id: str, kind: ErrorType, message: str, *, at: datetime | None = None
    ) -> tuple[Job, bool]:
        """Fail the job with a job-level error of ``kind`` (timestamped ``at``, default now);
        the job as stored and whether this call changed it (False: it had ended already)."""
        error = ProcessingError(
            item_id=None, error=message, error_type=kind, timestamp=at or datetime.now(UTC)
        )
        return await self._finish(job_id, JobStatus.FAILED, error)

    async def cancel(self, job_id: str) -> tuple[Job, bool]:
        """Cancel the job; the job as stored and whether this call changed it."""
        return await self._finish(job_id, JobStatus.CANCELLED, None)

    async def _finish(
        self, job_id: str, status: JobStatus, error: ProcessingError | None
    ) -> tuple[Job, bool]:
        job, changed = await self.store.finish_job(job_id, status, error)
        if changed:
            self.events.notify(job_id, job.status)
        return job, changed
