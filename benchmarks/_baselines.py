"""The baselines that ``benchmarks/overhead.py`` measures bulkpipe against.

Each baseline runs an async processor over an iterable of items with a fixed number of items
in flight and returns how many items it processed, so the caller can check it did the whole
job. None of them retries, records outcomes or reports progress: they are the floor that
bulkpipe's bookkeeping is measured against.

* :func:`bare_pool`: the plainest anyio design, a fixed pool of worker tasks pulling items
  from a memory object stream fed by one producer task.
* :func:`aiometer_amap`: ``aiometer.amap`` with ``max_at_once``, a popular library that does
  the same job.
* :func:`seed_port`: the design of the seed this project replaces: the items are cut into
  batches, every item of a batch is started at once, and the next batch starts only when the
  whole batch has settled (the batch is a barrier). With one batch in flight, slow items leave
  the rest of the slots idle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import anyio

Item = dict[str, Any]
Processor = Callable[[Item], Awaitable[object]]


async def bare_pool(processor: Processor, items: Iterable[Item], in_flight: int) -> int:
    """Run ``processor`` over ``items`` with a pool of ``in_flight`` worker tasks.

    One producer task feeds the items into a memory object stream (buffered to ``in_flight``
    items); each worker takes the next item as soon as it is done with the previous one.
    Returns the number of items processed. An exception from the processor propagates.
    """
    send, receive = anyio.create_memory_object_stream[Item](max_buffer_size=in_flight)
    processed = 0

    async def producer() -> None:
        async with send:
            for item in items:
                await send.send(item)

    async def worker() -> None:
        nonlocal processed
        async for item in receive:
            await processor(item)
            processed += 1

    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(producer)
        for _ in range(in_flight):
            tg.start_soon(worker)
    return processed


async def aiometer_amap(processor: Processor, items: Iterable[Item], in_flight: int) -> int:
    """Run ``processor`` over ``items`` with ``aiometer.amap(..., max_at_once=in_flight)``.

    ``amap`` takes a sequence, so the items are first gathered into a list (inside the timed
    region, as the other contenders build their items while they run). Returns the number of
    results received.
    """
    import aiometer  # imported here so that the other baselines work without it

    item_list = list(items)
    received = 0
    async with aiometer.amap(processor, item_list, max_at_once=in_flight) as results:
        async for _ in results:
            received += 1
    return received


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


async def seed_port(processor: Processor, items: Iterable[Item], batch_size: int) -> int:
    """Run ``processor`` over ``items`` the way the seed did, with one batch in flight.

    The seed's ``processBatches`` with ``concurrency=1`` awaits each batch before the next,
    and a batch is ``Promise.allSettled`` over all of its items: every item of the batch
    starts at once, each result or error is kept, and the batch ends when its slowest item
    does. Here a batch is an anyio task group. Returns the number of items settled.
    """
    settled = 0
    for batch in _batches(items, batch_size):
        outcomes: list[object] = [None] * len(batch)

        async def settle(index: int, item: Item, outcomes: list[object] = outcomes) -> None:
            try:
                outcomes[index] = await processor(item)
            except Exception as exc:  # allSettled: an item's error is its outcome
                outcomes[index] = exc

        async with anyio.create_task_group() as tg:
            for index, item in enumerate(batch):
                tg.start_soon(settle, index, item)
        settled += len(outcomes)
    return settled
