"""SQLiteStore: the store contract, its schema and migrations, bad files, and several store
objects (standing in for processes) on one file."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkpipe import ItemStatus, JobStatus, PermanentError, Pipeline, StoreError
from bulkpipe.store import JobStore
from bulkpipe.stores import SQLiteStore, open_store
from bulkpipe.stores._sql import load_migrations, schema_script
from bulkpipe.testing import (
    LONG_LEASE,
    StoreContract,
    add_job,
    claim,
    encoded,
    fail_row,
    ok_row,
    read_all_outcomes,
    report,
    store_state_machine,
)

from .helpers import PATIENCE, make_items, quick


class TestSQLiteStore(StoreContract):
    """Every contract test, on a fresh database file."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
        store = SQLiteStore(tmp_path / "jobs.db")
        await store.open()
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def _file_store() -> AsyncIterator[JobStore]:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "jobs.db")
        await store.open()
        try:
            yield store
        finally:
            await store.close()


TestSQLiteStatefulAsyncio = store_state_machine(_file_store, backend="asyncio")
TestSQLiteStatefulTrio = store_state_machine(_file_store, backend="trio")


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    ).fetchall()


async def _opened(path: Path, **kwargs: Any) -> SQLiteStore:
    store = SQLiteStore(path, **kwargs)
    await store.open()
    return store


# -- schema and migrations --------------------------------------------------------------------


@pytest.mark.anyio
async def test_migrations_build_the_schema_of_schema_sql(tmp_path: Path) -> None:
    store = await _opened(tmp_path / "jobs.db")  # applies the migrations
    await store.close()
    expected = sqlite3.connect(":memory:")
    expected.executescript(schema_script("sqlite", "bulkpipe_"))
    with sqlite3.connect(tmp_path / "jobs.db") as built:
        assert _schema(built) == _schema(expected)
        version = built.execute(
            "SELECT value FROM bulkpipe_meta WHERE key = 'schema_version'"
        ).fetchone()[0]
    assert version == load_migrations("sqlite", "bulkpipe_")[-1][0]


@pytest.mark.anyio
async def test_open_is_idempotent_and_reopening_keeps_the_schema(tmp_path: Path) -> None:
    store = await _opened(tmp_path / "jobs.db")
    await store.open()
    await store.close()
    await store.close()
    again = await _opened(tmp_path / "jobs.db")
    assert await again.list_jobs() == []
    await again.close()


@pytest.mark.anyio
async def test_a_database_from_a_newer_bulkpipe_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await (await _opened(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE bulkpipe_meta SET value = 999 WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match=r"newer bulkpipe.*upgrade bulkpipe"):
        await _opened(path)


@pytest.mark.anyio
async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(StoreError, match="not a SQLite database"):
        await _opened(path)
    assert path.read_bytes().startswith(b"these are my notes")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE bulkpipe_jobs (name TEXT)",  # someone else's table, no meta
        "CREATE TABLE bulkpipe_meta (k TEXT, v TEXT)",  # a foreign meta table
    ],
)
async def test_foreign_tables_with_our_names_are_refused(tmp_path: Path, ddl: str) -> None:
    path = tmp_path / "shared.db"
    with sqlite3.connect(path) as conn:
        conn.execute(ddl)
    conn.close()
    with pytest.raises(StoreError, match="bulkpipe did not create"):
        await _opened(path)


@pytest.mark.anyio
async def test_a_changed_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await (await _opened(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE bulkpipe_items ADD COLUMN extra TEXT")
    conn.close()
    with pytest.raises(StoreError, match="bulkpipe_items"):
        await _opened(path)


@pytest.mark.anyio
async def test_prefixes_keep_applications_apart(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    one, two = await _opened(path), await _opened(path, prefix="other_")
    try:
        job = await add_job(one, encoded(2))
        assert await two.list_jobs() == []
        assert await two.claim_batch(worker_id="w", lease_seconds=1) is None
        assert (await one.get_job(job.id)).total_items == 2
    finally:
        await one.close()
        await two.close()


@pytest.mark.anyio
async def test_a_store_that_is_not_open_says_so(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    with pytest.raises(StoreError, match="not open"):
        await store.list_jobs()


# -- files SQLite cannot write --------------------------------------------------------------


def _permissions_bind() -> bool:
    """False when this process may write read-only files anyway (root, CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.touch(0o444)
        try:
            with probe.open("a"):
                return False
        except PermissionError:
            return True


@pytest.mark.anyio
@pytest.mark.skipif(
    not _permissions_bind(),
    reason="root writes read-only files anyway; "
    "test_a_read_only_file_is_refused_when_root_drops_its_override covers it",
)
@pytest.mark.parametrize("folder_too", [False, True])
async def test_a_read_only_file_is_refused(tmp_path: Path, folder_too: bool) -> None:
    path = tmp_path / "jobs.db"
    await (await _opened(path)).close()
    os.chmod(path, 0o444)
    if folder_too:  # SQLite also writes -wal and -shm files beside the database
        os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(StoreError, match="read-only"):
            await _opened(path)
    finally:
        os.chmod(tmp_path, 0o755)


_READ_ONLY_CHECK = """
import anyio, os, sys
from bulkpipe import StoreError
from bulkpipe.stores import SQLiteStore

async def main(path, folder_too):
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    os.chmod(path, 0o444)
    if folder_too:
        os.chmod(os.path.dirname(path), 0o555)
    try:
        await SQLiteStore(path).open()
    except StoreError as exc:
        print("refused:", exc)
    else:
        print("opened")

anyio.run(main, sys.argv[1], sys.argv[2] == "1")
"""


@pytest.mark.subprocess
@pytest.mark.skipif(
    _permissions_bind() or shutil.which("setpriv") is None,
    reason="runs as root with setpriv; without root the test above covers it",
)
@pytest.mark.parametrize("folder_too", [False, True])
def test_a_read_only_file_is_refused_when_root_drops_its_override(
    tmp_path: Path, folder_too: bool
) -> None:
    # Root writes read-only files anyway; dropping CAP_DAC_OVERRIDE makes it see them as such.
    folder = tmp_path / "db"
    folder.mkdir()
    done = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            _READ_ONLY_CHECK,
            str(folder / "jobs.db"),
            "1" if folder_too else "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    os.chmod(folder, 0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:"), done.stdout
    assert "read-only" in done.stdout


@pytest.mark.anyio
async def test_a_write_sqlite_refuses_becomes_a_store_error(tmp_path: Path) -> None:
    # What a read-only file does once open, reproduced in a way root cannot bypass.
    store = await _opened(tmp_path / "jobs.db")
    job = await add_job(store, encoded(3))
    assert store._conn is not None
    store._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="read-only") as info:
        await store.add_batch(job.id, encoded(2, 3))
    assert isinstance(info.value.__cause__, sqlite3.Error)
    store._conn.execute("PRAGMA query_only = OFF")
    assert (await store.get_job(job.id)).total_items == 3  # the failed call left nothing
    await store.close()


@pytest.mark.anyio
async def test_a_full_disk_is_a_store_error_and_rolls_back(tmp_path: Path) -> None:
    store = await _opened(tmp_path / "jobs.db")
    job = await add_job(store, encoded(3))
    assert store._conn is not None
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is full now
    big = [(f"big-{i}", '"' + "x" * 4000 + '"') for i in range(50)]
    with pytest.raises(StoreError, match="full"):
        await store.add_batch(job.id, big)
    assert (await store.get_job(job.id)).total_items == 3
    await store.close()


# -- several store objects (processes) on one file ---------------------------------------------


@pytest.mark.anyio
async def test_two_stores_on_one_file_never_claim_the_same_batch(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    stores = [await _opened(path, busy_timeout=PATIENCE) for _ in range(2)]
    batches = 60
    job = await add_job(stores[0], *(encoded(1, i) for i in range(batches)), seal=True)
    claimed: list[tuple[int, int]] = []

    async def claimer(store: SQLiteStore, name: str) -> None:
        while True:
            got = await store.claim_batch(worker_id=name, lease_seconds=LONG_LEASE)
            if got is None:
                return
            claimed.append((got.lease.batch_no, got.lease.token))
            await store.record(job.id, [report(got)])

    try:
        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(claimer, stores[n % 2], f"w{n}")
    finally:
        for store in stores:
            await store.close()
    assert sorted(no for no, _ in claimed) == list(range(batches))
    assert len({token for _, token in claimed}) == batches
    reader = await _opened(path)
    got = await reader.get_job(job.id)
    assert (got.succeeded_items, got.total_items) == (batches, batches)
    await reader.close()


@pytest.mark.anyio
async def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = await _opened(path)
    job = await add_job(store, encoded(3), encoded(2, 3), seal=True, owner="ann")
    first = await claim(store, lease_seconds=0)
    rows = [ok_row("item-0", {"r": 1}), fail_row("item-1")]
    await store.record(job.id, [report(first, rows, done=False)])
    await store.close()

    store = await _opened(path)  # a restart: a new object, the same file
    got = await store.get_job(job.id)
    assert (got.total_items, got.succeeded_items, got.failed_items, got.sealed) == (5, 1, 1, True)
    assert (got.status, got.owner, got.error_count) == (JobStatus.PROCESSING, "ann", 1)
    outcomes = await read_all_outcomes(store, job.id)
    assert [(o.item_id, o.status, o.result) for o in outcomes] == [
        ("item-0", ItemStatus.SUCCEEDED, {"r": 1}),
        ("item-1", ItemStatus.FAILED, None),
    ]
    assert (await claim(store, job.id)).lease.batch_no == 1  # pending ones first
    again = await claim(store, job.id)  # then the expired lease, with only its item left
    assert [item_id for item_id, _ in again.items] == ["item-2"]
    assert again.lease.token > first.lease.token
    await store.close()


# -- store URLs ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_open_store_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel/jobs.db")
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}")
    prefixed = open_store(f"sqlite:///{tmp_path / 'abs.db'}?prefix=app_")
    assert isinstance(relative, SQLiteStore)
    assert isinstance(absolute, SQLiteStore)
    assert isinstance(prefixed, SQLiteStore)
    assert (relative.path, relative.prefix) == ("rel/jobs.db", "bulkpipe_")
    assert absolute.path == str(tmp_path / "abs.db")
    assert (prefixed.path, prefixed.prefix) == (str(tmp_path / "abs.db"), "app_")
    (tmp_path / "rel").mkdir()
    for store in (relative, absolute, prefixed):
        await store.open()
        await store.close()
    assert (tmp_path / "rel" / "jobs.db").exists()
    with sqlite3.connect(tmp_path / "abs.db") as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert {"bulkpipe_jobs", "app_jobs"} <= names


@pytest.mark.anyio
async def test_a_missing_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot be opened"):
        await _opened(tmp_path / "no" / "such" / "dir" / "jobs.db")


# -- end to end ---------------------------------------------------------------------------------


async def _score(item: Mapping[str, Any]) -> dict[str, int]:
    if item["n"] % 10 == 3:
        raise PermanentError("threes fail")
    return {"score": item["n"] * 2}


@pytest.mark.anyio
async def test_a_pipeline_job_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with Pipeline(store=SQLiteStore(path), processors={"score": _score}) as p:
        job = await p.submit("score", make_items(250), options=quick(batch_size=10))
        job = await p.wait(job.id, timeout=PATIENCE)
        assert job.status is JobStatus.COMPLETED
        assert (job.total_items, job.succeeded_items, job.failed_items) == (250, 225, 25)
        outcomes = [o async for o in p.outcomes(job.id)]
        assert len(outcomes) == len({o.item_id for o in outcomes}) == 250
        retry = await p.retry_failed(job.id)
        retry = await p.wait(retry.id, timeout=PATIENCE)
        assert (retry.total_items, retry.failed_items, retry.retry_of) == (25, 25, job.id)

    async with Pipeline(store=SQLiteStore(path), workers=0) as reader:  # after a restart
        again = await reader.get(job.id)
        assert (again.status, again.succeeded_items) == (JobStatus.COMPLETED, 225)
        assert len(await reader.list_jobs()) == 2
