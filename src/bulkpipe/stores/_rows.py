"""Named row types of the SQL stores' queries, one per query shape, read by name.

A query's columns are listed in its ``.sql`` file in the order of the fields here; a row is
made with ``Shape._make(row)`` once per row of a per-call query (a job, a batch, the counts),
never once per item on the claim and record paths. Shapes that both dialects share come
first; the rest belong to one dialect's algorithms.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol


class JobState(NamedTuple):
    """``job_state``: what a write needs to know about a job before it writes."""

    seq: int
    status: str
    sealed: bool
    next_batch: int
    last_request: str | None  # PostgreSQL's last submit-side write; always NULL in SQLite


class HasCounts(Protocol):
    """A row that carries a job's counts (``Counts``, or a write's longer answer)."""

    @property
    def status(self) -> str: ...
    @property
    def sealed(self) -> bool: ...
    @property
    def total(self) -> int: ...
    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def open_batches(self) -> int: ...
    @property
    def abandoned(self) -> bool: ...


class Counts(NamedTuple):
    """``progress`` and the writes that return a job's counts (as :class:`Progress` holds)."""

    status: str
    sealed: bool
    total: int
    succeeded: int
    failed: int
    open_batches: int
    abandoned: bool


class JobRow(NamedTuple):
    """``get_job`` / ``list_jobs``: every column of a job snapshot."""

    seq: int
    id: str
    type: str
    status: str
    options: str  # JSON text
    priority: int
    retry_of: str | None
    owner: str | None
    source: str | None
    params: Any  # JSON text (SQLite) or decoded (PostgreSQL jsonb)
    sealed: bool
    total: int
    succeeded: int
    failed: int
    rejected: int
    error_count: int
    created_at: float
    started_at: float | None
    updated_at: float | None
    completed_at: float | None
    errors: Any  # PostgreSQL: the kept errors as a JSON array; SQLite: NULL (read apart)
    idempotency_key: str | None


class OutcomeColumns(Protocol):
    """What an outcome page's row holds, whatever else a dialect's query adds to it."""

    @property
    def seq(self) -> int: ...
    @property
    def item_id(self) -> str: ...
    @property
    def ok(self) -> Any: ...
    @property
    def result(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def finished_at(self) -> float: ...


class OutcomeRecord(NamedTuple):
    """A row of an outcome page: its cursor position, then ``OutcomeRow``'s columns."""

    seq: int
    item_id: str
    ok: Any
    result: str | None
    error: str | None
    error_type: str | None
    attempts: int
    started_at: float
    finished_at: float


class FailedItem(NamedTuple):
    """``failed_items``: a failed item's cursor position and the item as stored."""

    seq: int
    item_id: str
    payload: str


# -- SQLite's own ----------------------------------------------------------------------------


class JobKey(NamedTuple):
    """``job_status``: a job's key inside the database and its status."""

    seq: int
    status: str


class SpecRow(NamedTuple):
    """``job_spec`` / ``job_spec_by_id``: what a claim hands the worker about the job."""

    seq: int
    id: str
    type: str
    status: str
    options: str
    priority: int


class LeasedRow(NamedTuple):
    """``lease_batch``: the batch just leased."""

    claims: int
    recorded: int
    first_item: int
    last_item: int


class BatchLease(NamedTuple):
    """``batch_lease``: a batch's lease, as a report meets it."""

    state: str
    token: int | None
    size: int
    recorded: int


# -- PostgreSQL's own ------------------------------------------------------------------------


class RecordedRow(NamedTuple):
    """``record``: the job's counts after the write, the leases that were still held, and
    the done batches put back to pending because outcomes were missing (with how many)."""

    status: str
    sealed: bool
    total: int
    succeeded: int
    failed: int
    open_batches: int
    held: list[list[int]]  # [batch_no, token]
    reopened: list[list[int]]  # [batch_no, short]
    abandoned: bool


class OutcomePageRow(NamedTuple):
    """``outcomes``: an outcome page's row, and how many rows the page could have held."""

    seq: int
    item_id: str
    ok: bool
    result: str | None
    error: str | None
    error_type: str | None
    attempts: int
    started_at: float
    finished_at: float
    fetched: int
