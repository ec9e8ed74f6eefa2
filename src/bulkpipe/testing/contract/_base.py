"""What every part of the contract shares: the ``store`` fixture, timing, small checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest

from ...models import JobStatus
from ...store import JobStore
from ..helpers import GHOST_LEASE, UNKNOWN_JOB, encoded, job_error, ok_row, report


def near(a: datetime | None, b: datetime, slack: float = 0.001) -> bool:
    """Whether ``a`` is set and within ``slack`` seconds of ``b``."""
    return a is not None and abs((a - b).total_seconds()) <= slack


def epoch(ts: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


_T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    """A fixed instant plus ``seconds``: creation times that order jobs for certain."""
    return _T0 + timedelta(seconds=seconds)


#: One call of each store method that takes a job id, on a job that does not exist.
JOB_ID_CALLS: dict[str, Callable[[JobStore], Awaitable[object]]] = {
    "add_batch": lambda s: s.add_batch(UNKNOWN_JOB, encoded(1)),
    "add_batches": lambda s: s.add_batches(UNKNOWN_JOB, [encoded(1), encoded(1, 1)]),
    "add_errors": lambda s: s.add_errors(UNKNOWN_JOB, [job_error()], 1),
    "seal_job": lambda s: s.seal_job(UNKNOWN_JOB),
    "record": lambda s: s.record(UNKNOWN_JOB, [report(GHOST_LEASE, [ok_row("item-0")])]),
    "record_empty": lambda s: s.record(UNKNOWN_JOB, []),
    "finish_job": lambda s: s.finish_job(UNKNOWN_JOB, JobStatus.CANCELLED),
    "get_job": lambda s: s.get_job(UNKNOWN_JOB),
    "read_outcomes": lambda s: s.read_outcomes(UNKNOWN_JOB),
    "read_failed_items": lambda s: s.read_failed_items(UNKNOWN_JOB),
}


class ContractBase:
    """The ``store`` fixture and the timing settings every part of the contract uses.

    See :class:`bulkpipe.testing.StoreContract`, which joins the parts.
    """

    short_lease: ClassVar[float] = 0.05
    lease_wait: ClassVar[float] = 0.1

    def make_store(self) -> JobStore:
        """A new, unopened, empty store."""
        raise NotImplementedError(
            f"{type(self).__name__}: override make_store() or the store fixture"
        )

    @pytest.fixture
    async def store(self) -> AsyncIterator[JobStore]:
        """A fresh store, opened for the test and closed after it."""
        store = self.make_store()
        await store.open()
        try:
            yield store
        finally:
            await store.close()
