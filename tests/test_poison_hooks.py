"""A processor's setup() or teardown() raising a BaseException (SystemExit, KeyboardInterrupt)
fails like any failing hook: the job fails with ProcessorSetupError, the worker goes on."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bulkpipe import ErrorType, JobStatus, Pipeline

from .helpers import PATIENCE, QUICK, make_items

pytestmark = pytest.mark.anyio

ABORTS = [SystemExit(3), KeyboardInterrupt(), GeneratorExit()]


class Echo:
    async def process(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"id": item["id"]}


@pytest.mark.parametrize("abort", ABORTS, ids=lambda e: type(e).__name__)
async def test_a_setup_that_aborts_fails_its_job_and_the_worker_goes_on(
    abort: BaseException,
) -> None:
    class Broken(Echo):
        def setup(self) -> None:
            raise abort

    async with Pipeline(processors={"broken": Broken(), "echo": Echo()}) as pipeline:
        bad = await pipeline.submit("broken", make_items(5), options=QUICK)
        bad = await pipeline.wait(bad.id, timeout=PATIENCE)
        good = await pipeline.submit("echo", make_items(5), options=QUICK)
        good = await pipeline.wait(good.id, timeout=PATIENCE)
    assert bad.status is JobStatus.FAILED
    (error,) = [e for e in bad.errors if e.item_id is None]
    assert error.error_type == ErrorType.PROCESSOR_SETUP_ERROR
    assert type(abort).__name__ in error.error
    assert good.status is JobStatus.COMPLETED
    assert good.succeeded_items == 5


@pytest.mark.parametrize("abort", ABORTS, ids=lambda e: type(e).__name__)
async def test_a_teardown_that_aborts_is_logged_and_the_others_still_run(
    abort: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    torn: list[str] = []

    class Aborting(Echo):
        def teardown(self) -> None:
            torn.append("aborting")
            raise abort

    class Tidy(Echo):
        def teardown(self) -> None:
            torn.append("tidy")

    caplog.set_level(logging.ERROR, logger="bulkpipe.processors")
    async with Pipeline(processors={"a": Aborting(), "b": Tidy()}) as pipeline:
        for name in ("a", "b"):
            job = await pipeline.submit(name, make_items(2), options=QUICK)
            assert (await pipeline.wait(job.id, timeout=PATIENCE)).status is JobStatus.COMPLETED
    assert sorted(torn) == ["aborting", "tidy"]
    assert any("teardown" in r.getMessage() for r in caplog.records)
