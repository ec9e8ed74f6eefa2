"""Deleting and pruning jobs, retrying what a cancel left, and worker retention, through the
Pipeline, the command line and the retention loop, on every store."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result

from bulkpipe import (
    InvalidArgument,
    JobNotFinished,
    JobNotFound,
    JobStatus,
    NothingToRetry,
    Pipeline,
)
from bulkpipe.cli import cli
from bulkpipe.cli.housekeeping import parse_duration
from bulkpipe.demo import generate_nodes
from bulkpipe.housekeeping import RETENTION_LOCK, retention_interval, run_retention
from bulkpipe.store import JobStore
from bulkpipe.stores import open_store
from bulkpipe.testing.helpers import claim, fail_row, ok_row, report

from .helpers import PATIENCE, QUICK, make_items

pytestmark = pytest.mark.anyio

#: An age every job of a test has passed (completed_at is before now).
TINY = timedelta(microseconds=1)


async def fails_odd(item: Mapping[str, Any]) -> dict[str, int]:
    """Fails the items with an odd ``n``."""
    if item["n"] % 2:
        raise ValueError("odd")
    return {"n": item["n"]}


def pipeline(store: JobStore, workers: int = 1) -> Pipeline:
    return Pipeline(store, processors={"odd": fails_odd}, workers=workers, default_options=QUICK)


async def finished(p: Pipeline, count: int = 4) -> str:
    job = await p.submit("odd", make_items(count))
    return (await p.wait(job.id, timeout=PATIENCE)).id


async def test_delete_a_finished_job(any_store: JobStore) -> None:
    async with pipeline(any_store) as p:
        gone, kept = await finished(p), await finished(p)
        assert await p.delete(gone) is None
        with pytest.raises(JobNotFound):
            await p.get(gone)
        with pytest.raises(JobNotFound):
            await p.delete(gone)
        assert [job.id for job in await p.list_jobs()] == [kept]


async def test_delete_refuses_a_live_job_until_it_is_cancelled(any_store: JobStore) -> None:
    async with pipeline(any_store, workers=0) as p:
        job = await p.submit("odd", make_items(3))
        with pytest.raises(JobNotFinished, match="cancel it first"):
            await p.delete(job.id)
        assert (await p.get(job.id)).total_items == 3
        await p.cancel(job.id)
        await p.delete(job.id)
        with pytest.raises(JobNotFound):
            await p.get(job.id)


async def test_prune_deletes_jobs_that_ended_before_the_cutoff(any_store: JobStore) -> None:
    async with pipeline(any_store, workers=0) as p:
        live = await p.submit("odd", make_items(2))
        cancelled = await p.submit("odd", make_items(2))
        await p.cancel(cancelled.id)
        assert await p.prune(older_than=timedelta(days=1)) == 0  # nothing that old
        assert await p.prune(older_than=TINY, statuses=["completed"]) == 0
        assert await p.prune(older_than=TINY, statuses=[JobStatus.CANCELLED]) == 1
        assert [job.id for job in await p.list_jobs()] == [live.id]
        for bad in ({"older_than": timedelta(0)}, {"older_than": 7}):
            with pytest.raises(InvalidArgument):
                await p.prune(**bad)  # type: ignore[arg-type]
        for statuses in (["processing"], ["nope"], []):
            with pytest.raises(InvalidArgument):
                await p.prune(older_than=TINY, statuses=statuses)


async def test_retry_with_unfinished_takes_the_failed_and_the_never_run(
    any_store: JobStore,
) -> None:
    async with pipeline(any_store, workers=0) as p:
        job = await p.submit(
            "odd", make_items(6), options=QUICK.model_copy(update={"batch_size": 3})
        )
        claimed = await claim(p.store, job.id)  # items 0-2: item-1 failed; 3-5 never run
        rows = [ok_row("item-0"), fail_row("item-1"), ok_row("item-2")]
        await p.store.record(job.id, [report(claimed, rows)])
        await p.cancel(job.id)
        only_failed = await p.retry_failed(job.id)
        assert only_failed.total_items == 1
        retry = await p.retry_failed(job.id, include_unfinished=True)
        assert (retry.retry_of, retry.total_items) == (job.id, 4)
    async with pipeline(any_store) as p:
        done = await p.wait(retry.id, timeout=PATIENCE)
        ids = {o.item_id for o in [o async for o in p.outcomes(done.id)]}
        assert ids == {"item-1", "item-3", "item-4", "item-5"}


async def test_retry_with_unfinished_of_a_job_that_never_ran(any_store: JobStore) -> None:
    async with pipeline(any_store, workers=0) as p:
        job = await p.submit("odd", make_items(5))
        await p.cancel(job.id)
        with pytest.raises(NothingToRetry, match="no failed items"):
            await p.retry_failed(job.id)
        retry = await p.retry_failed(job.id, include_unfinished=True)
        assert retry.total_items == 5
    async with pipeline(any_store) as p:
        clean = await p.submit("odd", [{"id": "a", "n": 0}])
        await p.wait(clean.id, timeout=PATIENCE)
        with pytest.raises(NothingToRetry, match="no failed or unfinished items"):
            await p.retry_failed(clean.id, include_unfinished=True)


# -- retention --------------------------------------------------------------------------------


def spy(store: JobStore, name: str, after: int = 1) -> anyio.Event:
    """An event set once ``store.<name>`` has been called ``after`` times (and has answered or
    raised)."""
    method = getattr(store, name)
    called = anyio.Event()
    calls = 0

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        try:
            return await method(*args, **kwargs)
        finally:
            calls += 1
            if calls >= after:
                called.set()

    setattr(store, name, wrapped)
    return called


async def test_retention_prunes_only_while_it_holds_the_lock(any_store: JobStore) -> None:
    async with pipeline(any_store) as p:
        old = await finished(p)
        assert await p.store.try_lock(RETENTION_LOCK, "other-worker", 60)
        tried = spy(p.store, "try_lock", after=3)  # the test's own call came before
        with anyio.fail_after(PATIENCE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(run_retention, p.store, TINY, "me", every=0.01))
                await tried.wait()
                tg.cancel_scope.cancel()
        await p.get(old)  # another worker holds the lock: nothing was pruned
        await p.store.unlock(RETENTION_LOCK, "other-worker")
        deleted = spy(p.store, "delete_job")
        with anyio.fail_after(PATIENCE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_retention, p.store, TINY, "me")
                await deleted.wait()
                tg.cancel_scope.cancel()
        assert await p.list_jobs() == []
        assert await p.store.try_lock(RETENTION_LOCK, "other-worker", 60)  # given back


async def test_retention_logs_a_failed_round_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = open_store("memory://")
    await store.open()

    async def broken(**_: Any) -> list[str]:
        raise OSError("store down")

    store.ended_jobs = broken  # type: ignore[method-assign]
    rounds = spy(store, "ended_jobs", after=3)
    with caplog.at_level(logging.WARNING, "bulkpipe.housekeeping"), anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_retention, store, TINY, "me", every=0.01))
            await rounds.wait()
            tg.cancel_scope.cancel()
    assert caplog.text.count("pruning failed (OSError: store down)") >= 2


def test_retention_interval_is_a_tenth_between_a_second_and_an_hour() -> None:
    assert retention_interval(timedelta(minutes=10)) == 60
    assert retention_interval(timedelta(days=30)) == 3600
    assert retention_interval(timedelta(seconds=2)) == 1


# -- command line -----------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations(text: str, want: timedelta) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize("text", ["7", "7w", "d", "-1d", "0s", "", "1e3d", "99999999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.anyio(False)
def test_cli_delete_prune_and_retry_unfinished(tmp_path: Path) -> None:
    store = ["--store", f"sqlite:///{tmp_path / 'jobs.db'}"]

    nodes = tmp_path / "nodes.jsonl"
    nodes.write_text("".join(json.dumps(node) + "\n" for node in generate_nodes(3)))

    def submit_job() -> str:
        result = invoke("submit", "scoring", str(nodes), *store)
        assert result.exit_code == 0, result.stderr
        return result.stdout.strip()

    live = submit_job()
    refused = invoke("delete", live, *store)
    assert (refused.exit_code, "cancel it first" in refused.stderr) == (2, True)
    assert invoke("cancel", live, *store).exit_code == 0
    nothing = invoke("retry", live, *store)
    assert (nothing.exit_code, "nothing to retry" in nothing.stderr) == (2, True)
    retried = invoke("retry", live, "--include-unfinished", "--json", *store)
    assert retried.exit_code == 0, retried.stderr
    assert json.loads(retried.stdout)["total_items"] == 3
    assert invoke("delete", live, *store).stdout.strip() == f"deleted job {live}"
    assert "not found" in invoke("delete", live, *store).stderr

    other = submit_job()
    assert invoke("cancel", other, *store).exit_code == 0
    kept = invoke("prune", "--older-than", "1d", *store)
    assert kept.stdout.strip() == "deleted 0 jobs that ended over 1 day, 0:00:00 ago"
    pruned = invoke("prune", "--older-than", "1s", "--status", "completed", *store)
    assert pruned.stdout.startswith("deleted 0 jobs")
    pruned = invoke("prune", "--older-than", "0.001s", "--status", "cancelled", *store)
    assert pruned.stdout.startswith("deleted 1 job ")
    bad = invoke("prune", "--older-than", "7w", *store)
    assert (bad.exit_code, "not a duration" in bad.stderr) == (2, True)
    bad = invoke("prune", "--older-than", "7d", "--status", "processing", *store)
    assert bad.exit_code == 2
    bad = invoke("worker", "--retention", "soon", *store)
    assert (bad.exit_code, "not a duration" in bad.stderr) == (2, True)


async def test_a_worker_whose_job_is_deleted_under_it_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, release = anyio.Event(), anyio.Event()

    async def held(item: Mapping[str, Any]) -> None:
        started.set()
        await release.wait()

    async with Pipeline(processors={"held": held, "odd": fails_odd}, default_options=QUICK) as p:
        job = await p.submit("held", make_items(1))
        with anyio.fail_after(PATIENCE):
            await started.wait()
        # Another process ends and deletes the job while this worker runs its item.
        await p.store.finish_job(job.id, JobStatus.CANCELLED)
        assert await p.store.delete_job(job.id)
        release.set()  # the item ends; recording it finds no job
        with caplog.at_level(logging.ERROR):
            after = await finished(p)
        assert (await p.get(after)).status is JobStatus.COMPLETED
    assert "running job" not in caplog.text
