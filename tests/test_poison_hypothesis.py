"""Hypothesis: processors that raise every exception class and return every awkward value.

On MemoryStore and SQLite, on asyncio and trio, with item, sync (threaded) and batch
processors: the job always ends, every item has exactly one final outcome, healthy items
succeed, BaseExceptions fail as ProcessorAborted without retries, results no store can hold
fail as InvalidResult, and the same pipeline then runs a healthy job.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkpipe import ItemStatus, JobOptions, JobStatus, PermanentError, Pipeline
from bulkpipe.store import JobStore
from bulkpipe.stores import MemoryStore, open_store

from .helpers import PATIENCE, outcome_map

EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class CustomBase(BaseException):
    """A processor's own BaseException."""


class CustomError(Exception):
    """An exception whose str() raises."""

    def __str__(self) -> str:
        raise KeyboardInterrupt


def _builtin_exceptions() -> dict[str, Callable[[], BaseException]]:
    """Every builtin BaseException subclass that can be built, by name."""
    special: dict[type[BaseException], tuple[Any, ...]] = {
        UnicodeDecodeError: ("utf-8", b"\xff", 0, 1, "invalid start byte"),
        UnicodeEncodeError: ("utf-8", "\udc80", 0, 1, "surrogates not allowed"),
        UnicodeTranslateError: ("\udc80", 0, 1, "cannot translate"),
        BaseExceptionGroup: ("base group", [KeyboardInterrupt(), ValueError()]),
        ExceptionGroup: ("group", [ValueError("inner")]),
    }
    found: dict[str, Callable[[], BaseException]] = {}
    stack: list[type[BaseException]] = [BaseException]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__ != "builtins":
            continue
        for args in (special.get(cls), ("boom \udc80 \x00",), ()):
            if args is None:
                continue
            try:
                cls(*args)
            except Exception:
                continue
            found[cls.__name__] = lambda cls=cls, args=args: cls(*args)  # type: ignore[misc]
            break
    return found


EXCEPTIONS: dict[str, Callable[[], BaseException]] = {
    **_builtin_exceptions(),
    "CustomBase": lambda: CustomBase("mine"),
    "CustomError": CustomError,
    "CancelledError": asyncio.CancelledError,  # raised by asyncio code; not a cancel of us
    "PermanentError": lambda: PermanentError("never"),
}
assert {"KeyboardInterrupt", "SystemExit", "GeneratorExit", "StopIteration"} <= set(EXCEPTIONS)


def _deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


class _BrokenMapping(dict[str, Any]):
    def items(self) -> Any:
        raise SystemExit(1)


ODD_VALUES: dict[str, Callable[[], Any]] = {
    "deep list": lambda: _deep(5000),
    "deep dict": lambda: {"k": _deep(3000)},
    "bytes": lambda: b"\x00\xff",
    "set": lambda: {1, 2},
    "frozenset": lambda: frozenset({"a"}),
    "object": object,
    "generator": lambda: (i for i in range(3)),
    "huge int": lambda: 10**5000,
    "big int": lambda: 2**200,
    "tuple key": lambda: {(1, 2): 3},
    "int and none keys": lambda: {1: "a", None: "b", 2.5: "c"},
    "complex": lambda: 1j,
    "nan": lambda: math.nan,
    "inf key value": lambda: {"x": -math.inf},
    "broken mapping": lambda: _BrokenMapping(a=1),
    "surrogate pair halves": lambda: "\ud83d\ude00",
    "lone surrogate key": lambda: {"\udfff": 1},
    "nul": lambda: "a\x00b",
    "empty": dict,
}

_chars = st.one_of(
    st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.just("\x00")
)
_text = st.text(_chars, max_size=4)
JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@attrs.frozen
class Raise:
    name: str


@attrs.frozen
class Odd:
    name: str


@attrs.frozen
class Value:
    value: Any


Behaviour = Raise | Odd | Value
BEHAVIOURS = st.one_of(
    st.builds(Value, st.integers()),  # healthy
    st.builds(Raise, st.sampled_from(sorted(EXCEPTIONS))),
    st.builds(Odd, st.sampled_from(sorted(ODD_VALUES))),
    st.builds(Value, JSON_LIKE),
)


def storable(value: Any) -> bool:
    """The oracle: strict JSON that encodes as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except BaseException:
        return False
    return True


def produce(behaviour: Behaviour) -> Any:
    """What one call returns for the item: a value, or an exception instance to raise."""
    if isinstance(behaviour, Raise):
        return EXCEPTIONS[behaviour.name]()
    if isinstance(behaviour, Odd):
        return ODD_VALUES[behaviour.name]()
    return behaviour.value


def aborts(behaviour: Behaviour) -> bool:
    """Whether the item should fail as ProcessorAborted."""
    if not isinstance(behaviour, Raise):
        return False
    exc = EXCEPTIONS[behaviour.name]()
    return not isinstance(exc, (Exception, asyncio.CancelledError))


@attrs.frozen(kw_only=True)
class Scenario:
    behaviours: list[Behaviour]
    shape: str  # "async", "sync", "batch" (exceptions returned), "batch1" (raised, 1 per call)
    batch_size: int
    concurrency: int
    max_retries: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    return Scenario(
        behaviours=draw(st.lists(BEHAVIOURS, min_size=1, max_size=10)),
        shape=draw(st.sampled_from(["async", "sync", "batch", "batch1"])),
        batch_size=draw(st.integers(1, 5)),
        concurrency=draw(st.integers(1, 2)),
        max_retries=draw(st.integers(0, 1)),
    )


def processor_for(scenario: Scenario) -> object:
    def one(item: Mapping[str, Any]) -> Any:
        result = produce(scenario.behaviours[item["n"]])
        if isinstance(result, BaseException):
            raise result
        return result

    async def async_fn(item: Mapping[str, Any]) -> Any:
        await anyio.lowlevel.checkpoint()
        return one(item)

    def sync_fn(item: Mapping[str, Any]) -> Any:
        return one(item)

    class Batch:
        async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
            if scenario.shape == "batch1":
                return [one(item) for item in items]
            return [produce(scenario.behaviours[item["n"]]) for item in items]

    return {"async": async_fn, "sync": sync_fn}.get(scenario.shape) or Batch()


async def check(scenario: Scenario, store: JobStore) -> None:
    count = len(scenario.behaviours)
    options = JobOptions(
        batch_size=scenario.batch_size,
        concurrency=scenario.concurrency,
        item_concurrency=1 if scenario.shape == "batch1" else None,
        max_retries=scenario.max_retries,
        retry_delay=0.0,
        retry_delay_max=0.0,
        progress_interval=0.02,
    )

    async def healthy(item: Mapping[str, Any]) -> int:
        return 1

    with anyio.fail_after(PATIENCE * 3):
        async with Pipeline(
            store=store,
            processors={"p": processor_for(scenario), "healthy": healthy},
            poll_interval=0.05,
        ) as pipeline:
            items = [{"id": f"item-{n}", "n": n} for n in range(count)]
            job = await pipeline.submit("p", items, options=options)
            job = await pipeline.wait(job.id, timeout=PATIENCE)
            outcomes = await outcome_map(pipeline, job.id)  # fails on a second outcome
            assert job.status is JobStatus.COMPLETED
            assert set(outcomes) == {item["id"] for item in items}
            assert job.succeeded_items + job.failed_items == job.total_items == count
            for n, behaviour in enumerate(scenario.behaviours):
                outcome = outcomes[f"item-{n}"]
                if aborts(behaviour):
                    assert outcome.status is ItemStatus.FAILED
                    assert (outcome.error_type, outcome.attempts) == ("ProcessorAborted", 1)
                elif isinstance(behaviour, Raise):
                    assert outcome.status is ItemStatus.FAILED
                    assert outcome.error_type not in ("ProcessorAborted", "InvalidResult")
                else:
                    value = produce(behaviour)
                    if storable(value):
                        assert outcome.status is ItemStatus.SUCCEEDED, outcome.error
                        assert outcome.result == json.loads(json.dumps(value))
                    else:
                        assert outcome.status is ItemStatus.FAILED
                        assert outcome.error_type == "InvalidResult"
            # The worker survived: it runs the next job.
            nxt = await pipeline.submit("healthy", [{"id": n} for n in range(3)])
            nxt = await pipeline.wait(nxt.id, timeout=PATIENCE)
            assert (nxt.status, nxt.succeeded_items) == (JobStatus.COMPLETED, 3)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@EXAMPLES
@given(scenario=scenarios())
def test_poison_never_escapes_and_every_item_gets_one_outcome(
    backend: str, store_kind: str, scenario: Scenario
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = (
            MemoryStore()
            if store_kind == "memory"
            else open_store(f"sqlite:///{Path(tmp) / 'jobs.db'}")
        )
        anyio.run(check, scenario, store, backend=backend)


def test_the_exception_list_covers_the_builtins() -> None:
    assert len(EXCEPTIONS) > 60
    assert all(isinstance(make(), BaseException) for make in EXCEPTIONS.values())
