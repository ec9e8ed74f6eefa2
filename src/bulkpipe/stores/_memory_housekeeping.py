"""Housekeeping of :class:`bulkpipe.stores.MemoryStore`: :class:`MemoryHousekeeping`.

Deleting jobs, listing the jobs that ended before a time, named locks, and reading a job's
failed and never-run items. It reads the store's job records through the small protocols
below, so it does not import the store module (which imports it).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from itertools import islice
from typing import Generic, Protocol, TypeVar

from ..errors import JobNotFound
from ..models import JobStatus
from ..store import EncodedItem, Page
from ._sqlhousekeeping import check_chunk_rows, check_lock_seconds, check_statuses


class _BatchRecord(Protocol):
    @property
    def items(self) -> list[EncodedItem] | None: ...  # None once the batch is done
    @property
    def finished(self) -> set[str]: ...  # ids with an outcome, while the batch is open


class _JobRecord(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def status(self) -> JobStatus: ...
    @property
    def completed_at(self) -> float | None: ...
    @property
    def batches(self) -> Sequence[_BatchRecord]: ...
    @property
    def failed_items(self) -> Sequence[EncodedItem]: ...


J = TypeVar("J", bound=_JobRecord)


class MemoryHousekeeping(Generic[J]):
    """Delete, ended jobs, named locks and unfinished items, over ``_jobs`` and ``_locks``."""

    _jobs: dict[str, J]
    _locks: dict[str, tuple[str, float]]  # name -> (holder, monotonic expiry)
    _keys: dict[tuple[str | None, str], str]  # (owner, idempotency key) -> job id

    def _job(self, job_id: str) -> J:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    async def delete_job(self, job_id: str, *, chunk_rows: int = 5000) -> bool:
        """Forget a terminal job (at once: nothing here blocks a claim); False if it has not
        ended."""
        check_chunk_rows(chunk_rows)
        if not self._job(job_id).status.is_terminal:
            return False
        del self._jobs[job_id]
        # As in the SQL stores, the job's idempotency key goes with it and may be used again.
        for key in [key for key, owner_job in self._keys.items() if owner_job == job_id]:
            del self._keys[key]
        return True

    async def ended_jobs(
        self, *, before: float, statuses: Collection[JobStatus], limit: int
    ) -> list[str]:
        """Ids of terminal jobs that ended before ``before``, the oldest first."""
        wanted = set(check_statuses(statuses))
        ended = [
            job
            for job in self._jobs.values()
            if job.status.value in wanted
            and job.completed_at is not None
            and job.completed_at < before
        ]
        ended.sort(key=lambda job: (job.completed_at, job.seq))
        return [job.id for job in ended[: max(limit, 0)]]

    async def try_lock(self, name: str, holder: str, seconds: float) -> bool:
        """Take or extend the named lock for ``seconds``; False while another holds it."""
        check_lock_seconds(seconds)
        now = time.monotonic()
        held = self._locks.get(name)
        if held is not None and held[0] != holder and held[1] > now:
            return False
        self._locks[name] = (holder, now + seconds)
        return True

    async def unlock(self, name: str, holder: str) -> None:
        """Give the named lock back, if ``holder`` has it."""
        held = self._locks.get(name)
        if held is not None and held[0] == holder:
            del self._locks[name]

    async def read_failed_items(
        self,
        job_id: str,
        *,
        cursor: int | None = None,
        limit: int = 1000,
        unfinished: bool = False,
    ) -> Page[EncodedItem]:
        """The failed items in recording order; with ``unfinished``, then the items without
        an outcome, in batch order. The cursor counts items of that sequence."""
        job = self._job(job_id)
        start = 0 if cursor is None else cursor
        limit = max(limit, 0)
        failed = job.failed_items
        rows = list(failed[start : start + limit])
        end = start + len(rows)
        if not unfinished:
            return Page(rows=rows, cursor=end if end < len(failed) else None)
        room = limit - len(rows)
        opened = islice(_open_items(job.batches, max(start - len(failed), 0)), room + 1)
        taken = list(opened)
        rows.extend(taken[:room])
        end += min(len(taken), room)
        return Page(rows=rows, cursor=end if len(taken) > room else None)


def _open_items(batches: Sequence[_BatchRecord], skip: int) -> Iterator[EncodedItem]:
    """The items without an outcome, in batch order, after the first ``skip`` of them."""
    for batch in batches:
        if batch.items is None:
            continue  # done: every item has an outcome
        finished = batch.finished
        count = len(batch.items) - len(finished)
        if skip >= count:
            skip -= count
            continue
        yield from [it for it in batch.items if it[0] not in finished][skip:]
        skip = 0
