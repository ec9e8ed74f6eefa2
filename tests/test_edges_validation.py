"""Issue 13, findings 2 and 9 (priority): options and priorities are finite and in range at
every entry (Python API, command line, HTTP), and a refused submission stores nothing.

Before, an infinite option passed validation, was stored as JSON ``null`` and only failed when
the job was read back: the caller saw an error, but the stored job then broke every worker and
every listing. A priority over 32 bits was accepted on SQLite and refused by PostgreSQL (or,
over 64 bits, raised a driver traceback).
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner, Result
from pydantic import ValidationError

from bulkpipe import InvalidArgument, JobOptions, PermanentError, Pipeline
from bulkpipe.cli import cli
from bulkpipe.http import create_app
from bulkpipe.options import MAX_RETRY_DELAY, MAX_TIMEOUT, PRIORITY_MAX, PRIORITY_MIN
from bulkpipe.stores import open_store
from tests.helpers import PATIENCE

#: (field, value) pairs that must be refused: not finite, or past the field's bound.
BAD_OPTIONS: list[tuple[str, float]] = [
    ("timeout", math.inf),
    ("timeout", math.nan),
    ("timeout", MAX_TIMEOUT * 2),
    ("item_timeout", math.inf),
    ("retry_delay", math.inf),
    ("retry_delay_max", math.inf),
    ("retry_delay_max", MAX_RETRY_DELAY * 2),
    ("progress_interval", math.nan),
    ("max_failure_ratio", math.nan),
    ("item_concurrency", 10**9),
]

BAD_PRIORITIES = [PRIORITY_MAX + 1, PRIORITY_MIN - 1, 2**63, -(2**63) - 1]


async def echo(item: dict[str, Any]) -> dict[str, Any]:
    return {"seen": item["id"]}


# (any_url: the fixture in tests/conftest.py)


# -- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), BAD_OPTIONS)
def test_job_options_refuse_values_that_are_not_finite_or_out_of_range(
    field: str, value: float
) -> None:
    with pytest.raises(ValidationError) as caught:
        JobOptions.model_validate({field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_job_options_at_their_bounds_survive_a_json_round_trip() -> None:
    options = JobOptions(
        timeout=MAX_TIMEOUT,
        item_timeout=MAX_TIMEOUT,
        retry_delay=MAX_RETRY_DELAY,
        retry_delay_max=MAX_RETRY_DELAY,
        batch_size=100_000,
        item_concurrency=100_000,
    )
    assert JobOptions.model_validate_json(options.model_dump_json()) == options


# -- the Python API -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "value"), BAD_OPTIONS)
async def test_submit_refuses_bad_options_and_stores_nothing(
    any_url: str, field: str, value: float
) -> None:
    async with Pipeline(open_store(any_url), processors={"echo": echo}, workers=0) as pipeline:
        # model_copy does not validate: the options must be checked again before storing.
        sneaky = JobOptions().model_copy(update={field: value})
        for options in ({field: value}, sneaky):
            with pytest.raises(ValidationError):
                await pipeline.submit("echo", [{"id": 1}], options=options)
        assert await pipeline.list_jobs() == []


@pytest.mark.anyio
async def test_bad_default_options_are_refused_at_submit(any_url: str) -> None:
    defaults = JobOptions().model_copy(update={"timeout": math.inf})
    pipeline = Pipeline(open_store(any_url), workers=0, default_options=defaults)
    async with pipeline:
        with pytest.raises(ValidationError):
            await pipeline.submit("echo", [{"id": 1}])
        assert await pipeline.list_jobs() == []


@pytest.mark.anyio
@pytest.mark.parametrize("priority", BAD_PRIORITIES)
async def test_submit_refuses_a_priority_no_store_can_hold(any_url: str, priority: int) -> None:
    async with Pipeline(open_store(any_url), processors={"echo": echo}, workers=0) as pipeline:
        with pytest.raises(InvalidArgument, match="priority must be from"):
            await pipeline.submit("echo", [{"id": 1}], priority=priority)
        assert await pipeline.list_jobs() == []


@pytest.mark.anyio
async def test_the_priority_bounds_themselves_are_stored_on_every_store(any_url: str) -> None:
    async with Pipeline(open_store(any_url), processors={"echo": echo}, workers=0) as pipeline:
        for priority in (PRIORITY_MIN, PRIORITY_MAX):
            job = await pipeline.submit("echo", [{"id": 1}], priority=priority)
            assert (await pipeline.get(job.id)).priority == priority


@pytest.mark.anyio
async def test_retry_failed_refuses_bad_options_and_stores_nothing(any_url: str) -> None:
    async def fail(item: dict[str, Any]) -> None:
        raise PermanentError("no")

    quick = JobOptions(retry_delay=0, retry_delay_max=0, progress_interval=0.05)
    async with Pipeline(open_store(any_url), processors={"fail": fail}, poll_interval=0.02) as p:
        job = await p.submit("fail", [{"id": 1}], options=quick)
        job = await p.wait(job.id, timeout=PATIENCE)
        assert job.failed_items == 1
        with pytest.raises(ValidationError):
            await p.retry_failed(job.id, options=quick.model_copy(update={"timeout": math.inf}))
        assert [j.id for j in await p.list_jobs()] == [job.id]


# -- the command line ---------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_one_error_line(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bulkpipe: error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def stored_jobs(url: str) -> list[str]:
    async def read() -> list[str]:
        async with Pipeline(open_store(url), workers=0) as pipeline:
            return [job.id for job in await pipeline.list_jobs()]

    return anyio.run(read)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--timeout", "inf"], "--timeout"),
        (["--timeout", "1e999"], "--timeout"),
        (["--timeout", "nan"], "--timeout"),
        (["--timeout", "1e9"], "--timeout"),
        (["--retry-delay", "inf"], "--retry-delay"),
        (["--retry-delay-max", "inf"], "--retry-delay-max"),
        (["--item-timeout", "-inf"], "--item-timeout"),
        (["--progress-interval", "nan"], "--progress-interval"),
        (["--max-failure-ratio", "nan"], "--max-failure-ratio"),
        (["--max-claims", "1"], "--max-claims"),
        (["--item-concurrency", "99999999999999999999"], "--item-concurrency"),
        (["--priority", "9223372036854775808"], "--priority"),
        (["--priority", "2147483648"], "--priority"),
        (["--priority", "-2147483649"], "--priority"),
    ],
)
def test_cli_submit_refuses_bad_numbers_in_one_line_and_stores_nothing(
    tmp_path: Path, flags: list[str], fragment: str
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": 1}\n{"id": 2}\n')
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = invoke("submit", "echo", str(items), *flags, "--store", url)
    assert_one_error_line(result, fragment)
    assert stored_jobs(url) == []


def test_cli_submit_stores_max_claims(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": 1}\n')
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = invoke(
        "submit", "echo", str(items), "--max-claims", "7", "--allow-unserved", "--store", url
    )
    assert result.exit_code == 0, result.output

    async def read() -> int:
        async with Pipeline(open_store(url), workers=0) as pipeline:
            (job,) = await pipeline.list_jobs()
            return job.options.max_claims

    assert anyio.run(read) == 7


@pytest.mark.parametrize("flag", ["--limit", "--offset"])
def test_cli_list_refuses_a_limit_or_offset_no_store_takes(tmp_path: Path, flag: str) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert_one_error_line(invoke("list", flag, "99999999999999999999", "--store", url), flag)


# -- HTTP ---------------------------------------------------------------------------------------


async def post_raw(url: str, body: str) -> tuple[httpx.Response, httpx.Response]:
    """POST /jobs with a raw JSON body, then GET /jobs; both responses."""
    pipeline = Pipeline(open_store(url), processors={"echo": echo}, workers=1, poll_interval=0.02)
    with anyio.fail_after(PATIENCE * 3):
        async with pipeline:
            app = create_app(pipeline)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                posted = await client.post(
                    "/jobs", content=body, headers={"content-type": "application/json"}
                )
                listed = await client.get("/jobs")
    return posted, listed


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ('{"timeout": 1e999}', "timeout"),
        ('{"timeout": Infinity}', "timeout"),
        ('{"retry_delay": NaN}', "retry_delay"),
        ('{"retry_delay_max": -1e999}', "retry_delay_max"),
        ('{"item_timeout": 1e300}', "item_timeout"),
        ('{"item_concurrency": 1000000000}', "item_concurrency"),
    ],
)
async def test_http_submit_refuses_bad_options_with_422_and_stores_nothing(
    any_url: str, options: str, field: str
) -> None:
    body = '{"processor": "echo", "items": [{"id": 1}], "options": ' + options + "}"
    posted, listed = await post_raw(any_url, body)
    assert posted.status_code == 422, posted.text
    problem = posted.json()
    assert ["body", "options", field] in [error["loc"] for error in problem["errors"]]
    assert "Traceback" not in posted.text
    assert listed.status_code == 200, listed.text
    assert listed.json()["jobs"] == []


@pytest.mark.anyio
@pytest.mark.parametrize("priority", BAD_PRIORITIES)
async def test_http_submit_refuses_a_priority_no_store_can_hold(
    any_url: str, priority: int
) -> None:
    body = json.dumps({"processor": "echo", "items": [{"id": 1}], "priority": priority})
    posted, listed = await post_raw(any_url, body)
    assert posted.status_code == 422, posted.text
    assert listed.json()["jobs"] == []


@pytest.mark.anyio
async def test_retry_of_an_old_sqlite_job_with_a_priority_out_of_range_takes_the_bound(
    tmp_path: Path,
) -> None:
    async def fail(item: dict[str, Any]) -> None:
        raise PermanentError("no")

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    quick = JobOptions(retry_delay=0, retry_delay_max=0, progress_interval=0.05)
    async with Pipeline(open_store(url), processors={"fail": fail}, poll_interval=0.02) as p:
        high = await p.wait((await p.submit("fail", [{"id": 1}], options=quick)).id, PATIENCE)
        low = await p.wait((await p.submit("fail", [{"id": 1}], options=quick)).id, PATIENCE)
        with sqlite3.connect(tmp_path / "jobs.db") as conn:  # as the old code let it be stored
            for job, priority in ((high, 2**40), (low, -(2**40))):
                conn.execute(
                    "UPDATE bulkpipe_jobs SET priority = ? WHERE id = ?", (priority, job.id)
                )
        assert (await p.retry_failed(high.id)).priority == PRIORITY_MAX
        assert (await p.retry_failed(low.id)).priority == PRIORITY_MIN
