"""Issue 13, finding 2 (the inside): a stored row that cannot be read never kills a worker, a
server or a listing.

The rows are corrupted by hand, straight in SQLite and PostgreSQL (and in MemoryStore's lists
where that can happen): job options that do not validate (``"timeout": null`` is what the old
bug stored for an infinite timeout), params that are not JSON, results that are not JSON.
Before, reading such a job raised in ``get_job``/``list_jobs`` (so ``GET /jobs`` and ``bulkpipe
list/status/cancel`` failed for everyone), and claiming it raised inside the worker's serving
loop, killing the worker (and an HTTP server's in-process worker, and with it the server).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from click.testing import CliRunner, Result

from bulkpipe import (
    ErrorType,
    InvalidArgument,
    ItemStatus,
    Job,
    JobOptions,
    JobStatus,
    PermanentError,
    Pipeline,
    Worker,
)
from bulkpipe._snapshot import job_spec, outcome_from_row, read_options
from bulkpipe.cli import cli
from bulkpipe.http import create_app
from bulkpipe.stores import MemoryStore, open_store
from bulkpipe.stores.postgres import PostgresStore
from bulkpipe.stores.sqlite import SQLiteStore
from tests.conftest import POSTGRES_URL
from tests.helpers import PATIENCE, eventually

pytestmark = pytest.mark.anyio

QUICK = JobOptions(retry_delay=0.0, retry_delay_max=0.0, progress_interval=0.05)

#: The options the old bug stored for ``timeout=inf``: valid JSON that does not validate.
NULL_TIMEOUT = json.dumps({**QUICK.model_dump(), "timeout": None})


async def echo(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("fail"):
        raise PermanentError("asked to fail")
    return {"seen": item["id"]}


def execute(url: str, sql: str, **params: Any) -> None:
    """Run one statement on the store at ``url``, straight on its database. ``{p}`` in ``sql``
    is the table prefix; parameters are written ``:name``."""
    store = open_store(url)
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            changed = conn.execute(sql.format(p=store.prefix), params).rowcount
    else:
        assert isinstance(store, PostgresStore)
        pg_sql = re.sub(r":(\w+)", r"%(\1)s", sql.format(p=store.prefix))
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            changed = conn.execute(pg_sql, params).rowcount
    assert changed >= 1, sql


def corrupt_options(url: str, job_id: str, text: str = NULL_TIMEOUT) -> None:
    value = ":text" if url.startswith("sqlite") else "CAST(:text AS jsonb)"
    execute(url, f"UPDATE {{p}}jobs SET options = {value} WHERE id = :id", text=text, id=job_id)


def corrupt_result(url: str, job_id: str, item_id: str, text: str) -> None:
    execute(
        url,
        "UPDATE {p}outcomes SET result = :text "
        "WHERE item_id = :item AND job = (SELECT seq FROM {p}jobs WHERE id = :id)",
        text=text,
        item=item_id,
        id=job_id,
    )


@asynccontextmanager
async def pipeline_on(url: str, workers: int = 0) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(
        open_store(url), processors={"echo": echo}, workers=workers, poll_interval=0.02
    )
    with anyio.fail_after(PATIENCE * 3):
        async with pipeline:
            yield pipeline


async def submitted(url: str, count: int = 3, **kwargs: Any) -> Job:
    """A job of ``count`` items stored at ``url`` (nobody runs it yet)."""
    async with pipeline_on(url) as pipeline:
        items = [{"id": f"i{n}"} for n in range(count)]
        return await pipeline.submit("echo", items, options=QUICK, **kwargs)


async def finished(url: str, items: list[dict[str, Any]]) -> Job:
    """A job over ``items`` run to its end at ``url``."""
    async with pipeline_on(url, workers=1) as pipeline:
        job = await pipeline.submit("echo", items, options=QUICK)
        return await pipeline.wait(job.id, timeout=PATIENCE)


def unreadable(job: Job) -> str:
    """The UnreadableJob error of a job snapshot (the test fails if there is none)."""
    found = [
        e.error
        for e in job.errors
        if e.error_type == ErrorType.UNREADABLE_JOB and e.item_id is None
    ]
    assert len(found) == 1, job.errors
    return found[0]


# -- reading a job -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        NULL_TIMEOUT,
        json.dumps({"timeout": "soon"}),
        json.dumps({"no_such_option": 1}),
        json.dumps({"batch_size": 10, "item_concurrency": 20}),
        "[]",
    ],
)
async def test_a_job_whose_options_do_not_validate_is_still_read(store_url: str, text: str) -> None:
    job = await submitted(store_url)
    corrupt_options(store_url, job.id, text)
    async with pipeline_on(store_url) as pipeline:
        got = await pipeline.get(job.id)
        listed = await pipeline.list_jobs()
    assert [j.id for j in listed] == [job.id]
    assert got.options == JobOptions()  # the defaults stand in for what cannot be read
    assert "stored options cannot be read" in unreadable(got)
    assert got.error_count == 1
    assert got.total_items == 3
    assert listed[0] == got


async def test_options_that_are_not_json_at_all_are_read_too(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"  # PostgreSQL's jsonb holds only JSON
    job = await submitted(url)
    corrupt_options(url, job.id, "{not json")
    async with pipeline_on(url) as pipeline:
        assert "stored options cannot be read" in unreadable(await pipeline.get(job.id))


async def test_a_status_bulkpipe_does_not_know_is_read_as_failed(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"  # PostgreSQL's CHECK constraint refuses it
    job = await submitted(url)
    execute(url, "UPDATE {p}jobs SET status = 'paused' WHERE id = :id", id=job.id)
    async with pipeline_on(url) as pipeline:
        got = await pipeline.get(job.id)
        listed = await pipeline.list_jobs()
    assert got.status is JobStatus.FAILED
    assert "stored status 'paused'" in unreadable(got)
    assert [j.id for j in listed] == [job.id]
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(cli, ["list", "--store", url])
    )
    assert result.exit_code == 0, result.output


async def test_params_that_are_not_json_are_read_as_none(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"

    async def numbers(params: Any) -> AsyncIterator[dict[str, Any]]:
        for n in range(int(params["count"])):
            yield {"id": n}

    async with Pipeline(open_store(url), workers=0, sources={"numbers": numbers}) as pipeline:
        job = await pipeline.submit(
            "echo", source="numbers", params={"count": 2}, options=QUICK, allow_unserved=True
        )
    execute(url, "UPDATE {p}jobs SET params = :text WHERE id = :id", text="{oops", id=job.id)
    async with pipeline_on(url) as pipeline:
        got = await pipeline.get(job.id)
    assert got.params is None
    assert "stored params cannot be read" in unreadable(got)
    assert got.options == QUICK  # what could be read is kept
    async with pipeline_on(url, workers=1) as pipeline:  # workers need no params: it runs
        done = await pipeline.wait(job.id, timeout=PATIENCE)
    assert done.status is JobStatus.COMPLETED
    assert done.succeeded_items == 2


def test_reading_options_never_raises() -> None:
    for text in ["", "{", "null", "[]", '"x"', "1e999", NULL_TIMEOUT, '{"batch_size": -1}']:
        options, problem = read_options(text)
        assert options == JobOptions()
        assert problem is not None
        assert "cannot be read" in problem
        spec = job_spec(id="j", type="echo", options=text, priority=0)
        assert spec.options_error == problem
    assert read_options(QUICK.model_dump_json()) == (QUICK, None)


# -- claiming a job ------------------------------------------------------------------------------


async def test_a_worker_fails_an_unreadable_job_once_and_goes_on_with_the_next(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await submitted(store_url, priority=10)  # claimed first
    good = await submitted(store_url)
    corrupt_options(store_url, bad.id)
    caplog.set_level(logging.INFO, logger="bulkpipe")
    store = open_store(store_url)
    worker = Worker(store, processors={"echo": echo}, poll_interval=0.02, lease_timeout=2.0)
    with anyio.fail_after(PATIENCE * 3):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)

            async def good_done() -> bool:
                return (await store.get_job(good.id)).status is JobStatus.COMPLETED

            await eventually(good_done, "the good job to complete")
            await anyio.sleep(0.3)  # time for a second, wrong, claim of the bad job
            failed = await store.get_job(bad.id)
            worker.stop()
    assert failed.status is JobStatus.FAILED
    assert "stored options cannot be read" in unreadable(failed)
    assert failed.error_count == 1  # the error the worker recorded, not one more shown
    assert failed.processed_items == 0
    about_bad = [r for r in caplog.records if bad.id in r.getMessage()]
    assert len(about_bad) == 1, [r.getMessage() for r in about_bad]
    assert about_bad[0].levelno == logging.ERROR
    assert "timeout" in about_bad[0].getMessage()
    assert all(r.levelno < logging.ERROR for r in caplog.records if r is not about_bad[0])


async def test_an_unreadable_job_fails_on_memory_store_claims_too() -> None:
    # MemoryStore keeps JobOptions objects, so its rows cannot be corrupt; the worker's check
    # is the same for every store: a spec with options_error fails the job.
    store = MemoryStore()
    async with Pipeline(store, processors={"echo": echo}, workers=0) as pipeline:
        job = await pipeline.submit("echo", [{"id": 1}], options=QUICK)
        claimed = await store.claim_batch(worker_id="w", lease_seconds=5)
        assert claimed is not None
        broken = type(claimed)(
            job=job_spec(id=job.id, type="echo", options="null", priority=0),
            lease=claimed.lease,
            items=claimed.items,
            claims=claimed.claims,
        )
        worker = Worker(store, processors={"echo": echo})
        await worker._run_claimed(broken)
        got = await pipeline.get(job.id)
    assert got.status is JobStatus.FAILED
    assert got.errors[0].error_type == ErrorType.UNREADABLE_JOB


async def test_a_server_with_in_process_workers_keeps_serving(store_url: str) -> None:
    bad = await submitted(store_url, priority=10)
    corrupt_options(store_url, bad.id)
    async with pipeline_on(store_url, workers=1) as pipeline:
        transport = httpx.ASGITransport(app=create_app(pipeline), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            listed = await client.get("/jobs")
            assert listed.status_code == 200, listed.text
            assert [j["id"] for j in listed.json()["jobs"]] == [bad.id]
            posted = await client.post(
                "/jobs", json={"processor": "echo", "items": [{"id": 1}, {"id": 2}]}
            )
            assert posted.status_code == 201, posted.text
            new = posted.json()["id"]

            async def both_ended() -> bool:
                jobs = (await client.get("/jobs")).json()["jobs"]
                return all(j["status"] in ("completed", "failed") for j in jobs)

            await eventually(both_ended, "both jobs to end")
            got = (await client.get(f"/jobs/{bad.id}")).json()
            assert got["status"] == "failed"
            assert got["errors"][0]["error_type"] == ErrorType.UNREADABLE_JOB
            assert (await client.get(f"/jobs/{new}")).json()["status"] == "completed"


async def test_retrying_a_job_whose_options_cannot_be_read_needs_options(
    store_url: str,
) -> None:
    job = await finished(store_url, [{"id": 1, "fail": True}, {"id": 2}])
    assert job.failed_items == 1
    corrupt_options(store_url, job.id)
    async with pipeline_on(store_url, workers=1) as pipeline:
        with pytest.raises(InvalidArgument, match="pass options="):
            await pipeline.retry_failed(job.id)
        retry = await pipeline.retry_failed(job.id, options=QUICK)
        assert retry.total_items == 1


# -- the command line ---------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


async def test_cli_list_status_and_cancel_work_on_an_unreadable_job(store_url: str) -> None:
    job = await submitted(store_url)
    corrupt_options(store_url, job.id)

    def commands() -> list[Result]:
        return [
            invoke("list", "--json", "--store", store_url),
            invoke("list", "--store", store_url),
            invoke("status", job.id, "--store", store_url),
            invoke("status", job.id, "--json", "--store", store_url),
            invoke("cancel", job.id, "--store", store_url),
        ]

    listed, table, status, status_json, cancelled = await anyio.to_thread.run_sync(commands)
    for result in (listed, table, status, status_json, cancelled):
        assert result.exit_code == 0, result.output
    assert [j["id"] for j in json.loads(listed.stdout)] == [job.id]
    assert job.id[:8] in table.stdout
    assert ErrorType.UNREADABLE_JOB in status.stdout
    assert (
        Job.model_validate_json(status_json.stdout).errors[0].error_type == ErrorType.UNREADABLE_JOB
    )
    assert f"cancelled job {job.id}" in cancelled.stdout


# -- reading outcomes ----------------------------------------------------------------------------

BAD_RESULTS = {"i1": "{not json", "i2": "[" * 100_000}


def check_outcomes(outcomes: list[dict[str, Any]]) -> None:
    by_id = {o["item_id"]: o for o in outcomes}
    assert sorted(by_id) == ["i0", "i1", "i2", "i3"]
    assert by_id["i0"]["result"] == {"seen": "i0"}
    assert by_id["i0"]["error_type"] is None
    for item_id in BAD_RESULTS:
        bad = by_id[item_id]
        assert bad["status"] == ItemStatus.SUCCEEDED.value  # it did succeed; its result is lost
        assert bad["result"] is None
        assert bad["error_type"] == ErrorType.UNREADABLE_RESULT
        assert "cannot be decoded" in bad["error"]
        assert item_id in bad["error"]
    assert by_id["i3"]["status"] == "failed"


async def corrupt_job(url: str) -> Job:
    items = [{"id": "i0"}, {"id": "i1"}, {"id": "i2"}, {"id": "i3", "fail": True}]
    job = await finished(url, items)
    assert job.status is JobStatus.COMPLETED
    for item_id, text in BAD_RESULTS.items():
        corrupt_result(url, job.id, item_id, text)
    return job


async def test_outcomes_with_unreadable_results_are_read_flagged(store_url: str) -> None:
    job = await corrupt_job(store_url)
    async with pipeline_on(store_url) as pipeline:
        outcomes = [o.model_dump(mode="json") async for o in pipeline.outcomes(job.id)]
        succeeded = [o async for o in pipeline.outcomes(job.id, "succeeded", page_size=1)]
        transport = httpx.ASGITransport(app=create_app(pipeline), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            page = await client.get(f"/jobs/{job.id}/outcomes")
            lines = await client.get(
                f"/jobs/{job.id}/outcomes", headers={"accept": "application/x-ndjson"}
            )
    check_outcomes(outcomes)
    assert len(succeeded) == 3
    assert page.status_code == 200, page.text
    check_outcomes(page.json()["outcomes"])
    assert lines.status_code == 200, lines.text
    check_outcomes([json.loads(line) for line in lines.text.splitlines()])

    def export(fmt: str) -> Result:
        return invoke("results", job.id, "--format", fmt, "--store", store_url)

    jsonl = await anyio.to_thread.run_sync(export, "jsonl")
    assert jsonl.exit_code == 0, jsonl.output
    check_outcomes([json.loads(line) for line in jsonl.stdout.splitlines()])
    csv_out = await anyio.to_thread.run_sync(export, "csv")
    assert csv_out.exit_code == 0, csv_out.output
    assert len(csv_out.stdout.splitlines()) == 5


async def test_memory_store_outcomes_with_unreadable_results_are_read_flagged() -> None:
    store = MemoryStore()
    async with Pipeline(store, processors={"echo": echo}, poll_interval=0.02) as pipeline:
        items = [{"id": "i0"}, {"id": "i1"}, {"id": "i2"}, {"id": "i3", "fail": True}]
        job = await pipeline.submit("echo", items, options=QUICK)
        await pipeline.wait(job.id, timeout=PATIENCE)
        rows = store._jobs[job.id].outcomes
        for n, row in enumerate(rows):
            if row.item_id in BAD_RESULTS:
                rows[n] = row._replace(result=BAD_RESULTS[row.item_id])
        check_outcomes([o.model_dump(mode="json") async for o in pipeline.outcomes(job.id)])


def test_outcome_from_row_keeps_a_failed_outcome_as_stored() -> None:
    row = outcome_from_row("x", False, "{not json", "boom", "ValueError", 2, 1.0, 2.0)
    assert (row.status, row.error, row.error_type, row.result) == (
        ItemStatus.FAILED,
        "boom",
        "ValueError",
        None,
    )
