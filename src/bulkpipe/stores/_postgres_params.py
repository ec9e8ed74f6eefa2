"""How PostgresStore's calls become the parameters of its single-statement queries (one
array per column, so that a batch is one round trip), and how their answers come back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._snapshot import MAX_ERRORS
from ..store import BatchReport, Lease
from ._encoding import clean_text


def refused(ids: Sequence[str], stored: set[str]) -> list[str]:
    """The ids of a call that were not stored: known before, or repeated within the call."""
    refused: list[str] = []
    for item_id in ids:
        if item_id in stored:
            stored.discard(item_id)  # a second one in this call is a repeat
        else:
            refused.append(item_id)
    return refused


def lease_params(leases: Sequence[Lease]) -> dict[str, Any]:
    return {
        "job_ids": [lease.job_id for lease in leases],
        "batch_nos": [lease.batch_no for lease in leases],
        "tokens": [lease.token for lease in leases],
    }


def record_params(job_id: str, reports: Sequence[BatchReport], replay: bool) -> dict[str, Any]:
    """The record query's parameters: one array per column, outcomes flattened."""
    o_report: list[int] = []  # each outcome's report, numbered from 1 like WITH ORDINALITY
    rows: list[Any] = []
    for n, report in enumerate(reports, 1):
        o_report.extend([n] * len(report.outcomes))
        rows.extend(report.outcomes)
    columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] or [[]] * 8
    item, ok, result, error, error_type, attempts, started, finished = columns
    if any(e is not None and "\x00" in e for e in error):
        error = [clean_text(e) for e in error]
    return {
        "id": job_id,
        "replay": replay,
        "batch_nos": [r.lease.batch_no for r in reports],
        "tokens": [r.lease.token for r in reports],
        "done": [r.done for r in reports],
        "o_count": len(rows),
        "o_report": o_report,
        "o_item": item,
        "o_ok": ok,
        "o_result": result,
        "o_error": error,
        "o_type": error_type,
        "o_attempts": attempts,
        "o_started": started,
        "o_finished": finished,
        "max_errors": MAX_ERRORS,
    }


def split_reports(reports: Sequence[BatchReport]) -> tuple[list[BatchReport], set[int]]:
    """The reports to send, and the positions of those left out: a report after one that
    closed the same batch in this call would find it done, so it is lost."""
    closed: set[int] = set()
    sent: list[BatchReport] = []
    late: set[int] = set()
    for i, report in enumerate(reports):
        if report.lease.batch_no in closed:
            late.add(i)
            continue
        sent.append(report)
        if report.done:
            closed.add(report.lease.batch_no)
    return sent, late


def lost_batches(
    reports: Sequence[BatchReport],
    late: set[int],
    held: set[tuple[int, int]],
    reopened: Mapping[int, int],
) -> tuple[int, ...]:
    """The batch numbers of the reports the record query refused or reopened."""
    return tuple(
        r.lease.batch_no
        for i, r in enumerate(reports)
        if i in late
        or (r.lease.batch_no, r.lease.token) not in held
        or (r.done and r.lease.batch_no in reopened)
    )
