"""Refusing a job that nothing serves: a processor name that neither the submitting pipeline
nor any live worker of the store knows is most likely a typo, and the job would wait for ever.
"""

from __future__ import annotations

from .errors import UnknownProcessor
from .processors import ProcessorRegistry
from .store import JobStore


async def check_served(
    processor: str, registry: ProcessorRegistry, store: JobStore, *, allow_unserved: bool
) -> None:
    """Raise :class:`UnknownProcessor` unless ``registry`` (the pipeline's own) or a live
    worker registered in ``store`` serves ``processor``, or ``allow_unserved`` says a worker
    that serves it is expected to come. The store is asked only when ``registry`` does not
    know the name (one call per submit, never per item)."""
    if allow_unserved or registry.knows(processor):
        return
    workers = await store.list_workers()
    if any(processor in worker.processors for worker in workers):
        return
    known = registry.names().union(*(worker.processors for worker in workers))
    raise UnknownProcessor(processor, sorted(known))
