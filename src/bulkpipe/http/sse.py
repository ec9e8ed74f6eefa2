"""Server-sent events of a job's progress, and JSON Lines of its outcomes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import BulkpipeError
from ..models import ItemOutcome, ItemStatus, Job
from ..pipeline import Pipeline

#: About how many bytes of outcome lines an NDJSON stream sends at a time.
_CHUNK = 64 * 1024

log = logging.getLogger("bulkpipe.http")

#: Event names: a snapshot of a job still running, its terminal snapshot, and a failure.
PROGRESS, END, ERROR = "progress", "end", "error"


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that ends cleanly, with a proper end of the body, when
    its events end, when the client goes away, or when ``stop`` is set (the server is
    shutting down: waiting for a job to end could take hours)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], stop: anyio.Event) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.stop = stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        gone = False

        async def client_gone() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_after, self.stop.wait, tg.cancel_scope)
                tg.start_soon(_cancel_after, client_gone, tg.cancel_scope)
                async for chunk in self.events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                tg.cancel_scope.cancel()
        finally:
            await _close(self.events)
        if not gone:
            with contextlib.suppress(OSError):  # the client left as the stream ended
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_after(wait: Callable[[], Awaitable[object]], scope: anyio.CancelScope) -> None:
    await wait()
    scope.cancel()


async def _close(iterator: AsyncIterator[object]) -> None:
    # Close a generator at once when the stream stops early, not at garbage collection.
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


def event(name: str, data: str) -> bytes:
    """One server-sent event; ``data`` must be one line (compact JSON is)."""
    return f"event: {name}\ndata: {data}\n\n".encode()


async def job_events(
    pipeline: Pipeline, job_id: str, interval: float | None
) -> AsyncIterator[bytes]:
    """``progress`` events at least every ``interval`` seconds, then the ``end`` event."""
    snapshots = pipeline.watch(job_id, interval=interval)
    try:
        async for job in snapshots:
            yield _snapshot(job)
    except BulkpipeError as exc:
        # The response has started, so the status cannot change: say so in the stream and end.
        log.error("event stream of job %s failed: %s", job_id, exc, exc_info=exc)
        yield event(ERROR, '{"detail": "the event stream failed; the server log has the cause"}')
    finally:
        await _close(snapshots)


def _snapshot(job: Job) -> bytes:
    return event(END if job.status.is_terminal else PROGRESS, job.model_dump_json())


async def outcome_lines(
    pipeline: Pipeline,
    job_id: str,
    *,
    status: ItemStatus | None,
    cursor: int | None,
    page_size: int,
    page_bytes: int | None = None,
) -> AsyncIterator[bytes]:
    """Every outcome recorded so far from ``cursor`` on, one JSON object per line, read with
    :meth:`Pipeline.outcome_page` (``page_size`` rows and at most ``page_bytes``, or one larger
    row). Lines go out in chunks of about :data:`_CHUNK` bytes; a larger line goes alone,
    uncopied."""
    to_json = ItemOutcome.__pydantic_serializer__.to_json
    while True:
        page = await pipeline.outcome_page(
            job_id, status=status, cursor=cursor, limit=page_size, max_bytes=page_bytes
        )
        cursor = page.cursor
        chunk: list[bytes] = []
        size = 0
        for row in page.rows:
            line = to_json(row)
            if len(line) >= _CHUNK:
                if chunk:
                    yield b"".join(chunk)
                    chunk, size = [], 0
                yield line
                yield b"\n"
                continue
            chunk += (line, b"\n")
            size += len(line) + 1
            if size >= _CHUNK:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)
        if cursor is None:
            return
