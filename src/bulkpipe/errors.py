"""The bulkpipe exception hierarchy, rooted at :class:`BulkpipeError`.

Each class's docstring is its default message; facts such as the job id are kept on attributes.
"""

from __future__ import annotations


class BulkpipeError(Exception):
    """A bulkpipe operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class JobNotFound(BulkpipeError, LookupError):
    """No job with this id exists in the store; check the id, or the store URL."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id!r} not found; check the id, or that you opened the right store"
        )


class JobNotCancellable(BulkpipeError):
    """The job is already terminal (completed, failed or cancelled) and cannot be cancelled."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id!r} is already {status} and cannot be cancelled")


class JobNotFinished(BulkpipeError):
    """The job is still running; wait for it (or cancel it) before retrying its failed items."""

    def __init__(self, job_id: str, status: str, *, deleting: bool = False) -> None:
        self.job_id = job_id
        self.status = status
        if deleting:
            message = f"job {job_id!r} is still {status}; cancel it first, then delete it"
        else:
            message = f"job {job_id!r} is still {status}; wait for it to end (or cancel it) "
            message += "before retrying"
        super().__init__(message)


class NothingToRetry(BulkpipeError):
    """The job has no failed items, so there is nothing to retry."""

    def __init__(self, job_id: str, *, unfinished: bool = False) -> None:
        self.job_id = job_id
        what = "failed or unfinished items" if unfinished else "failed items"
        super().__init__(f"job {job_id!r} has no {what}; there is nothing to retry")


class UnknownProcessor(BulkpipeError, LookupError):
    """No processor is registered (or installed as an entry point) under this name, here or
    on any live worker of the store."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        #: The processor names that are served, when the message may list them.
        self.known = sorted(known) if known is not None else None
        listed = f" (known: {', '.join(self.known) or 'none'})" if self.known is not None else ""
        super().__init__(
            f"unknown processor {name!r}: neither this process nor any live worker serves "
            f"it{listed}; check the name, register it with Pipeline.register() or install it "
            "as a 'bulkpipe.processors' entry point, or pass allow_unserved=True "
            "(bulkpipe submit --allow-unserved) if a worker that serves it will start later"
        )


class UnknownSource(BulkpipeError, LookupError):
    """No item source is registered under this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"unknown item source {name!r}; register it with Pipeline.register_source() "
            f"(known: {listed})"
        )


class InvalidArgument(BulkpipeError, ValueError):
    """A call's arguments are wrong (for example both items and a source, or an unknown status)."""


class InvalidArgumentType(InvalidArgument, TypeError):
    """An argument is of the wrong kind (a class where an instance is wanted, a name not a str).

    It is an :class:`InvalidArgument` and, as before, a :class:`TypeError`.
    """


class ItemSourceError(BulkpipeError):
    """The iterable or source that produced a job's items raised; the job was marked failed."""

    def __init__(self, job_id: str, cause: BaseException) -> None:
        self.job_id = job_id
        super().__init__(
            f"the items of job {job_id!r} could not be read: {type(cause).__name__}: {cause}; "
            "the job was marked failed"
        )


class SubmitLeaseLost(BulkpipeError):
    """The submit lease of a job expired before every item was stored (this process did not
    renew it in time), so a worker sealed the job as abandoned; it ends failed with
    ``SubmitAbandoned`` once the items stored have run. Submit the rest again."""

    def __init__(self, job_id: str, stored: int, read: int) -> None:
        self.job_id = job_id
        self.stored = stored
        super().__init__(
            f"the submit lease of job {job_id!r} expired after {read} items were read, so a "
            f"worker sealed it as abandoned with the {stored} items stored (was this process's "
            "event loop blocked, or the store unreachable, for longer than submit_lease?); "
            "the job ends failed (SubmitAbandoned) once they have run: submit the rest again"
        )


class JobClosed(BulkpipeError):
    """The job takes no more items: it has ended, or every item was submitted (it is sealed).

    A store raises it from ``add_batches`` (and ``add_errors`` for an ended job) and stores
    nothing; ``Pipeline.submit`` takes it as the signal to stop reading the job's items.
    """

    def __init__(self, job_id: str, status: str, *, sealed: bool = False) -> None:
        self.job_id = job_id
        self.status = status
        self.sealed = sealed
        why = (
            f"is sealed (all its items were submitted; it is {status})"
            if sealed
            else f"is already {status}"
        )
        super().__init__(
            f"job {job_id!r} {why}; no more items can be added to it: submit a new job for them"
        )


class PermanentError(BulkpipeError):
    """Raised by a processor to fail an item at once, without retries."""


class StoreError(BulkpipeError):
    """The job store failed; the message names the store and what to check."""


class WaitTimeout(BulkpipeError, TimeoutError):
    """The job did not reach a terminal status within the timeout."""

    def __init__(self, job_id: str, timeout: float, status: str) -> None:
        self.job_id = job_id
        self.timeout = timeout
        super().__init__(f"job {job_id!r} is still {status} after {timeout:g} s")


class PipelineClosed(BulkpipeError, RuntimeError):
    """The pipeline is not running; use it inside ``async with Pipeline(...)``."""
