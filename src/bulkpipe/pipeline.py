"""The :class:`Pipeline`: submit jobs, watch them, cancel and retry them."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from anyio.abc import TaskStatus
from pydantic import ValidationError

from .error_types import ErrorType
from .errors import (
    InvalidArgument,
    InvalidArgumentType,
    ItemSourceError,
    JobNotCancellable,
    JobNotFinished,
    NothingToRetry,
    PipelineClosed,
    UnknownProcessor,
    WaitTimeout,
)
from .gate import PriorityGate
from .jobs import new_job
from .jobs import options_unreadable as _unreadable
from .lifecycle import JobEvents, Lifecycle
from .models import ItemOutcome, ItemStatus, Job, JobStatus
from .options import PRIORITY_MAX, PRIORITY_MIN, JobOptions, check_priority
from .options import revalidated as _validated
from .outage import FIRST_DELAY, MAX_DELAY
from .processors import ProcessorRegistry
from .retry import backoff_delay
from .store import JobStore, Page
from .submission import ADD_ITEMS, Encoded, ItemWriter, item_stream
from .worker import Worker

log = logging.getLogger("bulkpipe.pipeline")

#: A registered item source: an async generator of items, taking the job's ``params``.
Source = Callable[[Mapping[str, Any]], AsyncIterable[Mapping[str, Any]]]

E = TypeVar("E", bound=StrEnum)

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
    ) -> None:
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
        self.workers = [
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
        return f"Pipeline(store={self.store!r}, workers={len(self.workers)})"

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
            for worker in self.workers:
                await tg.start(self._supervise, worker)
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

    async def _supervise(
        self, worker: Worker, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve with ``worker`` until the pipeline stops; should it fail once serving (a
        bug: a store that does not answer is waited out inside the worker), log it and serve
        again after a pause that grows while it keeps failing, so that the jobs and the HTTP
        API of this process go on."""
        status = _Started(task_status)
        failures = 0
        rng = random.Random()
        while True:
            began = time.monotonic()
            try:
                await worker.serve(task_status=status)
                return
            except Exception:
                if not status.done or worker.gave_up:
                    raise
                failures = 1 if time.monotonic() - began > 60 else failures + 1
                delay = backoff_delay(failures, FIRST_DELAY, MAX_DELAY, rng)
                log.exception(
                    "in-process worker %s failed; serving again in %.1f s", worker.worker_id, delay
                )
            await anyio.sleep(delay)

    def _stop_workers(self) -> None:
        for worker in self.workers:
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
        for worker in self.workers:
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
        """
        self._running()
        opts = self._options(options)
        if not isinstance(processor, str) or not processor:
            raise InvalidArgument(f"processor must be a non-empty name, not {processor!r}")
        check_priority(priority)
        if self.workers and not self._registry.knows(processor):
            raise UnknownProcessor(processor, sorted(self._registry.names()))
        if (items is None) == (source is None):
            raise InvalidArgument("pass either items or source=..., not both and not neither")
        if params is not None and source is None:
            raise InvalidArgument("params are for a source; pass source=... with them")
        stream = item_stream(items, source, params, self._sources)
        if owner is not None and not isinstance(owner, str):
            raise InvalidArgument(f"owner must be a string, not {type(owner).__name__}")
        job = self._new_job(processor, opts, priority, source=source, params=params, owner=owner)
        await self.store.create_job(job)
        if on_created is not None:
            on_created(job)
        await self._fill(job.id, stream, opts)
        return await self.store.get_job(job.id)

    def _options(self, options: JobOptions | Mapping[str, Any] | None) -> JobOptions:
        if options is None:
            return _validated(self.default_options)
        if isinstance(options, JobOptions):
            return _validated(options)
        try:
            return self.default_options.model_copy(
                update=JobOptions.model_validate(
                    {**self.default_options.model_dump(), **options}
                ).model_dump()
            )
        except ValidationError:
            raise
        except TypeError as exc:
            raise InvalidArgument(f"options must be JobOptions or a mapping: {exc}") from exc

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
            await writer.write(stream)
        except Exception as exc:
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
        if not writer.stopped:  # else the job has ended
            await self._seal(job_id)

    def _wake_workers(self, job_id: str) -> None:
        for worker in self.workers:
            worker.wake(job_id)

    async def _abandon(self, job_id: str, message: str, error_type: ErrorType) -> None:
        at = datetime.now(UTC)
        for worker in self.workers:
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
            status=_parse_status(JobStatus, status, "job") if status is not None else None,
            owner=owner,
            limit=limit,
            offset=offset,
        )

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
            else _parse_status(ItemStatus, status, "item") is ItemStatus.FAILED
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
        for worker in self.workers:
            await worker.stop_job(job_id)
        job, changed = await self._lifecycle.cancel(job_id)
        if not changed:
            raise JobNotCancellable(job_id, job.status.value)
        return job

    async def retry_failed(self, job_id: str, *, options: JobOptions | None = None) -> Job:
        """A new job (``retry_of`` set) over exactly the items of ``job_id`` that failed.

        :class:`NothingToRetry` if none failed; :class:`JobNotFinished` while it still runs.
        """
        self._running()
        job = await self.store.get_job(job_id)
        if not job.status.is_terminal:
            raise JobNotFinished(job_id, job.status.value)
        if job.failed_items == 0:
            raise NothingToRetry(job_id)
        if options is None and _unreadable(job):
            raise InvalidArgument(
                f"the stored options of job {job_id!r} cannot be read (see its errors); pass "
                "options=... to retry it"
            )
        opts = _validated(options or job.options)
        # Only a SQLite store written before the range was checked holds a priority outside
        # it; the retry takes the nearest bound, which keeps its place in the order.
        priority = min(max(job.priority, PRIORITY_MIN), PRIORITY_MAX)
        retry = self._new_job(job.type, opts, priority, retry_of=job_id, owner=job.owner)
        await self.store.create_job(retry)
        writer = ItemWriter(self.store, retry.id, opts, on_added=self._wake_workers)
        cursor: int | None = None
        size = opts.batch_size
        while True:
            page = await self.store.read_failed_items(
                job_id, cursor=cursor, limit=size * max(1, ADD_ITEMS // size)
            )
            if page.rows:
                batches: list[Encoded] = [
                    (page.rows[i : i + size], []) for i in range(0, len(page.rows), size)
                ]
                await writer.add(batches)
                await anyio.lowlevel.checkpoint()  # let workers start on what is in
            if page.cursor is None:
                break
            cursor = page.cursor
        await self._seal(retry.id)
        return await self.store.get_job(retry.id)


class _Started:
    """A task status that passes on only the first ``started()`` (a worker served again
    after a failure starts again)."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started(value)


def _parse_status(kind: type[E], status: E | str, what: str) -> E:
    try:
        return kind(status)
    except ValueError:
        raise InvalidArgument(
            f"unknown {what} status {status!r}; use one of {', '.join(s.value for s in kind)}"
        ) from None
