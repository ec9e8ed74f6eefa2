"""Writing a job's items at submit: reading them in chunks, checking and encoding each chunk,
and storing several batches per store call while the next ones are read (group commit)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any

import anyio

from .items import IdType, chunked, duplicate_errors, encode_items
from .models import ProcessingError
from .options import JobOptions
from .store import EncodedItem, JobStore

#: Items one store call adds at most (at least one batch), when they arrive faster than the
#: store takes them.
ADD_ITEMS = 1000

#: A batch of encoded items and the errors of the items of its chunk that were refused.
Encoded = tuple[list[EncodedItem], list[ProcessingError]]


class ItemWriter:
    """Stores the items of one job being submitted; ``on_added(job_id)`` is called after each
    store call that added batches (the pipeline wakes its workers). ``position`` counts the
    items read so far; ``ids`` is the type of the job's ids, fixed by the first item accepted."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        options: JobOptions,
        *,
        on_added: Callable[[str], None],
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.options = options
        self.on_added = on_added
        self.position = 0
        self.ids = IdType()

    async def write(self, stream: Iterable[Any] | AsyncIterable[Any]) -> None:
        """Read every item of ``stream`` and store it; raise what the stream or the store
        raised (the caller ends the job)."""
        # Reading and storing overlap (group commit). The first batch is stored at once, so
        # that the job starts at once; after it, each store call takes every batch read since
        # the last call, up to ADD_ITEMS items. Reading goes on without yielding until the
        # source waits or a call's worth is waiting, so a fast source costs few round trips
        # and a slow one still has its batches stored as soon as it waits. At most two calls'
        # worth (and the batch being read) is held: the call being stored and the next one.
        options = self.options
        per_call = max(1, ADD_ITEMS // options.batch_size)
        send, receive = anyio.create_memory_object_stream[Encoded](per_call)
        failure: Exception | None = None

        async def next_group() -> list[Encoded]:
            """The batches read since the last call, up to a call's worth, waiting for the
            first one; [] once every item is read."""
            try:
                group = [await receive.receive()]
            except anyio.EndOfStream:
                return []
            with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                while len(group) < per_call:
                    group.append(receive.receive_nowait())
            return group

        async def store_batches() -> None:
            nonlocal failure
            with receive:
                try:
                    while group := await next_group():
                        await self.add(group)
                except Exception as exc:
                    failure = exc
                    tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(store_batches)
            try:
                with send:
                    async for chunk in chunked(stream, options.batch_size):
                        batch = encode_items(chunk, options.id_key, self.position, self.ids)
                        first = self.position == 0
                        self.position += len(chunk)
                        if first:  # stored at once, so that the job starts at once
                            await self.add([batch])
                            continue
                        try:
                            send.send_nowait(batch)
                        except anyio.WouldBlock:  # a call's worth is waiting already
                            await send.send(batch)
            except Exception as exc:
                if failure is None:  # else the stream broke because a store call failed
                    failure = exc
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def add(self, batches: Sequence[Encoded]) -> None:
        """Store the batches in one call, then the errors of their refused items in one."""
        rejected = [error for _, errors in batches for error in errors]
        encoded = [items for items, _ in batches if items]
        if encoded:
            duplicates = await self.store.add_batches(self.job_id, encoded)
            if duplicates:
                rejected += duplicate_errors(
                    duplicates, self.options.id_key, integer=self.ids.integer is True
                )
            self.on_added(self.job_id)
        if rejected:
            await self.store.add_errors(self.job_id, rejected, len(rejected))
