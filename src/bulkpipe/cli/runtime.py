"""Running a command's async part: the event loop, Ctrl-C, opening the store, plug-ins."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final, TypeVar

import anyio

from ..errors import StoreError
from ..pipeline import Pipeline, Source
from ..store import JobStore
from ..stores import open_store
from .errors import InputError, Interrupted, redact, single_leaf

T = TypeVar("T")

#: The entry-point group where ``submit --source NAME`` finds item sources.
SOURCE_GROUP: Final = "bulkpipe.sources"


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` on an event loop and return its result.

    Ctrl-C cancels it, so ``async with`` blocks close cleanly (in-process workers hand their
    batches back), and then raises :class:`Interrupted`. A lone exception is unwrapped from
    the exception groups that task groups raise.
    """
    try:
        return anyio.run(_interruptible, fn)
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is group:
            raise
        raise leaf from leaf.__cause__


async def _interruptible(fn: Callable[[], Awaitable[T]]) -> T:
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return await fn()  # no signal receivers there: Ctrl-C raises KeyboardInterrupt
    results: list[T] = []
    interrupted = False
    async with anyio.create_task_group() as tg:

        async def on_sigint() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_sigint)
        results.append(await fn())
        tg.cancel_scope.cancel()
    if interrupted or not results:
        raise Interrupted()
    return results[0]


def open_cli_store(url: str) -> JobStore:
    """The store at ``url`` (not opened yet); a missing driver is a clear StoreError."""
    try:
        return open_store(url)
    except ImportError as exc:
        raise StoreError(f"cannot open the store {redact(url)}: {exc}") from exc


def connect(
    url: str,
    *,
    workers: int = 0,
    sources: Mapping[str, Source] | None = None,
    submit_lease: float = 30.0,
) -> Pipeline:
    """A pipeline on the store at ``url``: ``workers=0`` submits and reads only."""
    return Pipeline(
        store=open_cli_store(url), workers=workers, sources=sources, submit_lease=submit_lease
    )


def installed_sources() -> list[EntryPoint]:
    """The item sources installed as ``bulkpipe.sources`` entry points, by name."""
    return sorted(entry_points(group=SOURCE_GROUP), key=lambda ep: ep.name)


def load_source(name: str) -> Source:
    """The installed item source called ``name``."""
    installed = installed_sources()
    found = [ep for ep in installed if ep.name == name]
    if not found:
        known = ", ".join(ep.name for ep in installed) or "none"
        raise InputError(
            f"unknown item source {name!r}; install one as a {SOURCE_GROUP!r} entry point "
            f"(installed: {known})"
        )
    source: Any = found[0].load()
    return source  # type: ignore[no-any-return]
