"""The HTTP API's housekeeping: ``POST /jobs/{id}/delete`` and the retry route's
``include_unfinished``, on every store, with the owner rules of the other job routes."""

from __future__ import annotations

import pytest

from bulkpipe.store import JobStore

from .helpers import PATIENCE
from .test_http_api import as_, bearer_auth, make_pipeline, problem_of, serving, submit

pytestmark = pytest.mark.anyio


async def test_delete_an_ended_job_and_refuse_a_live_one(any_store: JobStore) -> None:
    async with serving(make_pipeline(any_store)) as (client, pipeline):
        running = await submit(client, processor="slow", items=[{"id": n} for n in range(3)])
        live = problem_of(await client.post(f"/jobs/{running['id']}/delete"), 409)
        assert "cancel it first" in live["detail"]
        assert (await client.delete(f"/jobs/{running['id']}")).status_code == 200  # cancel
        deleted = await client.post(f"/jobs/{running['id']}/delete")
        assert deleted.status_code == 204
        assert deleted.content == b""
        problem_of(await client.get(f"/jobs/{running['id']}"), 404)
        problem_of(await client.post(f"/jobs/{running['id']}/delete"), 404)
        done = await submit(client, processor="echo", items=[{"id": 1}])
        await pipeline.wait(done["id"], timeout=PATIENCE)
        assert (await client.post(f"/jobs/{done['id']}/delete")).status_code == 204
        assert (await client.get("/jobs")).json()["jobs"] == []


async def test_retry_with_include_unfinished(any_store: JobStore) -> None:
    async with serving(make_pipeline(any_store)) as (client, pipeline):
        running = await submit(client, processor="slow", items=[{"id": n} for n in range(3)])
        await client.delete(f"/jobs/{running['id']}")
        url = f"/jobs/{running['id']}/retry"
        assert "no failed items" in problem_of(await client.post(url), 409)["detail"]
        plain = await client.post(url, json={"include_unfinished": False})
        assert plain.status_code == 409
        retry = await client.post(url, json={"include_unfinished": True})
        assert retry.status_code == 201, retry.text
        assert (retry.json()["retry_of"], retry.json()["total_items"]) == (running["id"], 3)
        await pipeline.cancel(retry.json()["id"])
        problem_of(await client.post(url, json={"include_unfinished": "maybe"}), 422)
        problem_of(await client.post(url, json={"bogus": True}), 422)


async def test_only_the_owner_may_delete() -> None:
    async with serving(auth=bearer_auth) as (client, pipeline):
        acme, other = as_("acme-token"), as_("umbrella-token")
        made = await client.post("/jobs", headers=acme, json={"processor": "echo", "items": []})
        job = made.json()
        await pipeline.wait(job["id"], timeout=PATIENCE)
        problem_of(await client.post(f"/jobs/{job['id']}/delete", headers=other), 404)
        problem_of(await client.post(f"/jobs/{job['id']}/delete"), 401)
        read_only = as_("read-only-token")
        problem_of(await client.post(f"/jobs/{job['id']}/delete", headers=read_only), 403)
        assert (await client.post(f"/jobs/{job['id']}/delete", headers=acme)).status_code == 204
