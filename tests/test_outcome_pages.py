"""Outcome pages carry a byte budget as well as a row limit (issue 13, finding 8).

A page of 30 results of 10 MB used to peak at 1.36 GB in the server (1.88 GB as NDJSON): pages
were bounded by rows only. Now ``JobStore.read_outcomes(max_bytes=...)`` ends a page before the
row that would take it over the budget (keeping at least one row), on every store, and the HTTP
routes and ``Pipeline.outcomes`` read with a budget.

The store-level rules (where a page ends on each store) are in the contract suite
(``bulkpipe.testing.StoreContract``, ``contract/pages.py``); this file keeps what the pipeline
and the HTTP server do with them, on the three stores.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from bulkpipe import InvalidArgument, ItemOutcome, ItemStatus, Pipeline
from bulkpipe.http import create_app
from bulkpipe.http.sse import outcome_lines
from bulkpipe.pipeline import OUTCOME_PAGE_BYTES
from bulkpipe.store import JobStore, OutcomeRow, Page
from bulkpipe.testing import add_job, claim, ok_row, report

pytestmark = pytest.mark.anyio

MB = 1 << 20


@pytest.fixture
async def store(any_store: JobStore) -> AsyncIterator[JobStore]:
    """A fresh, open store of each kind."""
    await any_store.open()
    try:
        yield any_store
    finally:
        await any_store.close()


async def job_with(store: JobStore, rows: list[OutcomeRow]) -> str:
    """A job whose items have ``rows`` as outcomes, recorded in this order."""
    items = [(row.item_id, json.dumps({"id": row.item_id})) for row in rows]
    job = await add_job(store, items, seal=True)
    claimed = await claim(store, job.id)
    await store.record(job.id, [report(claimed, rows)])
    return job.id


async def test_pipeline_outcomes_reads_within_a_budget(store: JobStore) -> None:
    rows = [ok_row(f"r-{n}", "x" * MB) for n in range(6)]
    job_id = await job_with(store, rows)
    limits: list[int | None] = []
    read = store.read_outcomes

    async def spy(*args: Any, **kwargs: Any) -> Page[ItemOutcome]:
        page = await read(*args, **kwargs)
        limits.append(len(page.rows))
        return page

    async with Pipeline(store, workers=0) as pipeline:
        store.read_outcomes = spy  # type: ignore[method-assign]
        try:
            got = [o.item_id async for o in pipeline.outcomes(job_id, page_bytes=2 * MB + 100)]
            default = [o.item_id async for o in pipeline.outcomes(job_id, ItemStatus.SUCCEEDED)]
        finally:
            del store.read_outcomes
        with pytest.raises(InvalidArgument):
            [o async for o in pipeline.outcomes(job_id, page_bytes=0)]
    assert got == default == [row.item_id for row in rows]
    assert limits == [2, 2, 2, 6]  # the default budget (8 MiB) holds all six


# --- the HTTP server's memory -----------------------------------------------------------------


class Responses:
    """An ASGI ``send`` that counts the body and keeps only what the test asks for."""

    def __init__(self, keep: bool) -> None:
        self.status = 0
        self.total = 0
        self.largest = 0
        self.keep = keep
        self.parts: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            self.total += len(body)
            self.largest = max(self.largest, len(body))
            if self.keep:
                self.parts.append(body)


async def asgi_get(app: Any, path: str, query: str, accept: str, keep: bool) -> Responses:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"test"), (b"accept", accept.encode())],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    responses = Responses(keep)
    await app(scope, receive, responses)
    return responses


RESULT = 3 * MB
COUNT = 16  # 48 MB of results; every one would be in one page without a byte budget


async def test_the_server_reads_pages_in_bounded_memory(store: JobStore) -> None:
    rows = [ok_row(f"r-{n}", "x" * RESULT) for n in range(COUNT)]
    job_id = await job_with(store, rows)
    del rows
    async with Pipeline(store, workers=0) as pipeline:
        app = create_app(pipeline)
        path = f"/jobs/{job_id}/outcomes"
        bound = 3 * (OUTCOME_PAGE_BYTES + RESULT)  # a small multiple of budget + one result
        tracemalloc.start()
        try:
            page = await asgi_get(app, path, "limit=1000", "application/json", keep=True)
            json_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            lines = await asgi_get(app, path, "limit=1000", "application/x-ndjson", keep=False)
            ndjson_peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert page.status == lines.status == 200
        body = json.loads(b"".join(page.parts))
        per_page = OUTCOME_PAGE_BYTES // (RESULT + 10)
        assert len(body["outcomes"]) == per_page
        assert body["next_cursor"] is not None
        assert lines.total > COUNT * RESULT  # every outcome was streamed
        assert lines.largest < RESULT + 1000  # and one large line was never joined to others
        assert json_peak < bound, json_peak / MB
        assert ndjson_peak < bound, ndjson_peak / MB
        small = await asgi_get(app, path, f"limit=1000&max_bytes={MB}", "application/json", True)
        assert len(json.loads(b"".join(small.parts))["outcomes"]) == 1
        over = await asgi_get(
            app, path, f"max_bytes={OUTCOME_PAGE_BYTES + 1}", "application/json", True
        )
        assert over.status == 422


async def test_ndjson_lines_are_sent_in_chunks(store: JobStore) -> None:
    rows = [ok_row(f"r-{n}", n) for n in range(3000)]
    job_id = await job_with(store, rows)
    async with Pipeline(store, workers=0) as pipeline:
        chunks = [
            chunk
            async for chunk in outcome_lines(
                pipeline, job_id, status=None, cursor=None, page_size=1000, page_bytes=None
            )
        ]
    lines = b"".join(chunks).splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == [row.item_id for row in rows]
    assert 3 < len(chunks) < 100  # neither one send per line nor one per whole stream
