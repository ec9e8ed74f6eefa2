"""The store contract: recording outcomes, finishing jobs and reading outcomes back."""

from __future__ import annotations

from typing import Any

import pytest

from ..._snapshot import MAX_ERRORS
from ...models import ItemStatus, JobStatus
from ...store import JobStore, Progress
from ..helpers import (
    add_job,
    claim,
    decoded,
    encoded,
    fail_row,
    job_error,
    ok_row,
    read_all_outcomes,
    read_pages,
    report,
)
from ._base import ContractBase, epoch, near


class OutcomesContract(ContractBase):
    """Recording outcomes, finishing jobs and reading outcomes back."""

    # -- recording ------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_record_stores_outcomes_and_counts(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3), encoded(2, 3), seal=True)
        claimed = await claim(store)
        rows = [ok_row("item-0"), fail_row("item-1", "bad", "KeyError", attempts=3)]
        rows.append(ok_row("item-2"))
        progress = await store.record(job.id, [report(claimed, rows)])
        assert progress == Progress(
            status=JobStatus.PROCESSING,
            sealed=True,
            total=5,
            succeeded=2,
            failed=1,
            open_batches=1,
        )
        got = await store.get_job(job.id)
        assert (got.succeeded_items, got.failed_items, got.processed_items) == (2, 1, 3)
        assert got.progress == pytest.approx(60.0)
        assert got.error_count == 1
        [error] = got.errors
        assert (error.item_id, error.error, error.error_type) == ("item-1", "bad", "KeyError")
        assert error.retry_count == 2
        assert got.updated_at is not None

    @pytest.mark.anyio
    async def test_record_with_a_stale_token_is_lost(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(1, 2))
        stale = await claim(store, lease_seconds=0)
        current = await claim(store, job.id, lease_seconds=0)
        assert current.lease.batch_no == 1
        fresh = await claim(store, job.id)
        assert fresh.lease.batch_no == 0
        progress = await store.record(job.id, [report(stale), report(current, done=False)])
        assert progress.lost == (0,)
        assert (progress.succeeded, progress.open_batches) == (1, 2)
        assert [o.item_id for o in await read_all_outcomes(store, job.id)] == ["item-2"]
        progress = await store.record(job.id, [report(fresh)])
        assert (progress.lost, progress.succeeded, progress.open_batches) == ((), 3, 1)

    @pytest.mark.anyio
    async def test_a_stale_and_a_current_report_of_one_batch_in_one_call(
        self, store: JobStore
    ) -> None:
        # One worker may hold a batch twice: its lease expired and it claimed it again.
        job = await add_job(store, encoded(2))
        stale = await claim(store, lease_seconds=0)
        current = await claim(store, job.id)
        assert current.lease.batch_no == stale.lease.batch_no
        progress = await store.record(
            job.id, [report(current, [], done=False), report(stale, done=False)]
        )
        assert progress.lost == (0,)
        assert (progress.succeeded, progress.failed) == (0, 0)  # the stale rows were refused
        assert await read_all_outcomes(store, job.id) == []

    @pytest.mark.anyio
    async def test_record_on_a_released_batch_is_lost(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        claimed = await claim(store)
        await store.release([claimed.lease])
        progress = await store.record(job.id, [report(claimed)])
        assert (progress.lost, progress.succeeded, progress.open_batches) == ((0,), 0, 1)

    @pytest.mark.anyio
    async def test_record_on_a_done_batch_is_lost(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed)])
        progress = await store.record(job.id, [report(claimed, [fail_row("item-0")])])
        assert (progress.lost, progress.succeeded, progress.failed) == ((0,), 2, 0)

    @pytest.mark.anyio
    async def test_first_outcome_wins(self, store: JobStore) -> None:
        job = await add_job(store, encoded(3))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [fail_row("item-0")], done=False)])
        rows = [ok_row("item-0"), ok_row("item-1", 1), fail_row("item-1"), ok_row("item-2")]
        progress = await store.record(job.id, [report(claimed, rows)])
        assert (progress.succeeded, progress.failed, progress.open_batches) == (2, 1, 0)
        outcomes = await read_all_outcomes(store, job.id)
        assert [(o.item_id, o.status) for o in outcomes] == [
            ("item-0", ItemStatus.FAILED),
            ("item-1", ItemStatus.SUCCEEDED),
            ("item-2", ItemStatus.SUCCEEDED),
        ]
        assert outcomes[1].result == 1
        got = await store.get_job(job.id)
        assert (got.error_count, len(got.errors)) == (1, 1)

    @pytest.mark.anyio
    async def test_done_closes_the_batch(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(2, 2))
        one, two = await claim(store), await claim(store)
        assert (await store.record(job.id, [report(one)])).open_batches == 1
        progress = await store.record(job.id, [report(two, [ok_row("item-2")], done=False)])
        assert progress.open_batches == 1
        progress = await store.record(job.id, [report(two, [ok_row("item-3")])])
        assert (progress.open_batches, progress.succeeded) == (0, 4)
        assert await store.claim_batch(worker_id="w1", lease_seconds=0) is None

    @pytest.mark.anyio
    async def test_record_on_a_terminal_job_writes_nothing(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        claimed = await claim(store)
        before, _ = await store.finish_job(job.id, JobStatus.CANCELLED)
        progress = await store.record(job.id, [report(claimed)])
        assert progress.status is JobStatus.CANCELLED
        assert (progress.succeeded, progress.failed, progress.open_batches) == (0, 0, 1)
        assert await read_all_outcomes(store, job.id) == []
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_record_nothing_reads_progress(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2), encoded(1, 2))
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [fail_row("item-0")], done=False)])
        before = await store.get_job(job.id)
        progress = await store.progress(job.id)
        assert progress == Progress(
            status=JobStatus.PROCESSING,
            sealed=False,
            total=3,
            succeeded=0,
            failed=1,
            open_batches=2,
        )
        assert await store.get_job(job.id) == before

    @pytest.mark.anyio
    async def test_failed_outcomes_fill_the_capped_error_list(self, store: JobStore) -> None:
        n = MAX_ERRORS + 3
        job = await add_job(store, encoded(n))
        claimed = await claim(store)
        rows = [fail_row(item_id, f"error {i}") for i, (item_id, _) in enumerate(claimed.items)]
        await store.add_errors(job.id, [job_error()], rejected=1)
        await store.record(job.id, [report(claimed, rows)])
        got = await store.get_job(job.id)
        assert got.error_count == n + 1
        assert len(got.errors) == MAX_ERRORS
        assert got.errors[0].item_id is None
        assert got.errors[1].error == "error 0"

    # -- finishing ------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_finish_job_happens_exactly_once(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1), seal=True)
        claimed = await claim(store)
        await store.record(job.id, [report(claimed)])
        done, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        assert done.status is JobStatus.COMPLETED
        assert done.completed_at is not None
        assert done.started_at is not None
        assert done.completed_at >= done.started_at
        again, changed = await store.finish_job(job.id, JobStatus.CANCELLED, job_error())
        assert not changed
        assert again == done
        assert await store.get_job(job.id) == done

    @pytest.mark.anyio
    async def test_finish_job_completed_is_refused_until_every_outcome_is_in(
        self, store: JobStore
    ) -> None:
        job = await add_job(store, encoded(2), encoded(1, 2))

        async def refused() -> None:
            before = await store.get_job(job.id)
            got, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
            assert not changed
            assert got == before
            assert await store.get_job(job.id) == before

        await refused()  # not sealed, no outcome
        first = await claim(store)
        await store.record(job.id, [report(first)])
        await refused()  # not sealed, though every batch so far is done
        await store.seal_job(job.id)
        second = await claim(store)
        await refused()  # a batch is leased
        await store.record(job.id, [report(second, [], done=False)])
        await refused()  # ... and holds no outcome
        await store.record(job.id, [report(second)])
        done, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        assert (done.status, done.succeeded_items, done.total_items) == (JobStatus.COMPLETED, 3, 3)

    @pytest.mark.anyio
    async def test_finish_job_completes_a_sealed_empty_job(self, store: JobStore) -> None:
        job = await add_job(store, seal=True)
        done, changed = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert changed
        assert done.status is JobStatus.COMPLETED

    @pytest.mark.anyio
    async def test_finish_job_may_fail_or_cancel_an_incomplete_job(self, store: JobStore) -> None:
        failing = await add_job(store, encoded(2), seal=True)
        cancelled = await add_job(store, encoded(2))
        for job, status in ((failing, JobStatus.FAILED), (cancelled, JobStatus.CANCELLED)):
            done, changed = await store.finish_job(job.id, status)
            assert changed
            assert done.status is status

    @pytest.mark.anyio
    async def test_finish_job_sets_started_at_when_never_claimed(self, store: JobStore) -> None:
        job = await add_job(store, encoded(1))
        done, changed = await store.finish_job(job.id, JobStatus.CANCELLED)
        assert changed
        assert done.started_at is not None
        assert done.completed_at is not None

    @pytest.mark.anyio
    async def test_finish_job_appends_its_error(self, store: JobStore) -> None:
        job = await add_job(store)
        await store.add_errors(job.id, [job_error("x")], rejected=1)
        error = job_error(None, "the source broke")
        done, _ = await store.finish_job(job.id, JobStatus.FAILED, error)
        assert done.status is JobStatus.FAILED
        assert [e.error for e in done.errors] == ["rejected", "the source broke"]
        assert done.error_count == 2

    @pytest.mark.anyio
    async def test_finish_job_needs_a_terminal_status(self, store: JobStore) -> None:
        job = await add_job(store)
        with pytest.raises(ValueError, match="terminal"):
            await store.finish_job(job.id, JobStatus.PROCESSING)
        assert (await store.get_job(job.id)).status is JobStatus.PENDING

    @pytest.mark.anyio
    async def test_terminal_snapshot_has_a_summary(self, store: JobStore) -> None:
        job = await add_job(store, encoded(4), seal=True)
        await store.add_errors(job.id, [job_error()], rejected=1)
        claimed = await claim(store)
        rows = [*map(ok_row, ["item-0", "item-1", "item-2"]), fail_row("item-3")]
        await store.record(job.id, [report(claimed, rows)])
        running = await store.get_job(job.id)
        assert running.result is None
        done, _ = await store.finish_job(job.id, JobStatus.COMPLETED)
        assert done.progress == 100.0
        assert done.result is not None
        summary = done.result
        assert (summary.total, summary.succeeded, summary.failed, summary.rejected) == (4, 3, 1, 1)
        assert summary.success_rate == pytest.approx(75.0)
        assert summary.duration >= 0

    @pytest.mark.anyio
    async def test_progress_of_a_job_stopped_early(self, store: JobStore) -> None:
        job = await add_job(store, encoded(4), seal=True)
        claimed = await claim(store)
        await store.record(job.id, [report(claimed, [ok_row("item-0")], done=False)])
        assert (await store.get_job(job.id)).progress == pytest.approx(25.0)
        done, _ = await store.finish_job(job.id, JobStatus.FAILED)
        assert done.progress == pytest.approx(25.0)
        assert done.result is not None
        assert (done.result.total, done.result.succeeded, done.result.failed) == (4, 1, 0)
        assert done.result.success_rate == pytest.approx(100.0)

    # -- reading --------------------------------------------------------------------------------

    async def _mixed_outcomes(self, store: JobStore) -> tuple[str, list[tuple[str, bool]]]:
        """A job with 7 outcomes recorded in two reports; returns (job id, (id, ok) in order)."""
        job = await add_job(store, encoded(4), encoded(3, 4))
        first, second = await claim(store), await claim(store)
        order = [("item-5", False), ("item-1", True), ("item-0", False), ("item-6", True)]
        order += [("item-2", True), ("item-4", True), ("item-3", False)]
        for lease, part in ((second, order[:1]), (first, order[1:3]), (second, order[3:4])):
            rows = [ok_row(i, {"i": i}) if ok else fail_row(i) for i, ok in part]
            await store.record(job.id, [report(lease, rows, done=False)])
        rest = [ok_row(i, {"i": i}) if ok else fail_row(i) for i, ok in order[4:]]
        await store.record(
            job.id,
            [
                report(first, rest[:1], done=False),
                report(second, rest[1:2]),
                report(first, rest[2:]),
            ],
        )
        return job.id, order

    @pytest.mark.anyio
    @pytest.mark.parametrize("failed", [None, True, False])
    @pytest.mark.parametrize("limit", [1, 2, 3, 1000])
    async def test_read_outcomes_pages_in_recording_order(
        self, store: JobStore, failed: bool | None, limit: int
    ) -> None:
        job_id, order = await self._mixed_outcomes(store)
        expected = [(i, ok) for i, ok in order if failed is None or ok is not failed]
        rows = await read_all_outcomes(store, job_id, failed=failed, limit=limit)
        assert [(o.item_id, o.status is ItemStatus.SUCCEEDED) for o in rows] == expected

    @pytest.mark.anyio
    async def test_read_outcomes_of_a_job_without_outcomes(self, store: JobStore) -> None:
        job = await add_job(store, encoded(2))
        for failed in (None, True, False):
            page = await store.read_outcomes(job.id, failed=failed)
            assert (page.rows, page.cursor) == ([], None)
        page2 = await store.read_failed_items(job.id)
        assert (page2.rows, page2.cursor) == ([], None)

    @pytest.mark.anyio
    async def test_outcomes_round_trip(self, store: JobStore) -> None:
        results: list[Any] = [
            {"nested": {"a": [1, 2.5, "é", None, True]}, "n": -3},
            "text",
            0,
            [],
            None,
        ]
        job = await add_job(store, encoded(len(results) + 1))
        claimed = await claim(store)
        rows = [ok_row(f"item-{i}", r, attempts=i + 1) for i, r in enumerate(results)]
        failure = fail_row(f"item-{len(results)}", "it broke: ünïcode", "RuntimeError", attempts=4)
        await store.record(job.id, [report(claimed, [*rows, failure])])
        outcomes = await read_all_outcomes(store, job.id)
        assert [o.result for o in outcomes] == [*results, None]
        for outcome, row in zip(outcomes, [*rows, failure], strict=True):
            assert outcome.item_id == row.item_id
            assert outcome.attempts == row.attempts
            assert near(outcome.started_at, epoch(row.started_at))
            assert near(outcome.finished_at, epoch(row.finished_at))
        assert all(o.status is ItemStatus.SUCCEEDED for o in outcomes[:-1])
        assert all(o.error is None and o.error_type is None for o in outcomes[:-1])
        last = outcomes[-1]
        assert (last.status, last.error, last.error_type) == (
            ItemStatus.FAILED,
            "it broke: ünïcode",
            "RuntimeError",
        )

    @pytest.mark.anyio
    @pytest.mark.parametrize("limit", [1, 2, 1000])
    async def test_read_failed_items_pages(self, store: JobStore, limit: int) -> None:
        job_id, order = await self._mixed_outcomes(store)
        payloads = dict(encoded(7))
        expected = [(i, payloads[i]) for i, ok in order if not ok]
        rows = await read_pages(
            lambda cursor: store.read_failed_items(job_id, cursor=cursor, limit=limit)
        )
        assert decoded(rows) == decoded(expected)
