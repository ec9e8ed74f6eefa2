"""Processor plug-ins: what a processor may be, and how bulkpipe calls it."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import attrs

from .errors import InvalidArgumentType, UnknownProcessor

log = logging.getLogger("bulkpipe.processors")

#: The entry-point group where installed processors are found by name.
ENTRY_POINT_GROUP = "bulkpipe.processors"

Item = Mapping[str, Any]


@runtime_checkable
class ItemProcessor(Protocol):
    """An object that processes one item at a time."""

    async def process(self, item: Item) -> Any:
        """Return the item's result, or raise (``PermanentError`` to skip retries)."""


@runtime_checkable
class BatchProcessor(Protocol):
    """An object that processes a whole batch in one call (for scorers that vectorise)."""

    async def process_batch(self, items: Sequence[Item]) -> Sequence[Any]:
        """Return one result per item, in order; an exception instance fails that item."""


#: Anything :meth:`Pipeline.register` accepts: an async or sync function ``item -> result``, an
#: :class:`ItemProcessor` or a :class:`BatchProcessor`. A function or method that takes a
#: keyword argument ``attempt`` is passed the attempt number (1 for the first).
ProcessorLike = ItemProcessor | BatchProcessor | Callable[..., Any]


@attrs.frozen(kw_only=True)
class Adapted:
    """A processor reduced to the one call shape the scheduler uses."""

    name: str
    target: object
    call: Callable[..., Awaitable[Any]]  # (item) or (items) -> result(s)
    batched: bool
    wants_attempt: bool
    #: The sync function itself (None for an async one): the runner calls it in threads of its
    #: own (:mod:`bulkpipe.threads`), so that abandoned calls keep counting against the bound.
    sync: Callable[..., Any] | None = None


def _accepts_attempt(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("attempt")
    return param is not None and param.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ on an instance
    )


def adapt(name: str, processor: object) -> Adapted:
    """Check a processor once, at registration, and return how to call it."""
    if inspect.isclass(processor):  # its process() would be unbound: every item would fail
        raise InvalidArgumentType(
            f"processor {name!r} is the class {processor.__name__}; register an instance of it"
        )
    batch_fn = getattr(processor, "process_batch", None)
    if callable(batch_fn):
        return Adapted(
            name=name,
            target=processor,
            call=batch_fn if _is_async(batch_fn) else _threaded(batch_fn),
            batched=True,
            wants_attempt=_accepts_attempt(batch_fn),
            sync=None if _is_async(batch_fn) else batch_fn,
        )
    fn = getattr(processor, "process", None)
    if not callable(fn):
        if inspect.isclass(processor) or not callable(processor):
            raise InvalidArgumentType(
                f"processor {name!r} must be an async or sync function of one item, or an "
                "object with a process(item) or process_batch(items) method; got "
                f"{type(processor).__name__}"
            )
        fn = processor
    return Adapted(
        name=name,
        target=processor,
        call=fn if _is_async(fn) else _threaded(fn),
        batched=False,
        wants_attempt=_accepts_attempt(fn),
        sync=None if _is_async(fn) else fn,
    )


class HookAborted(Exception):
    """A processor's ``setup()`` or ``teardown()`` raised a BaseException that is not an
    Exception (SystemExit, KeyboardInterrupt...): it fails like any failing hook, instead of
    ending the worker."""


async def _hook(hook: Callable[[], Any], name: str) -> None:
    """Run a processor's ``setup``/``teardown`` hook; a BaseException other than cancellation
    comes back as :class:`HookAborted`."""
    try:
        await _maybe_await(hook())
    except anyio.get_cancelled_exc_class():
        raise
    except Exception:
        raise
    except BaseException as exc:
        what = getattr(hook, "__name__", "hook")
        raise HookAborted(
            f"{what}() of processor {name!r} raised {type(exc).__name__}: {exc}"
        ) from exc


class ThreadAborted(Exception):  # internal, unwrapped by the runner
    """A sync processor raised a BaseException that is not an Exception (SystemExit,
    KeyboardInterrupt, GeneratorExit...) in its worker thread; ``original`` is what it raised.

    It crosses back to the event loop wrapped: asyncio cannot hand a GeneratorExit from a
    thread's future to the awaiting coroutine without breaking that coroutine.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__} raised in a worker thread")
        self.original = original


def _guarded(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception:
        raise
    except BaseException as exc:
        raise ThreadAborted(exc) from exc


def _threaded(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a sync processor in anyio's worker threads (bounded by its default limiter). The
    runner does not use this: its lanes call :attr:`Adapted.sync` through
    :class:`bulkpipe.threads.LaneThread`, which bounds threads by the job's bound."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        # Abandoned on cancel: a hung call cannot hold up cancel() or a timeout (the thread
        # itself runs on to its end; Python cannot stop a thread).
        return await anyio.to_thread.run_sync(
            partial(_guarded, fn, args, kwargs), abandon_on_cancel=True
        )

    return call


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


class ProcessorRegistry:
    """Named processors, found by registration or by entry point; set up once, torn down once."""

    def __init__(self, processors: Mapping[str, object] | None = None) -> None:
        self._adapted: dict[str, Adapted] = {}
        self._ready: set[str] = set()
        self._lock = anyio.Lock()
        for name, processor in (processors or {}).items():
            self.register(name, processor)

    def register(self, name: str, processor: object) -> None:
        """Register ``processor`` under ``name``, replacing an earlier one."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentType(
                f"a processor name must be a non-empty string, not {name!r}; "
                "register it under the name jobs will use, e.g. register('resize', resize)"
            )
        self._adapted[name] = adapt(name, processor)
        self._ready.discard(name)

    def installed(self) -> list[str]:
        """Names of processors installed as entry points (not loaded)."""
        return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))

    def names(self) -> set[str]:
        """Every name this registry can serve: registered and installed."""
        return set(self._adapted) | set(self.installed())

    def names_with(self, installed: set[str]) -> set[str]:
        """Registered names plus ``installed`` (entry-point names read once by the caller)."""
        return set(self._adapted) | installed

    def knows(self, name: str) -> bool:
        """Whether ``name`` is registered or installed."""
        return name in self._adapted or name in self.installed()

    def resolve(self, name: str) -> Adapted:
        """The processor called ``name``, loading its entry point on first use."""
        adapted = self._adapted.get(name)
        if adapted is not None:
            return adapted
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            loaded = ep.load()
            self.register(name, loaded() if inspect.isclass(loaded) else loaded)
            return self._adapted[name]
        raise UnknownProcessor(name, sorted(self.names()))

    async def ready(self, name: str) -> Adapted:
        """Resolve ``name`` and run its ``setup()`` hook once."""
        adapted = self.resolve(name)
        if name not in self._ready:
            async with self._lock:
                if name not in self._ready:
                    setup = getattr(adapted.target, "setup", None)
                    if callable(setup):
                        await _hook(setup, name)
                    self._ready.add(name)
        return adapted

    async def teardown(self) -> None:
        """Run the ``teardown()`` hook of every processor that was set up; one that raises is
        logged and the others still run."""
        for name in sorted(self._ready):
            teardown = getattr(self._adapted[name].target, "teardown", None)
            if callable(teardown):
                try:
                    await _hook(teardown, name)
                except Exception:
                    log.exception("processor %r: teardown() failed", name)
        self._ready.clear()
