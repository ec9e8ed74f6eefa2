"""Housekeeping that both SQL stores share: :class:`SQLHousekeeping`.

Deleting a terminal job a chunk of rows at a time, listing the jobs that ended before a time,
named locks with an expiry, and reading a job's failed and never-run items. Every step is one
statement over the dialect's ``queries.sql`` (the ``housekeeping`` block at its end), run in
autocommit: each chunk of a delete is its own short transaction, and other calls of the same
store object (a worker's claims) run between the chunks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from typing import Any, Protocol, TypeVar

from ..errors import InvalidArgument
from ..models import JobStatus
from ..store import EncodedItem, Page
from ._rows import FailedItem
from ._sqlbase import SQLStore, next_cursor

#: What the delete_job_row queries also require of the job they delete.
_TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal)

C = TypeVar("C", bound="_Executes")
H = TypeVar("H", bound="_Closes")


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    @property
    def rowcount(self) -> int: ...


class _Executes(Protocol):
    def execute(self, query: str, params: Mapping[str, Any], /) -> _Cursor: ...


class _Closes(Protocol):
    def close(self) -> None: ...


def check_statuses(statuses: Collection[JobStatus]) -> list[str]:
    """The values of ``statuses``, which must all be terminal (and are at least one)."""
    values: list[str] = []
    for status in statuses:
        if not isinstance(status, JobStatus) or not status.is_terminal:
            raise InvalidArgument(
                f"only terminal statuses (completed, failed, cancelled) can be pruned, "
                f"not {status!r}"
            )
        values.append(status.value)
    if not values:
        raise InvalidArgument("give at least one status to prune (completed, failed, cancelled)")
    return values


def check_chunk_rows(chunk_rows: int) -> int:
    """``chunk_rows`` if it is a positive int."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InvalidArgument(f"chunk_rows must be a positive int, not {chunk_rows!r}")
    return chunk_rows


def check_lock_seconds(seconds: float) -> None:
    """Refuse a lock time that is not a positive number of seconds."""
    if not seconds > 0:
        raise InvalidArgument(f"a lock is held for a positive number of seconds, not {seconds}")


class SQLHousekeeping(SQLStore[C, H]):
    """Delete, ended jobs, named locks and unfinished items for a :class:`SQLStore`."""

    async def delete_job(self, job_id: str, *, chunk_rows: int = 5000) -> bool:
        """Delete a terminal job and its rows, ``chunk_rows`` at a time, the job row last
        (see :meth:`bulkpipe.store.JobStore.delete_job`); False if the job has not ended."""
        chunk = check_chunk_rows(chunk_rows)
        seq = await self._call("deleting a job", self._deletable, job_id)
        if seq is None:
            return False
        # The dialect's delete_*_chunk queries, in the order of its queries.sql.
        steps = [name for name in self._q if name.startswith("delete_") and name.endswith("_chunk")]
        for step in steps:
            while await self._call("deleting a job", self._delete_chunk, step, seq, chunk) >= chunk:
                pass
        await self._call("deleting a job", self._delete_chunk, "delete_job_row", seq, chunk)
        return True

    def _deletable(self, conn: C, retry: bool, job_id: str) -> int | None:
        state = self._job_state(conn, job_id)
        return state.seq if state.status in _TERMINAL else None

    def _delete_chunk(self, conn: C, retry: bool, step: str, job: int, chunk: int) -> int:
        return conn.execute(self._q[step], {"job": job, "chunk": chunk}).rowcount

    async def ended_jobs(
        self, *, before: float, statuses: Collection[JobStatus], limit: int
    ) -> list[str]:
        """Ids of terminal jobs that ended before ``before``, the oldest first."""
        params = {
            "before": float(before),
            "statuses": json.dumps(check_statuses(statuses)),
            "limit": max(int(limit), 0),
        }
        return await self._call("listing ended jobs", self._ended_jobs, params)

    def _ended_jobs(self, conn: C, retry: bool, params: dict[str, Any]) -> list[str]:
        return [row[0] for row in conn.execute(self._q["ended_jobs"], params).fetchall()]

    async def try_lock(self, name: str, holder: str, seconds: float) -> bool:
        """Take or extend the named lock for ``seconds``; False while another holds it."""
        check_lock_seconds(seconds)
        params = {"name": name, "holder": holder, "seconds": float(seconds)}
        return await self._call("taking a lock", self._try_lock, params)

    def _try_lock(self, conn: C, retry: bool, params: dict[str, Any]) -> bool:
        # fetchall: SQLite ends an autocommit statement with RETURNING only once it is read out.
        taken = conn.execute(self._q["try_lock"], {**params, "now": time.time()}).fetchall()
        # A retried PostgreSQL call whose first attempt took the lock finds it ours: taken.
        return bool(taken)

    async def unlock(self, name: str, holder: str) -> None:
        """Give the named lock back, if ``holder`` has it."""
        await self._call("giving a lock back", self._unlock, {"name": name, "holder": holder})

    def _unlock(self, conn: C, retry: bool, params: dict[str, Any]) -> None:
        conn.execute(self._q["unlock"], params)

    async def read_failed_items(
        self,
        job_id: str,
        *,
        cursor: int | None = None,
        limit: int = 1000,
        unfinished: bool = False,
    ) -> Page[EncodedItem]:
        """The stored items whose final outcome is failed; with ``unfinished``, also those
        without an outcome, in item order (a cursor of one mode means nothing to the other)."""
        if not unfinished:
            return await super().read_failed_items(job_id, cursor=cursor, limit=limit)
        rows = await self._call(
            "reading unfinished items", self._unfinished_items, job_id, cursor or 0, limit + 1
        )
        page = rows[:limit]
        last = page[-1].seq if page else None
        return Page(
            rows=[(row.item_id, row.payload) for row in page],
            cursor=next_cursor(last, len(rows) > limit, cursor),
        )

    def _unfinished_items(
        self, conn: C, retry: bool, job_id: str, after: int, limit: int
    ) -> list[FailedItem]:
        job = self._job_state(conn, job_id).seq
        params = {"job": job, "after": after, "limit": limit}
        rows = conn.execute(self._q["unfinished_items"], params).fetchall()
        return [FailedItem._make(row) for row in rows]
