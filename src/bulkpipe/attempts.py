"""Attempts at running items: calling the processor, retrying with backoff, and turning what it
returned or raised into an outcome row (a result encoded by :mod:`bulkpipe.results`, or a
failure with its error type).

Nothing here knows about lanes, leases or recording: the runner hands items (or, for
``process_batch``, a batch's items) to :class:`Attempts` and records the rows it gets back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .batches import OpenBatch
from .error_types import ErrorType
from .errors import PermanentError
from .options import JobOptions
from .processors import Adapted, ThreadAborted
from .results import describe, encode_result, storable_text, type_name
from .retry import backoff_delay
from .store import OutcomeRow
from .threads import LaneThread

#: How a processor is called: ``(item)`` or ``(items)``, with ``attempt=`` if it takes one.
Call = Callable[..., Awaitable[Any]]


def _own_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a processor call, is the processor's failure rather than a
    cancellation of this task: anything but anyio's cancellation exception, and even that when
    it is an asyncio CancelledError raised while the task is not being cancelled (a future
    cancelled elsewhere). Re-raised instead, such an error would end the lane (or the worker)
    and leave its batch unfinished."""
    if isinstance(exc, Exception) or not isinstance(exc, anyio.get_cancelled_exc_class()):
        return True
    if not isinstance(exc, asyncio.CancelledError):  # trio's Cancelled: only trio raises it
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # pragma: no cover - on asyncio, there is a loop
        return True
    return task is not None and task.cancelling() == 0


def _unwrap(exc: BaseException) -> BaseException:
    """The processor's own exception, out of the wrapper a sync processor's thread adds."""
    return exc.original if isinstance(exc, ThreadAborted) else exc


def _retried(exc: BaseException) -> bool:
    """Whether a processor failure may be retried: an Exception other than PermanentError,
    or a stray asyncio CancelledError. Other BaseExceptions (ProcessorAborted) are final."""
    if isinstance(exc, Exception):
        return not isinstance(exc, (PermanentError, ThreadAborted))
    return isinstance(exc, asyncio.CancelledError)


def _failed(
    item_id: str, exc: BaseException, attempts: int, started: float, verb: str = "raised"
) -> OutcomeRow:
    """The failed outcome of a processor's exception (raised, or returned by process_batch)."""
    exc = _unwrap(exc)
    if isinstance(exc, (Exception, asyncio.CancelledError)):
        return _fail(item_id, exc, type_name(exc), attempts, started)
    message = (
        f"the processor {verb} {type_name(exc)} ({describe(exc)}), a BaseException that is "
        "not an Exception; the item failed without retries. Raise an Exception to fail an "
        "item (PermanentError to skip retries)"
    )
    return _fail(item_id, message, ErrorType.PROCESSOR_ABORTED, attempts, started)


def _fail(
    item_id: str, exc: BaseException | str, error_type: str, attempts: int, started: float
) -> OutcomeRow:
    """A failed outcome with ``exc`` (or a message) as its error."""
    message = storable_text(exc) if isinstance(exc, str) else describe(exc)
    return OutcomeRow(item_id, False, None, message, error_type, attempts, started, time.time())


def _encode_result(item_id: str, result: Any, attempts: int, started: float) -> OutcomeRow:
    """The succeeded outcome of ``result``, or InvalidResult if it cannot be stored."""
    if result is None:
        return OutcomeRow(item_id, True, "null", None, None, attempts, started, time.time())
    try:
        payload = encode_result(result)
    except BaseException as exc:  # sync: whatever the result's own code raises
        return _fail(
            item_id,
            f"the processor's result is not JSON-serialisable ({type_name(exc)}: "
            f"{describe(exc)}); return dicts with string keys, lists, strings (valid "
            "Unicode: no lone surrogates), finite numbers, booleans or None, not nested "
            "hundreds of levels deep",
            ErrorType.INVALID_RESULT,
            attempts,
            started,
        )
    return OutcomeRow(item_id, True, payload, None, None, attempts, started, time.time())


def _result_list(results: Any, expected: int) -> list[Any] | str:
    """process_batch's results as a list, or why they are not one result per item."""
    try:
        if isinstance(results, Sequence) and not isinstance(results, (str, bytes, bytearray)):
            listed = list(results)
            if len(listed) == expected:
                return listed
            got = str(len(listed))
        else:
            got = type(results).__name__
    except BaseException as exc:  # a broken Sequence: its own code raised
        got = f"{type(results).__name__} (that raised {type_name(exc)} when read)"
    return storable_text(
        f"process_batch returned {got} results for {expected} items; it must return one "
        "result (or exception) per item, in order"
    )


class BatchCall:
    """The items of one batch that a run of ``process_batch`` attempts covers, and how far it
    got (read when the batch times out)."""

    __slots__ = ("attempt", "pending", "started")

    def __init__(self, pending: list[int]) -> None:
        self.pending = pending  # indexes into the batch's items still without an outcome
        self.attempt = 0
        self.started = time.time()


class Attempts:
    """Runs items through one job's processor under its options: ``item_timeout`` per
    attempt, up to ``max_retries`` retries of retryable failures with backoff."""

    __slots__ = ("options", "processor", "rng")

    def __init__(self, processor: Adapted, options: JobOptions, rng: random.Random) -> None:
        self.processor = processor
        self.options = options
        self.rng = rng

    async def run_item(
        self, item_id: str, item: Any, thread: LaneThread | None = None
    ) -> OutcomeRow:
        """Attempt one item until it succeeds or fails for good; its outcome row. A sync
        processor is called on the lane's ``thread``; an attempt's ``item_timeout`` starts once
        the thread of the one before (timed out) has returned."""
        options = self.options
        call = self.processor.call if thread is None else thread.call
        wants_attempt = self.processor.wants_attempt
        item_timeout = options.item_timeout
        started = time.time()
        attempt = 0
        while True:
            attempt += 1
            if thread is not None and thread.busy:
                await thread.wait()
            try:
                if item_timeout is not None:
                    with anyio.fail_after(item_timeout):
                        result = await (
                            call(item, attempt=attempt) if wants_attempt else call(item)
                        )
                elif wants_attempt:
                    result = await call(item, attempt=attempt)
                else:
                    result = await call(item)
            except BaseException as exc:
                if not _own_error(exc):
                    raise
                if attempt > options.max_retries or not _retried(exc):
                    return _failed(item_id, exc, attempt, started)
                await anyio.sleep(
                    backoff_delay(attempt, options.retry_delay, options.retry_delay_max, self.rng)
                )
                continue
            return _encode_result(item_id, result, attempt, started)

    async def run_batch(
        self, batch: OpenBatch, call: BatchCall, thread: LaneThread | None = None
    ) -> None:
        """One ``process_batch`` call per attempt over ``call.pending``; retry the items that
        failed and may be retried. Final rows go to ``batch.rows`` as each attempt ends. A
        sync processor is called on ``thread``, as for :meth:`run_item`."""
        options = self.options
        fn = self.processor.call if thread is None else thread.call
        started = call.started
        while call.pending:
            call.attempt = attempt = call.attempt + 1
            pending = call.pending
            retry: list[int] = []
            final: list[OutcomeRow] = []
            error: BaseException | None = None
            results: Any = None
            if thread is not None and thread.busy:
                await thread.wait()
            try:
                args = [batch.items[i] for i in pending]
                if options.item_timeout is not None:
                    with anyio.fail_after(options.item_timeout):
                        results = await self._call_batch(fn, args, attempt)
                else:
                    results = await self._call_batch(fn, args, attempt)
            except BaseException as exc:
                if not _own_error(exc):
                    raise
                error = exc
            listed: list[Any] | str = []
            if error is None:
                listed = _result_list(results, len(pending))
            if isinstance(listed, str):
                final = [
                    _fail(batch.ids[i], listed, ErrorType.INVALID_RESULT, attempt, started)
                    for i in pending
                ]
            elif error is not None:
                if attempt > options.max_retries or not _retried(error):
                    final = [_failed(batch.ids[i], error, attempt, started) for i in pending]
                else:
                    retry = pending
            else:
                for i, result in zip(pending, listed, strict=True):
                    if isinstance(result, BaseException):
                        if attempt > options.max_retries or not _retried(result):
                            final.append(
                                _failed(batch.ids[i], result, attempt, started, "returned")
                            )
                        else:
                            retry.append(i)
                    else:
                        final.append(_encode_result(batch.ids[i], result, attempt, started))
            batch.rows.extend(final)
            batch.left -= len(final)
            call.pending = retry
            if retry:
                await anyio.sleep(
                    backoff_delay(attempt, options.retry_delay, options.retry_delay_max, self.rng)
                )

    async def _call_batch(self, fn: Call, items: list[Any], attempt: int) -> Any:
        """One process_batch call."""
        if self.processor.wants_attempt:
            return await fn(items, attempt=attempt)
        return await fn(items)
