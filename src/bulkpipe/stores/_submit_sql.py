"""Submit leases and idempotency keys in the SQL stores: steps the same in both dialects.

Each is one statement (atomic without a transaction of its own: autocommit on PostgreSQL, an
implicit transaction in SQLite) over that dialect's ``queries.sql``; the queries take the same
parameters, SQLite reading the time from ``now`` and PostgreSQL from its own clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from ..errors import JobNotFound
from ..store import Progress
from ._encoding import progress_of
from ._rows import Counts


class _Executes(Protocol):
    def execute(self, query: str, params: Mapping[str, Any], /) -> Any: ...


def find_idempotent(q: Mapping[str, str], conn: _Executes, row: Mapping[str, Any]) -> str | None:
    """The id of the job of ``row["owner"]`` with ``row["idempotency_key"]``, if any."""
    found = conn.execute(
        q["job_by_idempotency_key"],
        {"owner": row["owner"], "idempotency_key": row["idempotency_key"]},
    ).fetchone()
    return None if found is None else str(found[0])


def renew_submit(
    conn: _Executes, retry: bool, q: Mapping[str, str], job_id: str, lease: float
) -> Progress:
    """Extend the job's submit lease (if it is unsealed, live and has one); its progress."""
    conn.execute(q["renew_submit"], {"id": job_id, "lease": lease, "now": time.time()})
    counts = conn.execute(q["progress"], {"id": job_id}).fetchone()
    if counts is None:
        raise JobNotFound(job_id)
    return progress_of(Counts._make(counts))


def abandon_expired(
    conn: _Executes, retry: bool, q: Mapping[str, str], limit: int
) -> list[tuple[str, Progress]]:
    """Seal up to ``limit`` jobs whose submit lease expired, as abandoned; return them."""
    rows = conn.execute(
        q["abandon_expired_submits"], {"limit": limit, "now": time.time()}
    ).fetchall()
    return [(str(row[0]), progress_of(Counts._make(row[1:]))) for row in rows]
