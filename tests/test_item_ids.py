"""Ids keep their meaning: an id is a string or an integer, and a job's ids keep one type (the
first accepted item's), so ``1`` and ``"1"`` never collide as one stored id ``"1"``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from bulkpipe import ErrorType, ItemStatus, JobStatus, Pipeline
from bulkpipe.items import MAX_ID_BYTES, IdType, encode_items
from bulkpipe.store import JobStore

from .helpers import PATIENCE, QUICK, outcome_map

pytestmark = pytest.mark.anyio


def test_an_id_of_the_other_type_than_the_first_is_refused() -> None:
    encoded, rejected = encode_items([{"id": "a"}, {"id": 1}, {"id": "1"}], "id", 0)
    assert [item_id for item_id, _ in encoded] == ["a", "1"]
    assert [e.error for e in rejected] == [
        "item #2 rejected: its 'id' 1 is an integer but this job's ids are strings (the "
        "first: 'a'); give every item an id of the same type"
    ]
    assert rejected[0].error_type == ErrorType.INVALID_ITEM
    encoded, rejected = encode_items([{"id": 1}, {"id": "1"}, {"id": 2}], "id", 0)
    assert [item_id for item_id, _ in encoded] == ["1", "2"]
    assert [e.error for e in rejected] == [
        "item #2 rejected: its 'id' '1' is a string but this job's ids are integers (the "
        "first: 1); give every item an id of the same type"
    ]


def test_the_type_is_fixed_by_the_first_accepted_item_and_kept_across_chunks() -> None:
    ids = IdType()
    # A refused first item does not fix the type; the first accepted one does.
    encoded, rejected = encode_items([{"id": "x", "v": {1}}, {"id": 5}], "id", 0, ids)
    assert ([i for i, _ in encoded], len(rejected), ids.integer) == (["5"], 1, True)
    encoded, rejected = encode_items([{"id": "5"}, {"id": 6}], "id", 2, ids)
    assert [i for i, _ in encoded] == ["6"]
    assert [e.error.split(":")[0] for e in rejected] == ["item #3 rejected"]
    assert "is a string but this job's ids are integers (the first: 5)" in rejected[0].error


def test_bools_and_floats_are_not_ids() -> None:
    encoded, rejected = encode_items([{"id": True}, {"id": 1.0}, {"id": 1}], "id", 0)
    assert [i for i, _ in encoded] == ["1"]
    assert ["not bool" in rejected[0].error, "not float" in rejected[1].error] == [True, True]


async def test_a_job_refuses_ids_of_the_other_type_across_batches(any_store: JobStore) -> None:
    seen: list[Any] = []

    async def echo(item: Mapping[str, Any]) -> Any:
        seen.append(item["id"])
        return item["n"]

    items = [{"id": 1, "n": 1}, {"id": "1", "n": 2}, {"id": 2, "n": 3}, {"id": 1, "n": 4}]
    async with Pipeline(any_store, processors={"echo": echo}, default_options=QUICK) as p:
        job = await p.submit("echo", items, options={"batch_size": 1})
        job = await p.wait(job.id, timeout=PATIENCE)
        outcomes = await outcome_map(p, job.id)
    assert (job.status, job.total_items, job.rejected_items) == (JobStatus.COMPLETED, 2, 2)
    assert {i: o.result for i, o in outcomes.items()} == {"1": 1, "2": 3}
    assert sorted(seen) == [1, 2]  # the processor gets the item as submitted: an integer id
    errors = sorted(e.error for e in job.errors)
    assert errors == [
        "item #2 rejected: its 'id' '1' is a string but this job's ids are integers (the "
        "first: 1); give every item an id of the same type",
        "item rejected: repeated id 1; the first item with it is kept",
    ]


async def test_a_string_first_job_refuses_integer_ids_from_a_stream(any_store: JobStore) -> None:
    async def stream() -> AsyncIterator[dict[str, Any]]:
        for n in range(6):
            yield {"id": n if n % 2 else f"s{n}"}

    async def echo(item: Mapping[str, Any]) -> int:
        return 0

    async with Pipeline(any_store, processors={"echo": echo}, default_options=QUICK) as p:
        job = await p.submit("echo", stream(), options={"batch_size": 2})
        job = await p.wait(job.id, timeout=PATIENCE)
        outcomes = await outcome_map(p, job.id)
    assert set(outcomes) == {"s0", "s2", "s4"}
    assert job.rejected_items == 3
    assert all("is an integer but this job's ids are strings" in e.error for e in job.errors)


async def test_the_longest_integer_id_is_stored_and_a_retry_keeps_integer_ids(
    any_store: JobStore,
) -> None:
    longest = 10 ** (MAX_ID_BYTES - 1)
    seen: list[Any] = []

    async def fails_once(item: Mapping[str, Any]) -> str:
        seen.append(item["id"])
        if len(seen) <= 2:
            raise ValueError("first time")
        return "ok"

    items = [{"id": longest}, {"id": -3}]
    async with Pipeline(any_store, processors={"p": fails_once}, default_options=QUICK) as p:
        job = await p.submit("p", items, options={"max_retries": 0})
        job = await p.wait(job.id, timeout=PATIENCE)
        assert (job.failed_items, job.rejected_items) == (2, 0)
        retry = await p.retry_failed(job.id)
        retry = await p.wait(retry.id, timeout=PATIENCE)
        outcomes = await outcome_map(p, retry.id)
    assert retry.succeeded_items == 2
    assert set(outcomes) == {str(longest), "-3"}
    assert all(o.status is ItemStatus.SUCCEEDED for o in outcomes.values())
    assert sorted(seen[2:]) == [-3, longest]  # the retry's items are the stored ones: ints
