"""The worker registry of the three stores (:meth:`bulkpipe.store.JobStore.register_worker`
and the rest): a mixin for :class:`MemoryStore` and one for the SQL stores, whose dialects
differ only in their ``queries.sql`` (PostgreSQL keeps expiry by the database clock, SQLite
by the wall clock of the machine, which every process on one file shares).

A registration is live while its expiry is ahead of now. Listing deletes the registrations
that expired more than :data:`FORGET_AFTER` seconds ago; it reads first and deletes only when
it found one, so that a listing is a read (no write lock on SQLite) nearly always.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import attrs

from ..errors import InvalidArgument
from ..models import WorkerInfo

P = ParamSpec("P")
R = TypeVar("R")

#: Seconds after its expiry that a registration is deleted (listing does it).
FORGET_AFTER = 3600.0


def check_ttl(ttl: float) -> float:
    """``ttl`` if it is a positive, finite number of seconds; else :class:`InvalidArgument`."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
        raise InvalidArgument(
            f"ttl must be a positive, finite number of seconds, not {ttl!r}; it is how long "
            "a worker's registration stays live without being refreshed"
        )
    return float(ttl)


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class WorkerRow(NamedTuple):
    """A row of the ``list_workers`` query."""

    id: str
    host: str
    pid: int
    processors: Any  # a JSON array: text (SQLite) or already a list (PostgreSQL jsonb)
    started_at: float
    last_seen: float
    in_flight: int
    live: Any  # expires_at > now
    stale: Any  # expired more than FORGET_AFTER ago


def _names(raw: Any) -> list[str]:
    """The processor names of a stored row; a row edited by hand into something else reads
    as serving nothing (it is still listed)."""
    try:
        names = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except ValueError:
        return []
    if not isinstance(names, list):
        return []
    return sorted(str(name) for name in names)


def worker_from_row(row: WorkerRow) -> WorkerInfo:
    """A :class:`WorkerInfo` from a stored row."""
    return WorkerInfo(
        id=row.id,
        host=row.host,
        pid=row.pid,
        processors=_names(row.processors),
        started_at=_when(row.started_at),
        last_seen=_when(row.last_seen),
        in_flight=row.in_flight,
    )


def worker_params(info: WorkerInfo, ttl: float) -> dict[str, Any]:
    """The ``register_worker`` query's parameters."""
    return {
        "id": info.id,
        "host": info.host,
        "pid": info.pid,
        "processors": json.dumps(sorted(info.processors)),
        "started_at": _epoch(info.started_at),
        "last_seen": _epoch(info.last_seen),
        "in_flight": info.in_flight,
        "ttl": check_ttl(ttl),
        "now": time.time(),
    }


# -- MemoryStore ------------------------------------------------------------------------------


@attrs.define(slots=True)
class Registered:
    """A worker registered in a :class:`MemoryStore`: its info and its expiry
    (``time.monotonic()``)."""

    info: WorkerInfo
    expires: float


class MemoryWorkerRegistry:
    """The worker registry of :class:`bulkpipe.stores.MemoryStore` (which sets ``_workers``)."""

    _workers: dict[str, Registered]

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Register (or register again) a worker, live for ``ttl`` seconds from now."""
        expires = time.monotonic() + check_ttl(ttl)
        stored = info.model_copy(update={"processors": sorted(info.processors)})
        self._workers[info.id] = Registered(stored, expires)

    async def worker_seen(self, worker_id: str, in_flight: int, ttl: float) -> bool:
        """Refresh a registered worker; False when it is not registered."""
        expires = time.monotonic() + check_ttl(ttl)
        found = self._workers.get(worker_id)
        if found is None:
            return False
        found.info = found.info.model_copy(
            update={"last_seen": datetime.now(UTC), "in_flight": in_flight}
        )
        found.expires = expires
        return True

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration."""
        self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers, oldest first; long-expired registrations are deleted."""
        now = time.monotonic()
        for worker_id in [w for w, r in self._workers.items() if r.expires < now - FORGET_AFTER]:
            del self._workers[worker_id]
        live = [r.info for r in self._workers.values() if r.expires > now]
        return sorted(live, key=lambda info: (info.started_at, info.id))


# -- the SQL stores ---------------------------------------------------------------------------


class SQLWorkerRegistry:
    """The worker registry of the SQL stores, over the dialect's ``register_worker``,
    ``worker_seen``, ``unregister_worker``, ``list_workers`` and ``forget_workers`` queries
    (each one statement, atomic in autocommit)."""

    _q: dict[str, str]

    if TYPE_CHECKING:

        async def _call(
            self,
            what: str,
            fn: Callable[Concatenate[Any, bool, P], R],
            *args: P.args,
            **kwargs: P.kwargs,
        ) -> R: ...

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Register (or register again) a worker, live for ``ttl`` seconds from now."""
        await self._call("registering a worker", self._write_worker, worker_params(info, ttl))

    def _write_worker(self, conn: Any, retry: bool, params: dict[str, Any]) -> None:
        conn.execute(self._q["register_worker"], params)

    async def worker_seen(self, worker_id: str, in_flight: int, ttl: float) -> bool:
        """Refresh a registered worker; False when it is not registered."""
        params = {"id": worker_id, "in_flight": in_flight, "ttl": check_ttl(ttl)}
        return await self._call("refreshing a worker", self._seen, params)

    def _seen(self, conn: Any, retry: bool, params: dict[str, Any]) -> bool:
        params = {**params, "now": time.time()}
        return conn.execute(self._q["worker_seen"], params).fetchone() is not None

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration."""
        await self._call("unregistering a worker", self._unregister, {"id": worker_id})

    def _unregister(self, conn: Any, retry: bool, params: dict[str, Any]) -> None:
        conn.execute(self._q["unregister_worker"], params)

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers, oldest first; long-expired registrations are deleted."""
        return await self._call("listing workers", self._list_workers)

    def _list_workers(self, conn: Any, retry: bool) -> list[WorkerInfo]:
        params = {"now": time.time(), "forget": FORGET_AFTER}
        rows = [WorkerRow._make(row) for row in conn.execute(self._q["list_workers"], params)]
        if any(row.stale for row in rows):
            conn.execute(self._q["forget_workers"], params)
        return [worker_from_row(row) for row in rows if row.live]
