"""Workers you can see: the registry through Pipeline.workers(), the submit check
(UnknownProcessor / allow_unserved), the registration's life (refresh, expiry, re-registering),
``bulkpipe workers`` and ``GET /workers``. Store semantics are in the contract
(``bulkpipe/testing/contract/workers.py``); real processes in test_worker_registry_procs.py."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from bulkpipe import (
    JobStatus,
    PermanentError,
    Pipeline,
    UnknownProcessor,
    Worker,
    WorkerInfo,
)
from bulkpipe.cli import cli
from bulkpipe.http import Principal, create_app
from bulkpipe.store import JobStore
from bulkpipe.stores import MemoryStore, _workers, open_store
from bulkpipe.testing.contract.workers import worker_info

from .helpers import PATIENCE, QUICK, make_items

pytestmark = pytest.mark.anyio


async def echo(item: dict[str, Any]) -> dict[str, Any]:
    return {"seen": item["id"]}


async def until(check: Callable[[], Awaitable[bool]], timeout: float = PATIENCE) -> None:
    """Poll ``check`` (a store read: registrations change on the worker's heartbeat)."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - another process or thread may write it
            await anyio.sleep(0.02)


def served(workers: list[WorkerInfo]) -> set[str]:
    return {name for w in workers for name in w.processors}


# -- Pipeline.workers() -----------------------------------------------------------------------


async def test_in_process_workers_register_and_unregister(any_store: JobStore) -> None:
    async with Pipeline(any_store, processors={"echo": echo}, workers=2) as pipeline:
        found = await pipeline.workers()
        assert sorted(w.id for w in found) == sorted(w.worker_id for w in pipeline.local_workers)
        for info in found:
            assert (info.host, info.pid) == (socket.gethostname(), os.getpid())
            assert "echo" in info.processors
            assert info.processors == sorted(info.processors)
            assert info.started_at <= info.last_seen
    async with Pipeline(any_store, workers=0) as pipeline:
        assert await pipeline.workers() == []  # stopped gracefully: unregistered at once


async def test_a_worker_shows_its_items_in_flight(any_store: JobStore) -> None:
    release = anyio.Event()

    async def held(item: dict[str, Any]) -> None:
        await release.wait()

    options = QUICK.model_copy(update={"batch_size": 3, "concurrency": 1})
    async with Pipeline(any_store, processors={"held": held}, lease_timeout=0.6) as pipeline:
        job = await pipeline.submit("held", make_items(3), options=options)

        async def holding() -> bool:
            return [w.in_flight for w in await pipeline.workers()] == [3]

        await until(holding)
        release.set()
        assert (await pipeline.wait(job.id, timeout=PATIENCE)).status is JobStatus.COMPLETED

        async def idle() -> bool:
            return [w.in_flight for w in await pipeline.workers()] == [0]

        await until(idle)


async def test_a_worker_that_stops_without_a_graceful_stop_expires(any_store: JobStore) -> None:
    await any_store.open()
    try:
        worker = Worker(any_store, processors={"echo": echo}, lease_timeout=0.3)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.serve)
            assert [w.id for w in await any_store.list_workers()] == [worker.worker_id]
            tg.cancel_scope.cancel()  # cancelled, not stopped: no unregistering
        assert [w.id for w in await any_store.list_workers()] == [worker.worker_id]

        async def gone() -> bool:
            return await any_store.list_workers() == []

        await until(gone, timeout=3 * worker.registration.ttl + 2)
    finally:
        await any_store.close()


async def test_a_registration_deleted_behind_its_back_comes_back(any_store: JobStore) -> None:
    async with Pipeline(any_store, processors={"echo": echo}, lease_timeout=0.3) as pipeline:
        (worker,) = pipeline.local_workers
        await any_store.unregister_worker(worker.worker_id)

        async def back() -> bool:
            return [w.id for w in await pipeline.workers()] == [worker.worker_id]

        await until(back)


async def test_a_processor_registered_later_is_served_in_the_registry() -> None:
    async with Pipeline(processors={"echo": echo}, lease_timeout=0.3) as pipeline:
        pipeline.register("late", echo)

        async def listed() -> bool:
            return "late" in served(await pipeline.workers())

        await until(listed)


async def test_registrations_expired_long_ago_are_deleted(
    any_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_workers, "FORGET_AFTER", 0.0)
    await any_store.open()
    try:
        await any_store.register_worker(worker_info("old"), 0.05)
        await any_store.register_worker(worker_info("live"), 60)
        await anyio.sleep(0.2)
        assert [w.id for w in await any_store.list_workers()] == ["live"]
        assert await any_store.worker_seen("old", 0, 60) is False  # deleted, not just expired
    finally:
        await any_store.close()


async def test_the_heartbeat_thread_keeps_a_blocked_worker_listed(store_url: str) -> None:
    """The loop blocks for longer than the registration lives; the thread refreshes it."""
    seen: list[list[str]] = []

    def look() -> None:
        async def read() -> list[str]:
            other = open_store(store_url)
            await other.open()
            try:
                return [w.id for w in await other.list_workers()]
            finally:
                await other.close()

        seen.append(anyio.run(read))

    async def blocking(item: dict[str, Any]) -> None:
        time.sleep(1.5)  # noqa: ASYNC251 - blocks the loop, on purpose
        reader = threading.Thread(target=look)
        reader.start()
        reader.join(PATIENCE)  # the loop is still blocked while the other store reads

    async with Pipeline(
        open_store(store_url), processors={"blocking": blocking}, lease_timeout=0.6
    ) as pipeline:
        (worker,) = pipeline.local_workers
        assert worker.registration.ttl < 1.5
        job = await pipeline.submit("blocking", make_items(1), options=QUICK)
        assert (await pipeline.wait(job.id, timeout=PATIENCE)).status is JobStatus.COMPLETED
    assert seen == [[worker.worker_id]]


# -- the submit check ---------------------------------------------------------------------------


async def test_a_processor_nothing_serves_is_refused(any_store: JobStore) -> None:
    async with Pipeline(any_store, processors={"echo": echo}, workers=0) as pipeline:
        with pytest.raises(UnknownProcessor) as caught:
            await pipeline.submit("ecko", make_items(2))
        message = str(caught.value)
        assert "unknown processor 'ecko'" in message
        assert "echo" in message  # the known ones are listed
        assert "allow_unserved=True" in message
        assert "--allow-unserved" in message
        assert caught.value.name == "ecko"
        assert await pipeline.list_jobs() == []  # no job was made
        job = await pipeline.submit("ecko", make_items(2), allow_unserved=True)
        assert job.status is JobStatus.PENDING


async def test_a_processor_a_live_worker_elsewhere_serves_is_accepted(
    any_store: JobStore,
) -> None:
    async with Pipeline(any_store, workers=0) as client:
        with pytest.raises(UnknownProcessor):
            await client.submit("remote", make_items(1))
        worker = Worker(any_store, processors={"remote": echo}, lease_timeout=0.3)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.serve)  # registered once it serves
            job = await client.submit("remote", make_items(3), options=QUICK)
            done = await client.wait(job.id, timeout=PATIENCE)
            worker.stop()
        assert done.status is JobStatus.COMPLETED
        with pytest.raises(UnknownProcessor, match="remote"):  # it stopped: refused again
            await client.submit("remote", make_items(1))


async def test_retry_failed_is_checked_the_same_way(any_store: JobStore) -> None:
    async def fails(item: dict[str, Any]) -> None:
        raise PermanentError("no")

    async with Pipeline(any_store, processors={"fails": fails}) as pipeline:
        job = await pipeline.submit("fails", make_items(2), options=QUICK)
        assert (await pipeline.wait(job.id, timeout=PATIENCE)).failed_items == 2
    async with Pipeline(any_store, workers=0) as client:
        with pytest.raises(UnknownProcessor, match="'fails'"):
            await client.retry_failed(job.id)
        retry = await client.retry_failed(job.id, allow_unserved=True)
        assert (retry.retry_of, retry.total_items) == (job.id, 2)


# -- the command line ---------------------------------------------------------------------------


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


async def test_cli_workers_lists_them_as_a_table_and_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    empty = await anyio.to_thread.run_sync(partial(run_cli, "workers", "--json", "--store", url))
    assert (empty.exit_code, json.loads(empty.stdout)) == (0, [])
    none = await anyio.to_thread.run_sync(partial(run_cli, "workers", "--store", url))
    assert (none.exit_code, none.stdout, none.stderr.strip()) == (0, "", "no live workers")
    async with Pipeline(open_store(url), processors={"echo": echo}) as pipeline:
        (worker,) = pipeline.local_workers
        listed = await anyio.to_thread.run_sync(
            partial(run_cli, "workers", "--json", "--store", url)
        )
        table = await anyio.to_thread.run_sync(partial(run_cli, "workers", "--store", url))
    assert listed.exit_code == 0, listed.stderr
    (info,) = [WorkerInfo.model_validate(w) for w in json.loads(listed.stdout)]
    assert (info.id, info.pid, info.host) == (worker.worker_id, os.getpid(), socket.gethostname())
    assert "echo" in info.processors
    assert table.exit_code == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.startswith("WORKER")
    assert header.split()[-2:] == ["IN", "FLIGHT"]
    assert row.startswith(worker.worker_id)
    assert str(os.getpid()) in row


def test_cli_submit_of_an_unserved_processor_is_one_error_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": 1}\n')
    result = run_cli("submit", "no_such_processor", str(items), "--store", url)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("bulkpipe: error: unknown processor 'no_such_processor'")
    assert "--allow-unserved" in line
    assert json.loads(run_cli("list", "--json", "--store", url).stdout) == []  # no job made
    allowed = run_cli("submit", "no_such_processor", str(items), "--allow-unserved", "--store", url)
    assert allowed.exit_code == 0, allowed.stderr
    assert "waits for a worker" in allowed.stderr


# -- HTTP -------------------------------------------------------------------------------------

TOKENS = {"root": Principal(name="ops"), "acme": Principal(name="alice", owner="acme")}


def token_auth(request: Any) -> Principal | None:
    return TOKENS.get(request.headers.get("authorization", "").removeprefix("Bearer "))


async def api(pipeline: Pipeline, **options: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(pipeline, **options))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


async def test_get_workers_lists_the_live_workers(any_store: JobStore) -> None:
    async with (
        Pipeline(any_store, processors={"echo": echo}) as pipeline,
        await api(pipeline) as client,
    ):
        response = await client.get("/workers")
        assert response.status_code == 200, response.text
        (body,) = response.json()
        assert body["id"] == pipeline.local_workers[0].worker_id
        assert body["pid"] == os.getpid()
        assert "echo" in body["processors"]


async def test_with_auth_workers_are_for_operators_and_a_400_names_only_the_processor() -> None:
    async with (
        Pipeline(MemoryStore(), processors={"secret_sauce": echo}, workers=0) as pipeline,
        await api(pipeline, auth=token_auth) as client,
    ):
        root, acme = ({"authorization": f"Bearer {t}"} for t in ("root", "acme"))
        assert (await client.get("/workers", headers=root)).status_code == 200
        assert (await client.get("/workers", headers=acme)).status_code == 403
        assert (await client.get("/workers")).status_code == 401
        body = {"processor": "sauce", "items": [{"id": 1}]}
        for headers in (root, acme):
            response = await client.post("/jobs", json=body, headers=headers)
            assert response.status_code == 400, response.text
            detail = response.json()["detail"]
            assert "unknown processor 'sauce'" in detail
            assert "secret_sauce" not in detail
            assert "(known:" not in detail
        body["allow_unserved"] = True
        assert (await client.post("/jobs", json=body, headers=acme)).status_code == 201
