"""Writing a job's items at submit: reading them in chunks, checking and encoding each chunk,
and storing several batches per store call while the next ones are read (group commit)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio

from .errors import InvalidArgument, JobClosed, UnknownSource
from .items import ChunkReader, IdType, duplicate_errors, encode_items
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
    items read so far; ``ids`` is the type of the job's ids, fixed by the first item accepted;
    ``stopped`` says whether :meth:`stop` ended the writing early."""

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
        #: True once :meth:`stop` was called (or a store call answered JobClosed).
        self.stopped = False
        self._scope: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Stop writing: the job has ended (or takes no more items). :meth:`write` reads no
        further chunk (one being read is given up), stores nothing more, closes the source and
        returns normally. Callable from any task of the writer's event loop, at any time
        (before :meth:`write` too), more than once."""
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def write(self, stream: Iterable[Any] | AsyncIterable[Any]) -> None:
        """Read every item of ``stream`` and store it, until :meth:`stop`; then close the
        source (a generator). Raise what the stream or the store raised (the caller ends the
        job); a store's :class:`JobClosed` stops the writing instead."""
        # Reading and storing overlap (group commit). The first batch is stored at once, so
        # that the job starts at once; after it, each store call takes every batch read since
        # the last call, up to ADD_ITEMS items. Reading goes on without yielding until the
        # source waits or a call's worth is waiting, so a fast source costs few round trips
        # and a slow one still has its batches stored as soon as it waits. At most two calls'
        # worth (and the batch being read) is held: the call being stored and the next one.
        options = self.options
        per_call = max(1, ADD_ITEMS // options.batch_size)
        send, receive = anyio.create_memory_object_stream[Encoded](per_call)
        reader = ChunkReader(stream, options.batch_size)
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
                except JobClosed:
                    self.stop()
                except Exception as exc:
                    failure = exc
                    tg.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                if self.stopped:
                    tg.cancel_scope.cancel()
                tg.start_soon(store_batches)
                try:
                    with send:
                        while not self.stopped and (chunk := await reader.read()):
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
                except JobClosed:
                    self.stop()
                except Exception as exc:
                    if failure is None:  # else the stream broke because a store call failed
                        failure = exc
                    tg.cancel_scope.cancel()
        finally:
            self._scope = None
            await reader.aclose()
        if failure is not None and not self.stopped:
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


def item_stream(
    items: Iterable[Any] | AsyncIterable[Any] | None,
    source: str | None,
    params: Mapping[str, Any] | None,
    sources: Mapping[str, Callable[[Mapping[str, Any]], AsyncIterable[Any]]],
) -> Iterable[Any] | AsyncIterable[Any]:
    """What ``submit`` reads: ``items``, or the registered ``source`` called with ``params``;
    :class:`InvalidArgument` or :class:`UnknownSource` for a call that is not valid."""
    if (items is None) == (source is None):
        raise InvalidArgument("pass either items or source=..., not both and not neither")
    if params is not None and source is None:
        raise InvalidArgument("params are for a source; pass source=... with them")
    if source is not None:
        factory = sources.get(source)
        if factory is None:
            raise UnknownSource(source, sorted(sources))
        return factory(dict(params or {}))
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (Iterable, AsyncIterable)):
        raise InvalidArgument(f"items must be an iterable of mappings, not {type(items).__name__}")
    return items
