"""Idempotent submit (issue 8, point 6): ``submit(..., idempotency_key=...)``, the CLI's
``--idempotency-key`` and the HTTP header ``Idempotency-Key`` on ``POST /jobs``. A repeat with
the same key and owner returns the existing job and stores nothing. Store-level behaviour
(unique per owner, race-safe) is in the contract (``bulkpipe.testing.contract.submits``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bulkpipe import InvalidArgument, Job, JobStatus, JobStore, Pipeline
from bulkpipe.stores import MemoryStore
from tests.test_cli import invoke, ok
from tests.test_http_api import QUICK as HTTP_QUICK
from tests.test_http_api import make_pipeline, problem_of, serving

from .helpers import PATIENCE, QUICK, make_items


async def double(item: Mapping[str, Any]) -> int:
    return 2 * int(item["n"])


def pipeline(store: JobStore) -> Pipeline:
    return Pipeline(store, processors={"double": double}, default_options=QUICK)


@pytest.mark.anyio
async def test_a_repeated_key_returns_the_first_job_and_reads_nothing(
    any_store: JobStore,
) -> None:
    started: list[bool] = []

    async def never_read() -> AsyncIterator[dict[str, Any]]:
        started.append(True)
        yield {"id": "other", "n": 1}

    async with pipeline(any_store) as p:
        first, created = await p.submit_or_find(
            "double", make_items(3), idempotency_key="order-7", owner="shop"
        )
        assert created
        assert first.idempotency_key == "order-7"
        source = never_read()
        again, created = await p.submit_or_find(
            "double", source, idempotency_key="order-7", owner="shop"
        )
        assert not created
        assert again.id == first.id
        assert started == []  # not read
        assert source.ag_frame is None  # and closed
        assert (await p.submit("double", [], idempotency_key="order-7", owner="shop")).id == (
            first.id
        )
        done = await p.wait(first.id, timeout=PATIENCE)
        assert (done.status, done.total_items) == (JobStatus.COMPLETED, 3)
        assert len(await p.list_jobs()) == 1
        # The same key of another owner (or of none) is another job.
        other = await p.submit("double", make_items(1), idempotency_key="order-7")
        assert other.id != first.id
        assert len(await p.list_jobs()) == 2


@pytest.mark.anyio
async def test_a_repeat_of_an_ended_job_returns_it_as_it_is(any_store: JobStore) -> None:
    async with pipeline(any_store) as p:
        job = await p.submit("double", make_items(2), idempotency_key="k")
        await p.wait(job.id, timeout=PATIENCE)
        again = await p.submit("double", make_items(5), idempotency_key="k")
        assert (again.id, again.status, again.total_items) == (job.id, JobStatus.COMPLETED, 2)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("key", "fragment"),
    [("", "non-empty string"), (7, "non-empty string"), ("k" * 201, "at most 200 characters")],
)
async def test_an_invalid_key_is_refused_before_anything_is_stored(key: Any, fragment: str) -> None:
    async with pipeline(MemoryStore()) as p:
        with pytest.raises(InvalidArgument, match=fragment):
            await p.submit("double", make_items(1), idempotency_key=key)
        assert await p.list_jobs() == []
        assert (await p.submit("double", [], idempotency_key="k" * 200)).idempotency_key


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_submit_with_a_key_twice_prints_one_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BULKPIPE_STORE", raising=False)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{n}"}) + "\n" for n in range(3)))
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    args = ("submit", "scoring", str(items), "--store", url, "--idempotency-key", "run-1")
    first = ok(*args, "--json").stdout
    second = ok(*args, "--json", "--submit-lease", "5").stdout
    one, two = Job.model_validate_json(first), Job.model_validate_json(second)
    assert one.id == two.id
    assert (two.total_items, two.idempotency_key) == (3, "run-1")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--idempotency-key", ""], "non-empty string"),
        (["--idempotency-key", "k" * 201], "at most 200"),
        (["--submit-lease", "0.5"], "--submit-lease"),
        (["--submit-lease", "3601"], "--submit-lease"),
    ],
)
def test_cli_refuses_bad_keys_and_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("submit", "scoring", "-", "--store", "memory://", *args, input="")
    assert result.exit_code == 2
    assert fragment in result.stderr


# -- HTTP -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_http_a_repeat_with_the_same_key_answers_200_with_the_first_job(
    any_store: JobStore,
) -> None:
    body = {"processor": "echo", "items": [{"id": 1}, {"id": 2}], "options": HTTP_QUICK}
    headers = {"Idempotency-Key": "req-1"}
    async with serving(make_pipeline(any_store)) as (client, _):
        first = await client.post("/jobs", json=body, headers=headers)
        assert first.status_code == 201, first.text
        again = await client.post("/jobs", json={**body, "items": [{"id": 9}]}, headers=headers)
        assert again.status_code == 200, again.text
        job = again.json()
        assert job["id"] == first.json()["id"]
        assert job["total_items"] == 2
        assert again.headers["location"] == f"http://api/jobs/{job['id']}"
        plain = await client.post("/jobs", json=body)
        assert plain.status_code == 201
        assert plain.json()["id"] != job["id"]


@pytest.mark.anyio
async def test_http_refuses_a_bad_idempotency_key() -> None:
    body = {"processor": "echo", "items": [{"id": 1}]}
    async with serving() as (client, pipeline):
        response = await client.post("/jobs", json=body, headers={"Idempotency-Key": "k" * 201})
        problem = problem_of(response, 422)
        assert "at most 200 characters" in json.dumps(problem)
        assert await pipeline.list_jobs() == []
