"""Never run, only type-checked (``mypy --strict``): the public API as a typed client uses it.

Each ``assert_type`` pins a return type; each ``type: ignore[code]`` pins a call that must not
type-check (strict mode reports an ignore that is no longer needed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, assert_type

from bulkpipe import (
    BatchProcessor,
    BulkpipeError,
    ItemOutcome,
    ItemProcessor,
    ItemStatus,
    Job,
    JobNotCancellable,
    JobNotFound,
    JobOptions,
    JobStatus,
    JobStore,
    JobSummary,
    NothingToRetry,
    Page,
    PermanentError,
    Pipeline,
    ProcessingError,
    ProcessorLike,
    Source,
    WaitTimeout,
    Worker,
)
from bulkpipe.stores import MemoryStore

# --- processors of every shape -----------------------------------------------------------------


async def score(item: Mapping[str, Any]) -> dict[str, float]:
    """An async function processor."""
    if not item:
        raise PermanentError("empty item")
    return {"score": 1.0}


def score_sync(item: Mapping[str, Any]) -> int:
    """A sync function processor (run in a worker thread)."""
    return len(item)


async def charge(item: Mapping[str, Any], *, attempt: int) -> str:
    """A processor that is told the attempt number."""
    return f"{item['id']}:{attempt}"


class Scorer:
    """An object processor with hooks."""

    async def setup(self) -> None:
        """Load a model."""

    async def process(self, item: Mapping[str, Any]) -> float:
        """Score one item."""
        return 0.5

    async def teardown(self) -> None:
        """Free the model."""


class Vectorised:
    """A batch processor: one result or exception per item."""

    async def process_batch(
        self, items: Sequence[Mapping[str, Any]]
    ) -> Sequence[float | Exception]:
        """Score a batch."""
        return [ValueError("bad") if not item else 1.0 for item in items]


async def project_nodes(params: Mapping[str, Any]) -> AsyncIterator[Mapping[str, Any]]:
    """An item source."""
    for n in range(int(params.get("count", 3))):
        yield {"id": n}


item_processor: ItemProcessor = Scorer()
batch_processor: BatchProcessor = Vectorised()
like: list[ProcessorLike] = [score, score_sync, charge, Scorer(), Vectorised()]
source: Source = project_nodes
store: JobStore = MemoryStore()


# --- the pipeline --------------------------------------------------------------------------


async def use_the_pipeline() -> None:
    """Every Pipeline call, with the types it returns."""
    options = JobOptions(batch_size=100, concurrency=5, item_concurrency=10, max_retries=3)
    assert_type(options.items_in_flight, int)
    assert_type(options.model_copy(update={"batch_size": 10}), JobOptions)

    async with Pipeline(
        store=MemoryStore(),
        processors={"score": score, "vector": Vectorised()},
        sources={"project_nodes": project_nodes},
        max_in_flight=200,
        default_options=options,
    ) as pipeline:
        assert_type(pipeline, Pipeline)
        pipeline.register("sync", score_sync)
        pipeline.register("object", Scorer())
        pipeline.register_source("nodes", project_nodes)

        job = await pipeline.submit("score", [{"id": 1}], options=options, priority=2)
        assert_type(job, Job)
        job = await pipeline.submit("score", ({"id": n} for n in range(3)))
        job = await pipeline.submit("score", project_nodes({}), options={"batch_size": 10})
        job = await pipeline.submit("score", source="project_nodes", params={"project_id": "p1"})

        assert_type(await pipeline.get(job.id), Job)
        assert_type(await pipeline.wait(job.id, timeout=60), Job)
        assert_type(await pipeline.wait(job.id), Job)
        async for snapshot in pipeline.watch(job.id, interval=2.0):
            assert_type(snapshot, Job)
        assert_type(await pipeline.cancel(job.id), Job)
        assert_type(await pipeline.retry_failed(job.id, options=options), Job)
        async for outcome in pipeline.outcomes(job.id, status="failed"):
            assert_type(outcome, ItemOutcome)
        async for outcome in pipeline.outcomes(job.id, ItemStatus.SUCCEEDED, page_size=10):
            assert_type(outcome, ItemOutcome)
        page = await pipeline.outcome_page(job.id, status="failed", limit=100, max_bytes=None)
        assert_type(page, Page[ItemOutcome])
        assert_type(page.cursor, int | None)
        page = await pipeline.outcome_page(job.id, cursor=page.cursor, max_bytes=1 << 20)
        assert_type(page.rows, list[ItemOutcome])
        assert_type(await pipeline.list_jobs(status=JobStatus.FAILED, limit=5), list[Job])
        assert_type(await pipeline.list_jobs(status="completed", offset=5), list[Job])

        await pipeline.submit(1, [{"id": 1}])  # type: ignore[arg-type]
        await pipeline.submit("score", [{"id": 1}], priority="high")  # type: ignore[arg-type]
        await pipeline.get(job)  # type: ignore[arg-type]
        await pipeline.wait(job.id, timeout="soon")  # type: ignore[arg-type]
        pipeline.register(7, score)  # type: ignore[arg-type]
        await pipeline.outcome_page(job.id, cursor="12")  # type: ignore[arg-type]


def read_a_job(job: Job) -> None:
    """The fields of a job snapshot."""
    assert_type(job.id, str)
    assert_type(job.type, str)
    assert_type(job.status, JobStatus)
    assert_type(job.status.is_terminal, bool)
    assert_type(job.progress, float)
    assert_type(job.total_items, int)
    assert_type(job.processed_items, int)
    assert_type(job.succeeded_items, int)
    assert_type(job.failed_items, int)
    assert_type(job.rejected_items, int)
    assert_type(job.errors, list[ProcessingError])
    assert_type(job.error_count, int)
    assert_type(job.result, JobSummary | None)
    assert_type(job.options, JobOptions)
    assert_type(job.priority, int)
    assert_type(job.retry_of, str | None)
    if job.result is not None:
        assert_type(job.result.success_rate, float)
        assert_type(job.result.items_per_second, float)
    for error in job.errors:
        assert_type(error.item_id, str | None)
        assert_type(error.error_type, str)
        assert_type(error.retry_count, int)


def read_an_outcome(outcome: ItemOutcome) -> None:
    """The fields of an item outcome."""
    assert_type(outcome.item_id, str)
    assert_type(outcome.status, ItemStatus)
    assert_type(outcome.result, Any)
    assert_type(outcome.error, str | None)
    assert_type(outcome.error_type, str | None)
    assert_type(outcome.attempts, int)


async def handle_errors(pipeline: Pipeline, job_id: str) -> None:
    """Errors carry their facts as typed attributes."""
    try:
        await pipeline.cancel(job_id)
    except JobNotFound as exc:
        assert_type(exc.job_id, str)
    except JobNotCancellable as exc:
        assert_type(exc.status, str)
    except BulkpipeError as exc:
        assert_type(exc, BulkpipeError)
    try:
        await pipeline.wait(job_id, timeout=1)
    except WaitTimeout as exc:
        assert_type(exc.timeout, float)
    try:
        await pipeline.retry_failed(job_id)
    except NothingToRetry as exc:
        assert_type(exc.job_id, str)


async def run_a_worker() -> None:
    """A standalone worker process's main."""
    worker = Worker(MemoryStore(), processors={"score": score}, max_in_flight=50)
    assert_type(worker, Worker)
    await worker.run()
    worker.stop()
