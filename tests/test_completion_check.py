"""A job completes only when the store can prove every item has an outcome (issue 13).

The store-side refusal is in the contract suite (``StoreContract``); this checks what the one
caller of ``finish_job(COMPLETED)``, :func:`bulkpipe.lifecycle.settle`, does when refused.
"""

from __future__ import annotations

import logging

import pytest

from bulkpipe import JobStatus
from bulkpipe.lifecycle import settle
from bulkpipe.store import Progress
from bulkpipe.stores import MemoryStore
from bulkpipe.testing import add_job, claim, encoded, ok_row, report


@pytest.mark.anyio
async def test_settle_logs_once_and_leaves_the_job_when_the_store_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    await store.open()
    job = await add_job(store, encoded(3), seal=True)
    claimed = await claim(store)
    await store.record(job.id, [report(claimed, [ok_row("item-0")], done=False)])
    # A progress that looks final (as it would after outcomes were lost), though it is not.
    looks_done = Progress(
        status=JobStatus.PROCESSING, sealed=True, total=3, succeeded=3, failed=0, open_batches=0
    )
    with caplog.at_level(logging.WARNING, logger="bulkpipe.lifecycle"):
        assert await settle(store, job.id, looks_done) is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "refused to complete" in messages[0]
    assert "1 of its 3 items have an outcome" in messages[0]
    assert (await store.get_job(job.id)).status is JobStatus.PROCESSING
    await store.record(job.id, [report(claimed, [ok_row("item-1"), ok_row("item-2")])])
    done = await settle(store, job.id, await store.record(job.id, []))
    assert done is not None
    assert done.status is JobStatus.COMPLETED
