"""The :class:`Pipeline`: submit jobs, watch them, cancel and retry them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import anyio

from . import housekeeping
from ._pipeline_args import merge_options, parse_status, validated
from .error_types import ErrorType
from .errors import (
    InvalidArgument,
    InvalidArgumentType,
    ItemSourceError,
    JobNotCancellable,
    PipelineClosed,
    WaitTimeout,
)
from .gate import PriorityGate
from .jobs import check_idempotency_key, new_job
from .lifecycle import JobEvents, Lifecycle
from .local_workers import supervise
from .models import ItemOutcome, ItemStatus, Job, JobStatus, WorkerInfo
from .options import PRIORITY_MAX, PRIORITY_MIN, JobOptions, check_priority
from .processors import ProcessorRegistry
from .store import JobStore, Page
from .submission import ItemWriter, item_stream
from .submit_lease import SubmitLeases, check_submit_lease, close_unread, lease_lost
from .unserved import check_served
from .worker import Worker

log = logging.getLogger("bulkpipe.pipeline")

#: A registered item source: an async generator of items, taking the job's ``params``.
Source = Callable[[Mapping[str, Any]], AsyncIterable[Mapping[str, Any]]]

_POLL_MIN, _POLL_MAX = 0.005, 0.25

#: The default byte budget of one page of outcomes read by :meth:`Pipeline.outcomes` and the
#: HTTP API (UTF-8 bytes of item ids, results and errors; a larger outcome comes alone).
OUTCOME_PAGE_BYTES = 8 * 1024 * 1024


class Pipeline:
    """Runs processors over items in batches, with bounded concurrency, retries and progress.

    Use it as an async context manager: it opens the store, runs ``workers`` in-process
    workers (0: this pipeline only submits and reads; other processes do the work) and, on exit,
    stops them gracefully and closes the store. Leaving the block does not wait for jobs; call
    :meth:`wait` first.

    A job being submitted holds a submit lease of ``submit_lease`` seconds (1 to 3600) that
    :meth:`submit` renews; should this process die mid-submit, a worker seals the job once
    the lease expires, and it ends failed with ``SubmitAbandoned`` after its stored items ran.
    """

    def __init__(
        self,
        store: JobStore | None = None,
        *,
        processors: Mapping[str, object] | None = None,
        sources: Mapping[str, Source] | None = None,
        workers: int = 1,
        max_in_flight: int | None = None,
        lease_timeout: float = 30.0,
        poll_interval: float = 0.5,
        default_options: JobOptions | None = None,
        submit_lease: float = 30.0,
    ) -> None:
        self.submit_lease = check_submit_lease(submit_lease)
        if workers < 0:
            raise InvalidArgument(f"workers must be 0 or more, not {workers}")
        if store is None:
            from .stores.memory import MemoryStore

            store = MemoryStore()
        self.store = store
        self.default_options = default_options or JobOptions()
        self._registry = ProcessorRegistry(processors)
        self._sources: dict[str, Source] = {}
        for name, source in (sources or {}).items():
            self.register_source(name, source)
        gate = PriorityGate(max_in_flight) if max_in_flight is not None else None
        #: Jobs ending in this process (through this pipeline or its workers) are announced
        #: here: ``pipeline.events.subscribe(listener)``, called with (job_id, status).
        self.events = JobEvents()
        self._lifecycle = Lifecycle(store, self.events)
        self._leases = SubmitLeases(store, self.submit_lease)
        #: The in-process workers (``workers`` of them); :meth:`workers` lists every live one.
        self.local_workers = [
            Worker(
                store,
                registry=self._registry,
                gate=gate,
                lease_timeout=lease_timeout,
                poll_interval=poll_interval,
                events=self.events,
            )
            for _ in range(workers)
        ]
        self._stack: contextlib.AsyncExitStack | None = None
        self._changed = anyio.Event()
        self.events.subscribe(self._job_ended)

    def _job_ended(self, _job_id: str, _status: JobStatus) -> None:
        """Wake :meth:`wait` and :meth:`watch`: a job ended in this process."""
        self._changed.set()
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return f"Pipeline(store={self.store!r}, workers={len(self.local_workers)})"

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise InvalidArgument("this pipeline is already running; enter it only once")
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.store.open()
            stack.push_async_callback(self._close_store)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._stop_workers)
            stack.callback(self._leases.stop)
            tg.start_soon(self._leases.run)
            for worker in self.local_workers:
                await tg.start(supervise, worker)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(exc_type, exc, tb)

    def _stop_workers(self) -> None:
        for worker in self.local_workers:
            worker.stop()

    async def _close_store(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._registry.teardown()
            await self.store.close()

    def _running(self) -> None:
        if self._stack is None:
            raise PipelineClosed()

    # -- registration -----------------------------------------------------------------------

    def register(self, name: str, processor: object) -> None:
        """Register a processor under ``name`` (an async or sync function of one item, or an
        object with ``process(item)`` or ``process_batch(items)``)."""
        self._registry.register(name, processor)
        for worker in self.local_workers:
            worker.wake()

    def register_source(self, name: str, source: Source) -> None:
        """Register an item source: an async generator function taking the job's params."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentType(
                f"a source name must be a non-empty string, not {name!r}; register it under "
                "the name jobs pass as source="
            )
        if not callable(source):
            raise InvalidArgumentType(
                f"source {name!r} must be callable, got {type(source).__name__}; pass an async "
                "generator function taking the job's params"
            )
        self._sources[name] = source

    # -- submitting -------------------------------------------------------------------------

    async def submit(
        self,
        processor: str,
        items: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]] | None = None,
        *,
        source: str | None = None,
        params: Mapping[str, Any] | None = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        priority: int = 0,
        owner: str | None = None,
        idempotency_key: str | None = None,
        allow_unserved: bool = False,
        on_created: Callable[[Job], object] | None = None,
    ) -> Job:
        """Create a job over ``items`` (or a registered ``source`` called with ``params``).

        The job exists (``on_created(job)`` is called) before any item is read. Items are
        streamed into the store a batch at a time (a sync iterable is read in a thread) and
        may start running before the last one is read. Items that are not valid (not a
        mapping, no id, a repeated id, not JSON) are refused and listed in the job's errors;
        the rest runs. Returns the job as stored once every item is in, or as soon as the job
        ended while being submitted (cancelled, or failed by ``max_failure_ratio``): reading
        then stops within a batch and the source is closed.

        With an ``idempotency_key`` (a non-empty string of at most 200 characters), a submit
        whose key this ``owner`` has used already returns that job as it is now and stores
        nothing (``items`` is not read; an async generator is closed). :class:`SubmitLeaseLost`
        if this process failed to renew the job's submit lease in time.
        :class:`UnknownProcessor` when neither this pipeline nor a live worker of the store
        (:meth:`workers`) serves ``processor``, unless ``allow_unserved`` (a worker that
        serves it is to start later).
        """
        job, _ = await self.submit_or_find(
            processor, items, source=source, params=params, options=options, priority=priority,
            owner=owner, idempotency_key=idempotency_key, allow_unserved=allow_unserved,
            on_created=on_created,
        )  # fmt: skip
        return job

    async def submit_or_find(
        self,
        processor: str,
        items: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]] | None = None,
        *,
        source: str | None = None,
        params: Mapping[str, Any] | None = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        priority: int = 0,
        owner: str | None = None,
        idempotency_key: str | None = None,
        allow_unserved: bool = False,
        on_created: Callable[[Job], object] | None = None,
    ) -> tuple[Job, bool]:
        """:meth:`submit`, and whether it created the job (False: ``idempotency_key`` found
        the job an earlier submit created, and nothing was stored)."""
        self._running()
        check_idempotency_key(idempotency_key)
        opts = merge_options(self.default_options, options)
        if not isinstance(processor, str) or not processor:
            raise InvalidArgument(f"processor must be a non-empty name, not {processor!r}")
        check_priority(priority)
        if (items is None) == (source is None):
            raise InvalidArgument("pass either items or source=..., not both and not neither")
        if params is not None and source is None:
            raise InvalidArgument("params are for a source; pass source=... with them")
        stream = item_stream(items, source, params, self._sources)
        if owner is not None and not isinstance(owner, str):
            raise InvalidArgument(f"owner must be a string, not {type(owner).__name__}")
        await check_served(processor, self._registry, self.store, allow_unserved=allow_unserved)
        job = self._new_job(
            processor, opts, priority, source=source, params=params, owner=owner,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        stored = await self.store.create_job(job, submit_lease=self.submit_lease)
        if stored.id != job.id:
            await close_unread(stream)
            return stored, False
        if on_created is not None:
            on_created(stored)
        await self._fill(job.id, stream, opts)
        return await self.store.get_job(job.id), True

    #: Builds the pending job ``submit`` and ``retry`` create (shared with bulkpipe.testing).
    _new_job = staticmethod(new_job)

    async def _fill(
        self, job_id: str, stream: Iterable[Any] | AsyncIterable[Any], options: JobOptions
    ) -> None:
        writer = ItemWriter(self.store, job_id, options, on_added=self._wake_workers)
        unsubscribe = self.events.subscribe(
            lambda ended, _: writer.stop() if ended == job_id else None
        )
        try:
            with self._leases.held(job_id, writer.stop):  # stops the writer if the job ends
                await writer.write(stream)
        except Exception as exc:
            if (lost := await lease_lost(self.store, job_id, writer.position)) is not None:
                raise lost from exc  # sealed as abandoned: its stored items still run
            await self._abandon(
                job_id,
                f"reading the items failed after {writer.position} items: "
                f"{type(exc).__name__}: {exc}",
                ErrorType.ITEM_SOURCE_ERROR,
            )
            raise ItemSourceError(job_id, exc) from exc
        except BaseException:
            # Cancelled mid-submit: the job can never be sealed, so end it rather than leave
            # it running forever.
            with anyio.CancelScope(shield=True):
                await self._abandon(
                    job_id,
                    f"the submit call was cancelled after {writer.position} items",
                    ErrorType.SUBMIT_CANCELLED,
                )
            raise
        finally:
            unsubscribe()
        if writer.stopped:  # the job ended meanwhile, or a worker sealed it as abandoned
            if (lost := await lease_lost(self.store, job_id, writer.position)) is not None:
                raise lost
            return
        await self._seal(job_id)

    def _wake_workers(self, job_id: str) -> None:
        for worker in self.local_workers:
            worker.wake(job_id)

    async def _abandon(self, job_id: str, message: str, error_type: ErrorType) -> None:
        at = datetime.now(UTC)
        for worker in self.local_workers:
            await worker.stop_job(job_id)
        await self._lifecycle.fail(job_id, error_type, message, at=at)

    async def _seal(self, job_id: str) -> None:
        progress = await self.store.seal_job(job_id)
        await self._lifecycle.settle(job_id, progress)
        self._wake_workers(job_id)

    # -- reading ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The job as stored now; :class:`JobNotFound` for an unknown id."""
        self._running()
        return await self.store.get_job(job_id)

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        owner: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally only of one status and/or one owner."""
        self._running()
        if limit < 1 or offset < 0:
            raise InvalidArgument(f"limit must be >= 1 and offset >= 0, not {limit} and {offset}")
        return await self.store.list_jobs(
            status=parse_status(JobStatus, status, "job") if status is not None else None,
            owner=owner,
            limit=limit,
            offset=offset,
        )

    async def workers(self) -> list[WorkerInfo]:
        """The live workers of the store, oldest first: this pipeline's and every other
        process's (each registers while it serves; a killed one drops out within seconds)."""
        self._running()
        return await self.store.list_workers()

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Wait until the job is terminal and return it; :class:`WaitTimeout` after ``timeout``."""
        self._running()
        delay = _POLL_MIN
        job = await self.store.get_job(job_id)
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            while not job.status.is_terminal:
                with anyio.move_on_after(delay):
                    await self._changed.wait()
                delay = min(_POLL_MAX, delay * 2)
                job = await self.store.get_job(job_id)
            return job
        raise WaitTimeout(job_id, timeout or 0.0, job.status.value)

    async def watch(self, job_id: str, interval: float | None = None) -> AsyncIterator[Job]:
        """Yield snapshots of the job: at once, then at least every ``interval`` seconds
        (default: the job's ``progress_interval``), and always the terminal one, then end."""
        self._running()
        job = await self.store.get_job(job_id)
        every = job.options.progress_interval if interval is None else interval
        if every <= 0:
            raise InvalidArgument(f"interval must be positive, not {every}")
        yield job
        last = anyio.current_time()
        while not job.status.is_terminal:
            due = last + every
            with anyio.move_on_after(max(0.0, min(due - anyio.current_time(), _POLL_MAX))):
                await self._changed.wait()
            job = await self.store.get_job(job_id)
            now = anyio.current_time()
            if job.status.is_terminal or now >= due:
                yield job
                last = now

    async def outcomes(
        self,
        job_id: str,
        status: ItemStatus | str | None = None,
        *,
        page_size: int = 1000,
        page_bytes: int | None = OUTCOME_PAGE_BYTES,
    ) -> AsyncIterator[ItemOutcome]:
        """Stream the job's final item outcomes, optionally only ``succeeded`` or ``failed``.

        They are read from the store ``page_size`` at a time and, with ``page_bytes``, at most
        that many bytes of item ids, results and errors at a time (a single larger outcome is
        read alone), so memory stays bounded however large the results are."""
        self._running()
        if page_size < 1 or (page_bytes is not None and page_bytes < 1):
            raise InvalidArgument(
                f"page_size and page_bytes must be positive, not {page_size} and {page_bytes}"
            )
        cursor: int | None = None
        while True:
            page = await self.outcome_page(
                job_id, status=status, cursor=cursor, limit=page_size, max_bytes=page_bytes
            )
            for outcome in page.rows:
                yield outcome
            if page.cursor is None:
                return
            cursor = page.cursor

    async def outcome_page(
        self,
        job_id: str,
        *,
        status: ItemStatus | str | None = None,
        cursor: int | None = None,
        limit: int = 1000,
        max_bytes: int | None = OUTCOME_PAGE_BYTES,
    ) -> Page[ItemOutcome]:
        """One page of the job's final item outcomes, in recording order, optionally only
        ``succeeded`` or ``failed`` ones: at most ``limit`` of them and, with ``max_bytes``, at
        most that many UTF-8 bytes of item ids, results and errors (a single larger outcome
        comes alone). Pass the page's ``cursor`` to read the next one; it is None when there
        are no more outcomes *now* (a running job may record more later).

        :class:`JobNotFound` for an unknown id; :class:`InvalidArgument` for a ``limit`` or
        ``max_bytes`` below 1, a negative or non-integer ``cursor``, or an unknown ``status``."""
        self._running()
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(f"limit must be an int of 1 or more, not {limit!r}")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise InvalidArgument(
                f"max_bytes must be a positive number of bytes, or None for no budget, "
                f"not {max_bytes!r}"
            )
        if cursor is not None and (
            isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0
        ):
            raise InvalidArgument(
                f"cursor must be None (the first page) or a page's cursor, not {cursor!r}"
            )
        failed = (
            None
            if status is None
            else parse_status(ItemStatus, status, "item") is ItemStatus.FAILED
        )
        return await self.store.read_outcomes(
            job_id, failed=failed, cursor=cursor, limit=limit, max_bytes=max_bytes
        )

    # -- control ----------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: no item of it starts after this returns, and in-flight ones are
        cancelled; outcomes already recorded are kept. :class:`JobNotCancellable` if it has
        already ended."""
        self._running()
        job = await self.store.get_job(job_id)
        if job.status.is_terminal:
            raise JobNotCancellable(job_id, job.status.value)
        for worker in self.local_workers:
            await worker.stop_job(job_id)
        job, changed = await self._lifecycle.cancel(job_id)
        if not changed:
            raise JobNotCancellable(job_id, job.status.value)
        return job

    async def retry_failed(
        self,
        job_id: str,
        *,
        options: JobOptions | None = None,
        include_unfinished: bool = False,
        allow_unserved: bool = False,
    ) -> Job:
        """A new job (``retry_of`` set) over exactly the items of ``job_id`` that failed; with
        ``include_unfinished``, also those that never got an outcome (a cancelled or
        abandoned job's never-run items).

        :class:`NothingToRetry` if there are none; :class:`JobNotFinished` while it runs;
        :class:`UnknownProcessor` as for :meth:`submit` (``allow_unserved`` likewise).
        """
        self._running()
        job = await self.store.get_job(job_id)
        housekeeping.check_retry(job, options, unfinished=include_unfinished)
        opts = validated(options or job.options)
        await check_served(job.type, self._registry, self.store, allow_unserved=allow_unserved)
        # Only a SQLite store written before the range was checked holds a priority outside
        # it; the retry takes the nearest bound, which keeps its place in the order.
        priority = min(max(job.priority, PRIORITY_MIN), PRIORITY_MAX)
        retry = self._new_job(job.type, opts, priority, retry_of=job_id, owner=job.owner)
        await self.store.create_job(retry)
        writer = ItemWriter(self.store, retry.id, opts, on_added=self._wake_workers)
        await housekeeping.copy_items(self.store, job_id, writer, unfinished=include_unfinished)
        await self._seal(retry.id)
        return await self.store.get_job(retry.id)

    async def delete(self, job_id: str) -> None:
        """Delete a job that has ended, with its items and outcomes (see
        :meth:`bulkpipe.store.JobStore.delete_job`); :class:`JobNotFinished` for a live job
        (cancel it first), :class:`JobNotFound` for an unknown id."""
        self._running()
        await housekeeping.delete(self.store, job_id)

    async def prune(
        self,
        *,
        older_than: timedelta,
        statuses: Iterable[JobStatus | str] = housekeeping.TERMINAL,
    ) -> int:
        """Delete the jobs of ``statuses`` (default: every terminal one) that ended more than
        ``older_than`` ago, each as :meth:`delete` does; return how many were deleted."""
        self._running()
        return await housekeeping.prune(self.store, older_than=older_than, statuses=statuses)
