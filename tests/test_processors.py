"""Processor plug-ins: every shape bulkpipe accepts, their hooks, and finding them by name."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import anyio
import pytest

from bulkpipe import (
    BatchProcessor,
    ItemProcessor,
    ItemStatus,
    JobStatus,
    PermanentError,
    Pipeline,
    UnknownProcessor,
    UnknownSource,
)
from bulkpipe.demo.processors import FullAnalysis, OpportunityScorer, RevenueCalculator

from .helpers import PATIENCE, QUICK, make_items, outcome_map, quick

pytestmark = pytest.mark.anyio


async def run_job(
    processor: object, count: int = 6, **options: Any
) -> tuple[JobStatus, dict[str, Any]]:
    """Run ``processor`` over ``count`` items; the job's status and the outcomes by id."""
    async with Pipeline(processors={"p": processor}, default_options=QUICK) as p:
        job = await p.submit("p", make_items(count), options=quick(**options))
        job = await p.wait(job.id, timeout=PATIENCE)
        return job.status, await outcome_map(p, job.id)


def results(outcomes: Mapping[str, Any]) -> dict[str, Any]:
    """Item id to result, for the succeeded outcomes."""
    return {i: o.result for i, o in outcomes.items() if o.status is ItemStatus.SUCCEEDED}


# --- the four shapes -------------------------------------------------------------------------


async def test_an_async_function() -> None:
    async def square(item: Mapping[str, Any]) -> int:
        await anyio.lowlevel.checkpoint()
        return int(item["n"]) ** 2

    status, outcomes = await run_job(square)
    assert status is JobStatus.COMPLETED
    assert results(outcomes) == {f"item-{n}": n * n for n in range(6)}


async def test_a_sync_function_runs_in_a_worker_thread() -> None:
    threads: list[threading.Thread] = []

    def square(item: Mapping[str, Any]) -> int:
        threads.append(threading.current_thread())
        return int(item["n"]) ** 2

    status, outcomes = await run_job(square)
    assert status is JobStatus.COMPLETED
    assert results(outcomes) == {f"item-{n}": n * n for n in range(6)}
    assert len(threads) == 6
    assert all(thread is not threading.main_thread() for thread in threads)


async def test_a_sync_function_that_raises_is_retried() -> None:
    calls: dict[str, int] = {}

    def flaky(item: Mapping[str, Any]) -> str:
        calls[item["id"]] = calls.get(item["id"], 0) + 1
        if calls[item["id"]] < 3:
            raise OSError("try again")
        return "ok"

    status, outcomes = await run_job(flaky, count=3, max_retries=3)
    assert status is JobStatus.COMPLETED
    assert {i: o.attempts for i, o in outcomes.items()} == {f"item-{n}": 3 for n in range(3)}


async def test_an_object_with_async_process() -> None:
    class Scorer:
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def process(self, item: Mapping[str, Any]) -> dict[str, Any]:
            self.seen.append(item["id"])
            return {"score": item["n"] + 0.5}

    scorer = Scorer()
    assert isinstance(scorer, ItemProcessor)
    status, outcomes = await run_job(scorer)
    assert status is JobStatus.COMPLETED
    assert sorted(scorer.seen) == sorted(f"item-{n}" for n in range(6))
    assert results(outcomes) == {f"item-{n}": {"score": n + 0.5} for n in range(6)}


class Vectorised:
    """A batch processor that squares ``n``; ``broken`` ids get an exception instance."""

    def __init__(self, broken: Mapping[str, BaseException] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.broken = dict(broken or {})

    async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
        self.calls.append([item["id"] for item in items])
        await anyio.lowlevel.checkpoint()
        return [self.broken.get(item["id"], int(item["n"]) ** 2) for item in items]


async def test_process_batch_is_called_once_per_batch() -> None:
    scorer = Vectorised()
    assert isinstance(scorer, BatchProcessor)
    status, outcomes = await run_job(scorer, count=10, batch_size=4)
    assert status is JobStatus.COMPLETED
    assert results(outcomes) == {f"item-{n}": n * n for n in range(10)}
    assert sorted(len(call) for call in scorer.calls) == [2, 4, 4]
    assert sorted(i for call in scorer.calls for i in call) == sorted(outcomes)


async def test_process_batch_calls_carry_at_most_item_concurrency_items() -> None:
    # item_concurrency bounds the items in flight, for a batch processor too.
    scorer = Vectorised()
    status, outcomes = await run_job(scorer, count=10, batch_size=5, item_concurrency=2)
    assert status is JobStatus.COMPLETED
    assert results(outcomes) == {f"item-{n}": n * n for n in range(10)}
    assert sorted(len(call) for call in scorer.calls) == [1, 1, 2, 2, 2, 2]


async def test_a_batch_timeout_fails_the_chunks_of_process_batch_not_yet_called() -> None:
    class FirstChunkHangs:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
            self.calls.append([item["id"] for item in items])
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    scorer = FirstChunkHangs()
    status, outcomes = await run_job(scorer, count=5, batch_size=5, item_concurrency=2, timeout=0.2)
    assert status is JobStatus.COMPLETED
    assert scorer.calls == [["item-0", "item-1"]]
    assert {i: o.error_type for i, o in outcomes.items()} == {
        f"item-{n}": "BatchTimeout" for n in range(5)
    }


async def test_an_exception_in_process_batch_results_fails_only_that_item() -> None:
    scorer = Vectorised({"item-2": PermanentError("bad row"), "item-5": KeyError("gone")})
    status, outcomes = await run_job(scorer, count=8, batch_size=4, max_retries=2)
    assert status is JobStatus.COMPLETED
    failed = {i: o for i, o in outcomes.items() if o.status is ItemStatus.FAILED}
    assert set(failed) == {"item-2", "item-5"}
    assert failed["item-2"].error_type == "PermanentError"
    assert failed["item-2"].attempts == 1  # permanent: never retried
    assert failed["item-5"].error_type == "KeyError"
    assert failed["item-5"].attempts == 3
    assert results(outcomes) == {f"item-{n}": n * n for n in range(8) if n not in (2, 5)}
    # The retries call process_batch again with only the item that failed.
    assert [call for call in scorer.calls if len(call) < 4] == [["item-5"], ["item-5"]]


async def test_process_batch_returning_the_wrong_number_of_results_fails_that_batch() -> None:
    class Short:
        async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
            if any(item["n"] >= 3 for item in items):
                return [1] * (len(items) - 1)
            return [1] * len(items)

    status, outcomes = await run_job(Short(), count=6, batch_size=3)
    assert status is JobStatus.COMPLETED
    assert set(results(outcomes)) == {"item-0", "item-1", "item-2"}
    for n in (3, 4, 5):
        outcome = outcomes[f"item-{n}"]
        assert outcome.status is ItemStatus.FAILED
        assert outcome.error_type == "InvalidResult"
        assert "returned 2 results for 3 items" in (outcome.error or "")


async def test_process_batch_returning_a_non_sequence_fails_the_batch() -> None:
    class Scalar:
        async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> Any:
            return {"scores": [1] * len(items)}

    _, outcomes = await run_job(Scalar(), count=2, batch_size=2)
    assert {o.error_type for o in outcomes.values()} == {"InvalidResult"}
    assert all("returned dict results" in (o.error or "") for o in outcomes.values())


async def test_process_batch_that_raises_fails_its_items_after_retries() -> None:
    class Down:
        calls = 0

        async def process_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
            Down.calls += 1
            raise ConnectionError("upstream down")

    status, outcomes = await run_job(Down(), count=3, batch_size=3, max_retries=2)
    assert status is JobStatus.COMPLETED
    assert Down.calls == 3
    assert {(o.error_type, o.attempts) for o in outcomes.values()} == {("ConnectionError", 3)}


# --- hooks and keywords ----------------------------------------------------------------------


async def test_setup_and_teardown_run_once_per_pipeline() -> None:
    events: list[str] = []

    class Hooked:
        async def setup(self) -> None:
            events.append("setup")

        async def process(self, item: Mapping[str, Any]) -> int:
            assert events[0] == "setup", "setup runs before the first item"
            assert "teardown" not in events
            return 1

        def teardown(self) -> None:  # a sync hook is fine too
            events.append("teardown")

    async with Pipeline(processors={"hooked": Hooked()}, default_options=QUICK) as p:
        for _ in range(3):
            job = await p.submit("hooked", make_items(5), options=quick(batch_size=2))
            assert (await p.wait(job.id, timeout=PATIENCE)).status is JobStatus.COMPLETED
        assert events == ["setup"]
    assert events == ["setup", "teardown"]


async def test_teardown_is_skipped_for_a_processor_never_used() -> None:
    events: list[str] = []

    class Unused:
        async def setup(self) -> None:
            events.append("setup")

        async def process(self, item: Mapping[str, Any]) -> int:
            return 1

        async def teardown(self) -> None:
            events.append("teardown")

    async with Pipeline(processors={"unused": Unused()}):
        pass
    assert events == []


async def test_a_failing_setup_fails_the_job_and_not_the_pipeline() -> None:
    class Broken:
        async def setup(self) -> None:
            raise RuntimeError("no model file")

        async def process(self, item: Mapping[str, Any]) -> int:
            raise AssertionError("never called")

    async def fine(item: Mapping[str, Any]) -> int:
        return 1

    async with Pipeline(processors={"broken": Broken(), "fine": fine}) as p:
        job = await p.wait((await p.submit("broken", make_items(3))).id, timeout=PATIENCE)
        assert job.status is JobStatus.FAILED
        assert [e.error_type for e in job.errors] == ["ProcessorSetupError"]
        assert "no model file" in job.errors[0].error
        other = await p.wait((await p.submit("fine", make_items(3))).id, timeout=PATIENCE)
        assert other.status is JobStatus.COMPLETED


async def test_a_processor_with_an_attempt_keyword_gets_the_attempt_number() -> None:
    seen: dict[str, list[int]] = {}

    async def flaky(item: Mapping[str, Any], *, attempt: int) -> int:
        seen.setdefault(item["id"], []).append(attempt)
        if attempt < 3:
            raise RuntimeError(f"attempt {attempt}")
        return attempt

    status, outcomes = await run_job(flaky, count=4, max_retries=5)
    assert status is JobStatus.COMPLETED
    assert seen == {f"item-{n}": [1, 2, 3] for n in range(4)}
    assert results(outcomes) == {f"item-{n}": 3 for n in range(4)}


async def test_a_method_with_an_attempt_keyword_gets_the_attempt_number() -> None:
    class Counting:
        def __init__(self) -> None:
            self.attempts: list[int] = []

        async def process(self, item: Mapping[str, Any], attempt: int = 0) -> int:
            self.attempts.append(attempt)
            if attempt == 1:
                raise RuntimeError("first try")
            return attempt

    counting = Counting()
    _, outcomes = await run_job(counting, count=1)
    assert counting.attempts == [1, 2]
    assert outcomes["item-0"].attempts == 2


async def test_permanent_error_fails_without_retry() -> None:
    calls = 0

    async def refuse(item: Mapping[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("this item can never work")

    status, outcomes = await run_job(refuse, count=3, max_retries=5)
    assert status is JobStatus.COMPLETED
    assert calls == 3
    for outcome in outcomes.values():
        assert outcome.status is ItemStatus.FAILED
        assert (outcome.error_type, outcome.attempts) == ("PermanentError", 1)
        assert outcome.error == "this item can never work"


async def test_a_subclass_of_permanent_error_is_permanent_too() -> None:
    class Gone(PermanentError):
        pass

    async def gone(item: Mapping[str, Any]) -> None:
        raise Gone("deleted upstream")

    _, outcomes = await run_job(gone, count=1, max_retries=5)
    assert {(o.error_type, o.attempts) for o in outcomes.values()} == {("Gone", 1)}


# --- registration and lookup by name ---------------------------------------------------------


async def test_register_after_start_and_replace() -> None:
    async def one(item: Mapping[str, Any]) -> int:
        return 1

    async def two(item: Mapping[str, Any]) -> int:
        return 2

    async with Pipeline(default_options=QUICK) as p:
        p.register("n", one)
        first = await p.wait((await p.submit("n", make_items(2))).id, timeout=PATIENCE)
        p.register("n", two)
        second = await p.wait((await p.submit("n", make_items(2))).id, timeout=PATIENCE)
        assert set(results(await outcome_map(p, first.id)).values()) == {1}
        assert set(results(await outcome_map(p, second.id)).values()) == {2}


@pytest.mark.parametrize("bad", [42, "a string", None, type("Plain", (), {})()])
def test_register_refuses_what_is_not_a_processor(bad: object) -> None:
    with pytest.raises(TypeError, match="process"):
        Pipeline().register("bad", bad)


@pytest.mark.parametrize("cls", [OpportunityScorer, Vectorised])
def test_register_refuses_a_processor_class(cls: type) -> None:
    # Its process() would be unbound and fail every item: refuse it at once, clearly.
    with pytest.raises(TypeError, match="register an instance"):
        Pipeline().register("cls", cls)


def test_register_refuses_a_bad_name() -> None:
    async def fine(item: Mapping[str, Any]) -> int:
        return 1

    with pytest.raises(TypeError, match="name"):
        Pipeline().register("", fine)


def test_demo_entry_points_are_installed() -> None:
    found = {ep.name: ep for ep in entry_points(group="bulkpipe.processors")}
    assert {"scoring", "revenue", "full_analysis"} <= set(found)
    assert found["scoring"].load() is OpportunityScorer
    assert found["revenue"].load() is RevenueCalculator
    assert found["full_analysis"].load() is FullAnalysis


async def test_an_entry_point_processor_is_found_by_name_without_register() -> None:
    nodes = [
        {"id": "a", "search_volume": 10_000, "competition": 0.2, "conversion_rate": 0.03},
        {"id": "b", "search_volume": 50, "competition": 0.9, "conversion_rate": 0.01},
    ]
    async with Pipeline(default_options=QUICK) as p:
        job = await p.wait((await p.submit("scoring", nodes)).id, timeout=PATIENCE)
        assert job.status is JobStatus.COMPLETED
        outcomes = await outcome_map(p, job.id)
    assert set(outcomes) == {"a", "b"}
    for outcome in outcomes.values():
        assert 0 <= outcome.result["score"] <= 100
        assert 0 <= outcome.result["confidence"] <= 1
    assert outcomes["a"].result["score"] > outcomes["b"].result["score"]


async def test_an_unknown_processor_is_refused_at_submit() -> None:
    async with Pipeline() as p:
        with pytest.raises(UnknownProcessor, match="nonesuch") as caught:
            await p.submit("nonesuch", make_items(1))
        assert caught.value.name == "nonesuch"
        assert "scoring" in str(caught.value)  # the message lists what is known
        assert await p.list_jobs() == []


async def test_an_unknown_source_is_refused_at_submit() -> None:
    async def fine(item: Mapping[str, Any]) -> int:
        return 1

    async with Pipeline(processors={"fine": fine}) as p:
        with pytest.raises(UnknownSource, match="nowhere") as caught:
            await p.submit("fine", source="nowhere", params={})
        assert caught.value.name == "nowhere"
        assert await p.list_jobs() == []


async def test_a_submit_only_pipeline_takes_a_processor_that_runs_elsewhere_if_told() -> None:
    # With no workers here, the processor may live in a process that has not started yet.
    async with Pipeline(workers=0) as p:
        job = await p.submit("runs-elsewhere", make_items(2), allow_unserved=True)
        assert job.status is JobStatus.PENDING
        assert job.total_items == 2


async def test_a_hung_sync_processor_times_out_without_holding_up_the_job() -> None:
    release = threading.Event()

    def stuck(item: Mapping[str, Any]) -> int:
        if item["n"] == 0:
            release.wait(PATIENCE)  # far longer than item_timeout
        return 1

    try:
        async with Pipeline(processors={"stuck": stuck}) as pipeline:
            job = await pipeline.submit(
                "stuck", make_items(4), options=quick(item_timeout=0.1, max_retries=0)
            )
            with anyio.fail_after(PATIENCE / 2):
                job = await pipeline.wait(job.id)
            outcomes = await outcome_map(pipeline, job.id)
    finally:
        release.set()
    assert job.status is JobStatus.COMPLETED
    assert outcomes["item-0"].error_type == "TimeoutError"
    assert {o.status for k, o in outcomes.items() if k != "item-0"} == {ItemStatus.SUCCEEDED}
