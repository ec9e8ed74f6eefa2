"""The HTTP API through httpx's ASGI transport: every route and status, auth, limits, errors.

The route tests run on every store (MemoryStore, SQLite, PostgreSQL when reachable); the rest
on MemoryStore. httpx's ASGITransport works on trio too, so everything runs on both backends.
It buffers a streamed response until the app finishes it, so event streams are read whole here
(their timing is tested against a real server in ``test_http_uvicorn.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from bulkpipe import (
    JobOptions,
    JobStore,
    PermanentError,
    Pipeline,
    StoreError,
)
from bulkpipe.http import Principal, create_app
from bulkpipe.http.schemas import SubmitOptions
from bulkpipe.stores import MemoryStore
from bulkpipe.testing.contract.workers import worker_info
from tests.helpers import PATIENCE

pytestmark = pytest.mark.anyio

QUICK = {"retry_delay": 0.0, "retry_delay_max": 0.0, "progress_interval": 0.05}


async def echo(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("fail"):
        raise PermanentError(f"item {item['id']} asked to fail")
    return {"seen": item["id"]}


async def slow(item: dict[str, Any]) -> None:
    await anyio.sleep(PATIENCE * 10)


async def numbers(params: Any) -> AsyncIterator[dict[str, Any]]:
    for n in range(int(params.get("count", 3))):
        yield {"id": n}


async def broken_source(params: Any) -> AsyncIterator[dict[str, Any]]:
    yield {"id": 1}
    raise RuntimeError("the upstream went away")


def make_pipeline(store: JobStore | None = None, **kwargs: Any) -> Pipeline:
    return Pipeline(
        store or MemoryStore(),
        processors={"echo": echo, "slow": slow},
        sources={"numbers": numbers, "broken": broken_source},
        poll_interval=0.02,
        **kwargs,
    )


@asynccontextmanager
async def serving(
    pipeline: Pipeline | None = None, **app_options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Pipeline]]:
    """A running pipeline and an httpx client on an app over it; the test fails (rather than
    hangs) if it takes too long, e.g. an event stream whose job never ends."""
    pipeline = pipeline or make_pipeline()
    with anyio.fail_after(PATIENCE * 3):
        async with pipeline:
            app = create_app(pipeline, **app_options)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                yield client, pipeline


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse a server-sent event stream into (event name, JSON data) pairs."""
    found = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((fields["event"], json.loads(fields["data"])))
    return found


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The problem body of ``response``, checked to have ``status`` and no traceback."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert "Traceback" not in response.text
    return body


async def submit(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/jobs", json={"options": QUICK, **body})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"] == f"http://api/jobs/{job['id']}"
    return job


# -- every store ------------------------------------------------------------------------------


@pytest.fixture
def store(any_store: JobStore) -> JobStore:
    """A fresh store of each kind."""
    return any_store


async def test_submit_read_follow_and_page(store: JobStore) -> None:
    async with serving(make_pipeline(store)) as (client, _pipeline):
        items = [{"id": n, "fail": n % 3 == 0} for n in range(7)]
        job = await submit(
            client, processor="echo", items=items, options={**QUICK, "batch_size": 2}
        )
        assert job["type"] == "echo"
        assert job["total_items"] == 7
        assert job["sealed"]

        stream = await client.get(f"/jobs/{job['id']}/events", params={"interval": 0.05})
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        seen = events(stream.text)
        assert [name for name, _ in seen[:-1]] == ["progress"] * (len(seen) - 1)
        name, last = seen[-1]
        assert name == "end"
        assert last["status"] == "completed"
        assert (last["succeeded_items"], last["failed_items"]) == (4, 3)

        got = await client.get(f"/jobs/{job['id']}")
        assert got.status_code == 200
        assert got.json() == last

        # Outcomes, a page at a time, then only the failed ones, then as JSON Lines.
        ids: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await client.get(f"/jobs/{job['id']}/outcomes", params=params)).json()
            assert len(page["outcomes"]) <= 3
            ids += [row["item_id"] for row in page["outcomes"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(ids, key=int) == [str(n) for n in range(7)]
        failed = await client.get(f"/jobs/{job['id']}/outcomes", params={"status": "failed"})
        rows = failed.json()["outcomes"]
        assert sorted(row["item_id"] for row in rows) == ["0", "3", "6"]
        assert all(row["status"] == "failed" and "asked to fail" in row["error"] for row in rows)
        lines = await client.get(
            f"/jobs/{job['id']}/outcomes",
            params={"status": "succeeded", "limit": 2},
            headers={"accept": "application/x-ndjson"},
        )
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        parsed = [json.loads(line) for line in lines.text.splitlines()]
        assert sorted(row["item_id"] for row in parsed) == ["1", "2", "4", "5"]

        # A terminal job's event stream is its one `end` event.
        again = events((await client.get(f"/jobs/{job['id']}/events")).text)
        assert [name for name, _ in again] == ["end"]


async def test_list_filters_and_pages(store: JobStore) -> None:
    async with serving(make_pipeline(store)) as (client, pipeline):
        made = [await submit(client, processor="echo", items=[{"id": n}]) for n in range(3)]
        for job in made:
            await pipeline.wait(job["id"], timeout=PATIENCE)
        pending = await submit(client, processor="slow", items=[{"id": 1}])

        first = (await client.get("/jobs", params={"limit": 2})).json()
        assert [job["id"] for job in first["jobs"]] == [pending["id"], made[2]["id"]]
        assert first["next_offset"] == 2
        rest = (await client.get("/jobs", params={"limit": 2, "offset": 2})).json()
        assert [job["id"] for job in rest["jobs"]] == [made[1]["id"], made[0]["id"]]
        assert rest["next_offset"] == 2 + 2
        done = (await client.get("/jobs", params={"status": "completed"})).json()
        assert {job["id"] for job in done["jobs"]} == {job["id"] for job in made}
        assert done["next_offset"] is None
        await pipeline.cancel(pending["id"])


async def test_cancel_retry_and_conflicts(store: JobStore) -> None:
    async with serving(make_pipeline(store)) as (client, pipeline):
        running = await submit(client, processor="slow", items=[{"id": n} for n in range(3)])
        # Retrying a job that still runs is a conflict.
        problem_of(await client.post(f"/jobs/{running['id']}/retry"), 409)
        cancelled = await client.delete(f"/jobs/{running['id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        problem_of(await client.delete(f"/jobs/{running['id']}"), 409)
        # A cancelled job's stream ends with its cancelled snapshot.
        seen = events((await client.get(f"/jobs/{running['id']}/events")).text)
        assert seen[-1][0] == "end"
        assert seen[-1][1]["status"] == "cancelled"

        mixed = await submit(client, processor="echo", items=[{"id": 1}, {"id": 2, "fail": True}])
        await pipeline.wait(mixed["id"], timeout=PATIENCE)
        retry = await client.post(f"/jobs/{mixed['id']}/retry")
        assert retry.status_code == 201, retry.text
        body = retry.json()
        assert body["retry_of"] == mixed["id"]
        assert body["total_items"] == 1
        assert retry.headers["location"] == f"http://api/jobs/{body['id']}"

        clean = await submit(client, processor="echo", items=[{"id": 1}])
        await pipeline.wait(clean["id"], timeout=PATIENCE)
        assert (
            "no failed items"
            in problem_of(await client.post(f"/jobs/{clean['id']}/retry"), 409)["detail"]
        )


async def test_unknown_job_is_404_on_every_route(store: JobStore) -> None:
    async with serving(make_pipeline(store)) as (client, _):
        for method, path in [
            ("GET", "/jobs/nope"),
            ("DELETE", "/jobs/nope"),
            ("POST", "/jobs/nope/retry"),
            ("GET", "/jobs/nope/outcomes"),
            ("GET", "/jobs/nope/events"),
        ]:
            body = problem_of(await client.request(method, path), 404)
            assert "'nope' not found" in body["detail"]


async def test_submit_from_a_source(store: JobStore) -> None:
    async with serving(make_pipeline(store)) as (client, pipeline):
        job = await submit(client, processor="echo", source="numbers", params={"count": 4})
        assert job["source"] == "numbers"
        assert job["params"] == {"count": 4}
        done = await pipeline.wait(job["id"], timeout=PATIENCE)
        assert done.succeeded_items == 4


# -- MemoryStore only -------------------------------------------------------------------------


async def test_a_failing_source_gives_the_failed_job() -> None:
    async with serving() as (client, _):
        response = await client.post("/jobs", json={"processor": "echo", "source": "broken"})
        assert response.status_code == 201
        job = response.json()
        assert job["status"] == "failed"
        assert "the upstream went away" in job["errors"][0]["error"]


async def test_invalid_items_are_refused_one_by_one() -> None:
    async with serving() as (client, _pipeline):
        job = await submit(client, processor="echo", items=[{"id": 1}, {"id": 1}, {"no_id": 2}])
        assert (job["total_items"], job["rejected_items"]) == (1, 2)
        assert {error["error_type"] for error in job["errors"]} == {"InvalidItem"}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"items": []}, ["body", "processor"]),
        ({"processor": "", "items": []}, ["body", "processor"]),
        ({"processor": "echo", "items": [1]}, ["body", "items", 0]),
        ({"processor": "echo", "items": [], "options": {"batch_size": 0}}, None),
        ({"processor": "echo", "items": [], "options": {"nope": 1}}, ["body", "options", "nope"]),
        ({"processor": "echo", "items": [], "priority": 2**40}, ["body", "priority"]),
        ({"processor": "echo", "items": [], "surprise": 1}, ["body", "surprise"]),
        ({"processor": "echo"}, ["body", "items"]),
        ({"processor": "echo", "items": [], "source": "numbers"}, ["body", "items"]),
        ({"processor": "echo", "items": [], "params": {}}, ["body", "params"]),
        (
            {"processor": "echo", "items": [], "options": {"item_concurrency": 500}},
            ["body", "options"],
        ),
    ],
)
async def test_invalid_submissions_are_422_naming_the_field(
    body: dict[str, Any], where: list[Any] | None
) -> None:
    async with serving() as (client, _):
        problem = problem_of(await client.post("/jobs", json=body), 422)
        locs = [error["loc"] for error in problem["errors"]]
        expected = where or ["body", "options", "batch_size"]
        assert expected in locs
        assert problem["detail"].startswith(".".join(map(str, expected)))


async def test_invalid_json_and_query_values_are_422() -> None:
    async with serving() as (client, _):
        bad = await client.post(
            "/jobs", content=b'{"processor": ', headers={"content-type": "application/json"}
        )
        assert problem_of(bad, 422)["errors"][0]["type"] == "json_invalid"
        cases: list[tuple[str, dict[str, str | int], list[str]]] = [
            ("/jobs", {"status": "sleeping"}, ["query", "status"]),
            ("/jobs", {"limit": 0}, ["query", "limit"]),
            ("/jobs/x/outcomes", {"cursor": "-1"}, ["query", "cursor"]),
            ("/jobs/x/outcomes", {"status": "maybe"}, ["query", "status"]),
            ("/jobs/x/events", {"interval": 0}, ["query", "interval"]),
        ]
        for path, params, loc in cases:
            problem = problem_of(await client.get(path, params=params), 422)
            assert problem["errors"][0]["loc"] == loc


async def test_options_are_judged_with_the_server_defaults() -> None:
    pipeline = make_pipeline(default_options=JobOptions(batch_size=1000))
    async with serving(pipeline) as (client, _):
        job = await submit(client, processor="echo", items=[], options={"item_concurrency": 500})
        assert job["options"]["batch_size"] == 1000
        assert job["options"]["item_concurrency"] == 500
    # The per-field model must not carry JobOptions' combined check along.
    assert SubmitOptions(item_concurrency=500).item_concurrency == 500


async def test_unknown_processor_or_source_is_400_when_the_server_has_workers() -> None:
    async with serving() as (client, _):
        problem = problem_of(await client.post("/jobs", json={"processor": "x", "items": []}), 400)
        assert "unknown processor 'x'" in problem["detail"]
        problem = problem_of(
            await client.post("/jobs", json={"processor": "echo", "source": "x"}), 400
        )
        assert "unknown item source 'x'" in problem["detail"]


async def test_a_client_only_server_accepts_a_processor_only_when_told_or_served() -> None:
    store = MemoryStore()
    async with serving(make_pipeline(store, workers=0)) as (client, _):
        body = {"processor": "only-on-remote-workers", "items": [{"id": 1}]}
        problem = problem_of(await client.post("/jobs", json=body), 400)
        assert "unknown processor 'only-on-remote-workers'" in problem["detail"]
        assert "known: echo, " in problem["detail"]  # no auth: the names are listed
        job = await submit(client, **body, allow_unserved=True)
        assert job["status"] == "pending"
        await store.register_worker(worker_info(processors=["only-on-remote-workers"]), 60)
        job = await submit(client, **body)
        assert job["status"] == "pending"


class Chunks(httpx.AsyncByteStream):
    """A request body sent in chunks, without a Content-Length (no generator to finalise)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


async def test_body_and_item_limits_are_413() -> None:
    async with serving(max_body_bytes=2000, max_items=5) as (client, _):
        big = {"processor": "echo", "items": [{"id": n, "pad": "x" * 50} for n in range(40)]}
        problem = problem_of(await client.post("/jobs", json=big), 413)
        assert "2000 bytes" in problem["detail"]

        encoded = json.dumps(big).encode()
        request = httpx.Request(
            "POST",
            "http://api/jobs",
            stream=Chunks([encoded[:1500], encoded[1500:]]),
            headers={"content-type": "application/json"},
        )
        chunked = await client.send(request)
        assert "content-length" not in chunked.request.headers  # counted as it arrives
        problem_of(chunked, 413)

        many = {"processor": "echo", "items": [{"id": n} for n in range(6)]}
        assert "(5)" in problem_of(await client.post("/jobs", json=many), 413)["detail"]
        assert (await client.post("/jobs", json={**many, "items": many["items"][:5]})).is_success


async def test_a_bad_content_length_is_400() -> None:
    async with serving() as (client, _):
        response = await client.post("/jobs", content=b"{}", headers={"content-length": "-3"})
        problem_of(response, 400)


# -- auth -------------------------------------------------------------------------------------

TOKENS = {
    "acme-token": Principal(name="alice", owner="acme"),
    "umbrella-token": Principal(name="bob", owner="umbrella"),
    "root-token": Principal(name="ops"),
}


def bearer_auth(request: Request) -> Principal | None:
    """The docs' example: a bearer token per principal; read-only tokens may only GET."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if token == "read-only-token":
        if request.method != "GET":
            raise HTTPException(403, "this token may only read")
        return Principal(name="auditor")
    return TOKENS.get(token)


async def async_bearer_auth(request: Request) -> Principal | None:
    await anyio.lowlevel.checkpoint()
    return bearer_auth(request)


def as_(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("auth", [bearer_auth, async_bearer_auth])
async def test_every_route_demands_auth(auth: Any) -> None:
    async with serving(auth=auth) as (client, _):
        for method, path in [
            ("POST", "/jobs"),
            ("GET", "/jobs"),
            ("GET", "/jobs/x"),
            ("DELETE", "/jobs/x"),
            ("POST", "/jobs/x/retry"),
            ("GET", "/jobs/x/outcomes"),
            ("GET", "/jobs/x/events"),
            ("GET", "/workers"),
        ]:
            problem_of(await client.request(method, path, json={}), 401)
            problem_of(await client.request(method, path, headers=as_("wrong"), json={}), 401)
        problem_of(await client.post("/jobs", headers=as_("read-only-token"), json={}), 403)
        assert (await client.get("/jobs", headers=as_("read-only-token"))).status_code == 200
        # The API description is public.
        assert (await client.get("/openapi.json")).status_code == 200


async def test_owners_see_only_their_jobs() -> None:
    async with serving(auth=bearer_auth) as (client, pipeline):
        acme = as_("acme-token")
        response = await client.post(
            "/jobs", headers=acme, json={"processor": "echo", "items": [{"id": 1, "fail": True}]}
        )
        assert response.status_code == 201
        job = response.json()
        assert job["owner"] == "acme"
        await pipeline.wait(job["id"], timeout=PATIENCE)
        theirs = await client.post(
            "/jobs",
            headers=as_("umbrella-token"),
            json={"processor": "slow", "items": [{"id": 1}], "owner": "umbrella"},
        )
        assert theirs.status_code == 201

        other = as_("umbrella-token")
        for method, path in [
            ("GET", f"/jobs/{job['id']}"),
            ("DELETE", f"/jobs/{job['id']}"),
            ("POST", f"/jobs/{job['id']}/retry"),
            ("GET", f"/jobs/{job['id']}/outcomes"),
            ("GET", f"/jobs/{job['id']}/events"),
        ]:
            problem = problem_of(await client.request(method, path, headers=other), 404)
            assert problem["detail"] == problem_of(
                await client.request(method, path.replace(job["id"], "nope"), headers=other), 404
            )["detail"].replace("nope", job["id"])
        listed = (await client.get("/jobs", headers=other)).json()["jobs"]
        assert [j["owner"] for j in listed] == ["umbrella"]
        problem_of(await client.get("/jobs", headers=other, params={"owner": "acme"}), 403)
        problem_of(
            await client.post(
                "/jobs", headers=other, json={"processor": "echo", "items": [], "owner": "acme"}
            ),
            403,
        )

        # The owner may read and retry their job; the retry keeps the owner.
        assert (await client.get(f"/jobs/{job['id']}", headers=acme)).status_code == 200
        retry = await client.post(f"/jobs/{job['id']}/retry", headers=acme)
        assert retry.status_code == 201
        assert retry.json()["owner"] == "acme"

        # A principal without an owner sees every job, and may filter by owner.
        root = as_("root-token")
        everything = (await client.get("/jobs", headers=root)).json()["jobs"]
        assert {j["owner"] for j in everything} == {"acme", "umbrella"}
        only = (await client.get("/jobs", headers=root, params={"owner": "umbrella"})).json()
        assert [j["id"] for j in only["jobs"]] == [theirs.json()["id"]]
        assert (await client.delete(f"/jobs/{theirs.json()['id']}", headers=root)).is_success


async def test_an_auth_returning_something_else_is_a_500_without_details() -> None:
    async with serving(auth=lambda request: "alice") as (client, _):
        problem = problem_of(await client.get("/jobs"), 500)
        assert "alice" not in problem["detail"]
        assert "Principal" not in problem["detail"]


# -- failures ---------------------------------------------------------------------------------


class FailingStore(MemoryStore):
    """A store whose reads fail the way ``fail`` says."""

    def __init__(self, fail: BaseException) -> None:
        super().__init__()
        self.fail = fail

    async def get_job(self, job_id: str) -> Any:
        raise self.fail


@pytest.mark.parametrize(
    ("error", "status"),
    [(StoreError("database at /secret/path is locked"), 503), (RuntimeError("/secret/x"), 500)],
)
async def test_failures_are_problems_without_details(error: Exception, status: int) -> None:
    async with serving(make_pipeline(FailingStore(error))) as (client, _):
        response = await client.get("/jobs/x")
        problem = problem_of(response, status)
        assert "/secret" not in response.text
        assert "server log" in problem["detail"]


class FailingLater(MemoryStore):
    """A store whose job reads fail after two (the submit's and the route's)."""

    reads = 0

    async def get_job(self, job_id: str) -> Any:
        self.reads += 1
        if self.reads > 2:
            raise StoreError("the database went away")
        return await super().get_job(job_id)


async def test_a_store_failure_mid_stream_ends_it_with_an_error_event() -> None:
    store = FailingLater()
    async with serving(make_pipeline(store, workers=0)) as (client, pipeline):
        job = await pipeline.submit("echo", [{"id": 1}])
        response = await client.get(f"/jobs/{job.id}/events")
        assert response.status_code == 200
        [(name, data)] = events(response.text)
        assert name == "error"
        assert "server log" in data["detail"]
        assert "database" not in response.text


async def test_an_app_without_its_pipeline_running_is_503() -> None:
    app = create_app(make_pipeline())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        problem = problem_of(await client.get("/jobs"), 503)
        assert "lifespan" in problem["detail"]


async def test_an_app_made_from_a_store_runs_its_pipeline_in_its_lifespan() -> None:
    app = create_app(MemoryStore(), workers=1)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        # The installed demo processors run in the app's own worker.
        job = await submit(client, processor="scoring", items=[{"id": 1, "search_volume": 10}])
        seen = events((await client.get(f"/jobs/{job['id']}/events")).text)
        assert seen[-1][1]["status"] == "completed"
        problem_of(await client.post("/jobs", json={"processor": "x", "items": []}), 400)


async def test_unknown_routes_and_methods_are_problems() -> None:
    async with serving() as (client, _):
        problem_of(await client.get("/nowhere"), 404)
        problem_of(await client.put("/jobs"), 405)


async def test_openapi_document() -> None:
    async with serving(auth=bearer_auth) as (client, _):
        document = (await client.get("/openapi.json")).json()
    operations = {
        op["operationId"]: (method.upper(), path, set(op["responses"]))
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    assert operations["submit_job"] == (
        "POST",
        "/jobs",
        {"200", "201", "400", "401", "403", "413", "422", "503"},
    )
    submit_params = document["paths"]["/jobs"]["post"]["parameters"]
    assert [(q["name"], q["in"]) for q in submit_params] == [("Idempotency-Key", "header")]
    assert operations["cancel_job"][:2] == ("DELETE", "/jobs/{job_id}")
    assert {"404", "409"} <= operations["retry_job"][2]
    assert set(operations) == {
        "submit_job",
        "list_jobs",
        "get_job",
        "cancel_job",
        "retry_job",
        "delete_job",
        "job_outcomes",
        "job_events",
        "list_workers",
    }
    assert operations["list_workers"] == ("GET", "/workers", {"200", "401", "403", "422", "503"})
    events_200 = document["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert list(events_200["content"]) == ["text/event-stream"]


def test_create_app_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="Pipeline or JobStore"):
        create_app(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers= is for an app made from a store"):
        create_app(make_pipeline(), workers=2)
    with pytest.raises(ValueError, match="must be positive"):
        create_app(MemoryStore(), max_items=0)


async def test_mounted_in_a_host_app_with_the_pipeline_in_the_hosts_lifespan() -> None:
    pipeline = make_pipeline()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with pipeline:
            yield

    host = FastAPI(lifespan=lifespan)
    host.mount("/bulk", create_app(pipeline, auth=bearer_auth))
    transport = httpx.ASGITransport(app=host)
    async with (
        host.router.lifespan_context(host),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        response = await client.post(
            "/bulk/jobs", headers=as_("acme-token"), json={"processor": "echo", "items": []}
        )
        assert response.status_code == 201
        assert response.headers["location"] == f"http://api/bulk/jobs/{response.json()['id']}"
        problem_of(await client.get("/bulk/jobs"), 401)
        document = await client.get("/bulk/openapi.json")
        assert document.json()["servers"] == [{"url": "/bulk"}]
        docs = await client.get("/bulk/docs")
        assert "/bulk/openapi.json" in docs.text


def test_public_names() -> None:
    import bulkpipe.http

    assert set(bulkpipe.http.__all__) == {
        "ANONYMOUS",
        "DEFAULT_MAX_BODY_BYTES",
        "DEFAULT_MAX_ITEMS",
        "AuthCallable",
        "Principal",
        "create_app",
        "serve",
    }
    assert all(hasattr(bulkpipe.http, name) for name in bulkpipe.http.__all__)


@pytest.mark.subprocess
def test_without_the_extra_the_import_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "try:\n"
        "    import bulkpipe.http\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'bulkpipe[http]'" in out.stdout
