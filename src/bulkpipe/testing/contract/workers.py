"""The store contract: the worker registry (``register_worker``, ``worker_seen``,
``unregister_worker``, ``list_workers``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from ...errors import InvalidArgument
from ...models import WorkerInfo
from ...store import JobStore
from ._base import ContractBase, near

_LONG = 60.0


def worker_info(worker_id: str = "w-1", **changes: object) -> WorkerInfo:
    """A :class:`WorkerInfo` with sensible defaults (started a minute ago, seen now)."""
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "id": worker_id,
        "host": "host-a",
        "pid": 4242,
        "processors": ["resize", "score"],
        "started_at": now - timedelta(minutes=1),
        "last_seen": now,
        "in_flight": 0,
        **changes,
    }
    return WorkerInfo.model_validate(fields)


def _same(a: WorkerInfo, b: WorkerInfo) -> bool:
    return (
        (a.id, a.host, a.pid, a.processors, a.in_flight)
        == (b.id, b.host, b.pid, b.processors, b.in_flight)
        and near(a.started_at, b.started_at)
        and near(a.last_seen, b.last_seen)
    )


class WorkersContract(ContractBase):
    """Workers register with a time to live; the live ones are listed."""

    @pytest.mark.anyio
    async def test_no_workers_in_a_new_store(self, store: JobStore) -> None:
        assert await store.list_workers() == []

    @pytest.mark.anyio
    async def test_a_registered_worker_is_listed_as_registered(self, store: JobStore) -> None:
        info = worker_info(processors=["score", "resize"], in_flight=3)
        await store.register_worker(info, _LONG)
        (listed,) = await store.list_workers()
        assert _same(listed, info.model_copy(update={"processors": ["resize", "score"]}))

    @pytest.mark.anyio
    async def test_registering_again_replaces_the_registration(self, store: JobStore) -> None:
        await store.register_worker(worker_info(), _LONG)
        again = worker_info(pid=7, processors=["other"], host="host-b")
        await store.register_worker(again, _LONG)
        (listed,) = await store.list_workers()
        assert _same(listed, again)

    @pytest.mark.anyio
    async def test_workers_are_listed_oldest_first(self, store: JobStore) -> None:
        now = datetime.now(UTC)
        for n, age in enumerate([5, 30, 10]):
            info = worker_info(f"w-{n}", started_at=now - timedelta(seconds=age))
            await store.register_worker(info, _LONG)
        assert [w.id for w in await store.list_workers()] == ["w-1", "w-2", "w-0"]

    @pytest.mark.anyio
    async def test_worker_seen_refreshes_last_seen_and_in_flight(self, store: JobStore) -> None:
        info = worker_info(last_seen=datetime.now(UTC) - timedelta(seconds=30))
        await store.register_worker(info, _LONG)
        before = datetime.now(UTC)
        assert await store.worker_seen(info.id, 17, _LONG) is True
        (listed,) = await store.list_workers()
        assert listed.in_flight == 17
        assert listed.last_seen >= before - timedelta(seconds=1)  # a database clock may lag
        assert near(listed.started_at, info.started_at)

    @pytest.mark.anyio
    async def test_worker_seen_of_an_unknown_worker_registers_nothing(
        self, store: JobStore
    ) -> None:
        assert await store.worker_seen("nobody", 1, _LONG) is False
        assert await store.list_workers() == []

    @pytest.mark.anyio
    async def test_unregister_removes_the_worker(self, store: JobStore) -> None:
        await store.register_worker(worker_info("a"), _LONG)
        await store.register_worker(worker_info("b"), _LONG)
        await store.unregister_worker("a")
        await store.unregister_worker("nobody")  # nothing to remove: no error
        assert [w.id for w in await store.list_workers()] == ["b"]
        assert await store.worker_seen("a", 0, _LONG) is False

    @pytest.mark.anyio
    async def test_an_expired_registration_is_not_listed(self, store: JobStore) -> None:
        await store.register_worker(worker_info("short"), self.short_lease)
        await store.register_worker(worker_info("long"), _LONG)
        await anyio.sleep(self.lease_wait)
        assert [w.id for w in await store.list_workers()] == ["long"]

    @pytest.mark.anyio
    async def test_worker_seen_brings_an_expired_registration_back(self, store: JobStore) -> None:
        await store.register_worker(worker_info(), self.short_lease)
        await anyio.sleep(self.lease_wait)
        assert await store.worker_seen("w-1", 2, _LONG) is True
        assert [(w.id, w.in_flight) for w in await store.list_workers()] == [("w-1", 2)]

    @pytest.mark.anyio
    @pytest.mark.parametrize("ttl", [0, -1.0, float("inf"), float("nan")])
    async def test_a_ttl_that_is_not_positive_and_finite_is_refused(
        self, store: JobStore, ttl: float
    ) -> None:
        with pytest.raises(InvalidArgument, match="ttl"):
            await store.register_worker(worker_info(), ttl)
        with pytest.raises(InvalidArgument, match="ttl"):
            await store.worker_seen("w-1", 0, ttl)
        assert await store.list_workers() == []
