"""Bad items are refused one by one at submit, the same on every store (issue 13, finding 6).

Ids and payloads that are not valid UTF-8 text (lone surrogates), NUL in an id and ids over
``MAX_ID_BYTES`` used to fail the whole submission in a SQL store (or, on PostgreSQL, retry for
seconds and then blame the server); now each is refused with its reason, and the rest run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkpipe import ErrorType, JobStatus, Pipeline
from bulkpipe.http import create_app
from bulkpipe.items import MAX_ID_BYTES, encode_items
from bulkpipe.store import JobStore
from bulkpipe.stores import MemoryStore

from .helpers import PATIENCE, QUICK, outcome_map

pytestmark = pytest.mark.anyio

#: (label, item, words the rejection must contain)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("surrogate id", {"id": "bad\udc80"}, "lone surrogate"),
    ("surrogate payload", {"id": "p-surrogate", "v": "bad\udc80"}, "lone surrogate"),
    ("surrogate key", {"id": "k-surrogate", "bad\ud800": 1}, "lone surrogate"),
    ("NUL id", {"id": "nul\x00id"}, "NUL"),
    ("8 KB id", {"id": "x" * 8000}, f"at most {MAX_ID_BYTES} bytes"),
    ("random 8 KB id", {"id": "".join(chr(48 + (i * 7919) % 75) for i in range(8000))}, "bytes"),
    ("multi-byte id over the limit", {"id": "é" * (MAX_ID_BYTES // 2 + 1)}, "bytes long"),
    ("huge integer id", {"id": 10**MAX_ID_BYTES}, "digits"),
]

#: Items every store must take: the longest id, multi-byte text, NUL inside a payload (the
#: longest integer id is in test_item_ids.py: a job's ids are all strings or all integers).
GOOD: list[dict[str, Any]] = [
    {"id": "a" * MAX_ID_BYTES},
    {"id": "é" * (MAX_ID_BYTES // 2), "v": "ünïcødé ✓ 𝄞"},
    {"id": "nul-in-payload", "v": "a\x00b"},
    *({"id": f"good-{n}", "n": n} for n in range(20)),
]


async def echo(item: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": item.get("v")}


@pytest.fixture
def store(any_store: JobStore) -> JobStore:
    """A fresh, unopened store of each kind."""
    return any_store


def _mixed() -> list[dict[str, Any]]:
    mixed: list[dict[str, Any]] = []
    for n, good in enumerate(GOOD):
        mixed.append(good)
        if n < len(BAD):
            mixed.append(BAD[n][1])
    return mixed


async def test_each_bad_item_is_refused_and_the_good_ones_run(store: JobStore) -> None:
    async with Pipeline(store, processors={"echo": echo}, default_options=QUICK) as pipeline:
        job = await pipeline.submit("echo", _mixed(), options={"batch_size": 4})
        job = await pipeline.wait(job.id, timeout=PATIENCE * 3)
        assert job.status is JobStatus.COMPLETED
        assert job.rejected_items == len(BAD)
        assert (job.total_items, job.succeeded_items) == (len(GOOD), len(GOOD))
        outcomes = await outcome_map(pipeline, job.id)
        assert set(outcomes) == {str(item["id"]) for item in GOOD}
        assert outcomes["nul-in-payload"].result == {"v": "a\x00b"}
        assert outcomes["é" * (MAX_ID_BYTES // 2)].result == {"v": "ünïcødé ✓ 𝄞"}
        errors = [e for e in job.errors if e.error_type == ErrorType.INVALID_ITEM]
        assert len(errors) == len(BAD)
        for error, (label, _, words) in zip(errors, BAD, strict=True):
            assert words in error.error, (label, error.error)
            assert len(error.error) < 300, label  # an 8 KB id is not echoed whole


async def test_a_submission_of_only_bad_items_makes_an_empty_job(store: JobStore) -> None:
    async with Pipeline(store, processors={"echo": echo}, default_options=QUICK) as pipeline:
        job = await pipeline.submit("echo", [item for _, item, _ in BAD])
        job = await pipeline.wait(job.id, timeout=PATIENCE)
        assert (job.status, job.total_items, job.rejected_items) == (
            JobStatus.COMPLETED,
            0,
            len(BAD),
        )


@given(st.text(max_size=40), st.text(max_size=40))
def test_an_accepted_item_always_encodes_as_utf8(item_id: str, value: str) -> None:
    encoded, rejected = encode_items([{"id": item_id, "v": value}], "id", 0)
    assert len(encoded) + len(rejected) == 1
    for stored_id, payload in encoded:
        stored_id.encode("utf-8")
        payload.encode("utf-8")
        assert "\x00" not in stored_id
    if item_id and "\x00" not in item_id:
        try:
            (item_id + value).encode("utf-8")
        except UnicodeEncodeError:
            assert rejected
        else:
            assert encoded


async def test_http_submit_refuses_bad_items_one_by_one() -> None:
    async with Pipeline(MemoryStore(), processors={"echo": echo}, default_options=QUICK) as p:
        transport = httpx.ASGITransport(app=create_app(p))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # \udc80 and \u0000 as JSON escapes: valid JSON that parses to a lone surrogate / NUL
            body = '{"processor": "echo", "items": [{"id": "ok"}, {"id": "bad\\udc80"}, ' + (
                '{"id": "nul\\u0000"}, {"id": "p", "v": "\\ud800"}]}'
            )
            response = await client.post(
                "/jobs", content=body, headers={"content-type": "application/json"}
            )
        assert response.status_code == 201, response.text
        job = await p.wait(response.json()["id"], timeout=PATIENCE)
    assert (job.total_items, job.rejected_items, job.succeeded_items) == (1, 3, 1)
