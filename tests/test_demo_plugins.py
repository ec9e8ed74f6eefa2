"""Tests of the demo plug-ins that need no engine: nodes, scoring math, processors, CLI usage."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkpipe.cli import main
from bulkpipe.demo.nodes import MAX_DEPTH, generate_nodes, project_nodes, project_seed
from bulkpipe.demo.processors import (
    FullAnalysis,
    OpportunityScorer,
    RevenueCalculator,
    TransientUpstreamError,
    combined_value,
    project_revenue,
    score_node,
)
from bulkpipe.demo.run import DemoConfig, job_options, run_demo, top_opportunities
from bulkpipe.models import ItemOutcome, ItemStatus, Job

PROCESSOR_CLASSES = [OpportunityScorer, RevenueCalculator, FullAnalysis]
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

NODE_KEYS = {
    "id",
    "name",
    "depth",
    "parent_id",
    "search_volume",
    "competition",
    "current_revenue",
    "conversion_rate",
    "avg_order_value",
}


def a_node(**overrides: Any) -> dict[str, Any]:
    """One plausible node, with some fields replaced."""
    node: dict[str, Any] = {
        "id": "node-00001",
        "name": "Outdoor Gear",
        "depth": 0,
        "parent_id": None,
        "search_volume": 12_000,
        "competition": 0.3,
        "current_revenue": 5_000.0,
        "conversion_rate": 0.03,
        "avg_order_value": 60.0,
    }
    node.update(overrides)
    return node


# --- nodes -----------------------------------------------------------------------------------


def test_generate_nodes_is_deterministic_per_seed() -> None:
    assert list(generate_nodes(300, seed=7)) == list(generate_nodes(300, seed=7))
    assert list(generate_nodes(300, seed=7)) != list(generate_nodes(300, seed=8))


def test_generate_nodes_default_count_and_ids() -> None:
    nodes = list(generate_nodes())
    assert len(nodes) == 3000
    assert nodes[0]["id"] == "node-00001"
    assert nodes[-1]["id"] == "node-03000"


def test_generate_nodes_shape_ids_and_parents() -> None:
    depth_of: dict[str, int] = {}
    for node in generate_nodes(3000, seed=42):
        assert set(node) == NODE_KEYS
        assert json.loads(json.dumps(node)) == node
        assert node["id"] not in depth_of, "ids must be unique"
        assert 0 <= node["depth"] <= MAX_DEPTH
        if node["depth"] == 0:
            assert node["parent_id"] is None
        else:
            assert depth_of[node["parent_id"]] == node["depth"] - 1, "parent must come first"
        depth_of[node["id"]] = node["depth"]
    assert set(depth_of.values()) == set(range(MAX_DEPTH + 1))


def test_generate_nodes_metric_ranges() -> None:
    for node in generate_nodes(1000, seed=3):
        assert isinstance(node["search_volume"], int)
        assert node["search_volume"] >= 0
        assert 0.0 <= node["competition"] <= 1.0
        assert 0.0 < node["conversion_rate"] < 1.0
        assert node["avg_order_value"] > 0.0
        assert node["current_revenue"] >= 0.0


def test_generate_nodes_checks_count_at_once() -> None:
    with pytest.raises(ValueError, match="count must be >= 0"):
        generate_nodes(-1)
    assert list(generate_nodes(0)) == []


def test_generate_nodes_does_not_touch_global_random() -> None:
    import random

    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    list(generate_nodes(50))
    assert random.random() == expected


async def collect(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node the ``project_nodes`` source yields for ``params``."""
    return [node async for node in project_nodes(params)]


@pytest.mark.anyio
async def test_project_nodes_same_project_same_nodes() -> None:
    first = await collect({"project_id": "acme", "count": 200})
    assert first == await collect({"project_id": "acme", "count": 200})
    assert first == list(generate_nodes(200, seed=project_seed("acme")))
    assert first != await collect({"project_id": "globex", "count": 200})


@pytest.mark.anyio
async def test_project_nodes_default_count() -> None:
    assert len(await collect({"project_id": "acme"})) == 3000


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, ValueError),
        ({"project_id": ""}, ValueError),
        ({"project_id": 7}, ValueError),
        ({"project_id": "acme", "count": "10"}, TypeError),
        ({"project_id": "acme", "count": -1}, ValueError),
    ],
)
async def test_project_nodes_rejects_bad_params(
    params: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await collect(params)


def test_project_seed_is_stable() -> None:
    assert project_seed("acme") == 0x05C4BA3E  # zlib.crc32(b"acme"): same in every process


# --- scoring math ----------------------------------------------------------------------------


def test_combined_value_matches_the_seed_formula() -> None:
    # (80/100 * 0.4 + min(1, 50000/100000) * 0.6) * ((0.9 + 0.7) / 2) * 100
    #   = (0.32 + 0.30) * 0.8 * 100 = 49.6
    value = combined_value(
        {"score": 80.0, "confidence": 0.9}, {"projected_lift": 50_000.0, "confidence": 0.7}
    )
    assert value == pytest.approx(49.6)


def test_combined_value_caps_the_revenue_term() -> None:
    # (0.32 + min(1, 2.5) * 0.6) * 0.8 * 100 = 73.6
    value = combined_value(
        {"score": 80.0, "confidence": 0.9}, {"projected_lift": 250_000.0, "confidence": 0.7}
    )
    assert value == pytest.approx(73.6)


def test_score_rewards_volume_low_competition_and_conversion() -> None:
    base = score_node(a_node())["score"]
    assert score_node(a_node(search_volume=500_000))["score"] > base
    assert score_node(a_node(competition=0.05))["score"] > base
    assert score_node(a_node(conversion_rate=0.07))["score"] > base
    assert score_node(a_node(competition=0.95))["score"] < base


def test_missing_or_bad_metrics_count_as_zero() -> None:
    for node in ({"id": "x"}, a_node(search_volume=-5, competition=math.nan, current_revenue=None)):
        score = score_node(node)
        projection = project_revenue(node)
        assert 0.0 <= score["score"] <= 100.0
        assert 0.0 <= score["confidence"] <= 1.0
        assert projection["projected_lift"] >= 0.0
        assert 0.0 <= projection["confidence"] <= 1.0


def test_lift_is_zero_when_current_revenue_exceeds_potential() -> None:
    assert project_revenue(a_node(current_revenue=1e12))["projected_lift"] == 0.0


def assert_in_ranges(node: dict[str, Any]) -> None:
    """The documented ranges of every pure function's output for ``node``."""
    score = score_node(node)
    projection = project_revenue(node)
    assert 0.0 <= score["score"] <= 100.0
    assert 0.0 <= score["confidence"] <= 1.0
    assert projection["projected_lift"] >= 0.0
    assert 0.0 <= projection["confidence"] <= 1.0
    assert 0.0 <= combined_value(score, projection) <= 100.0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**64), count=st.integers(0, 60))
def test_generated_nodes_always_score_in_range(seed: int, count: int) -> None:
    for node in generate_nodes(count, seed=seed):
        assert_in_ranges(node)


metric = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0)


@given(volume=metric, competition=unit, conversion=unit, aov=metric, revenue=metric)
def test_any_sane_node_scores_in_range(
    volume: float, competition: float, conversion: float, aov: float, revenue: float
) -> None:
    assert_in_ranges(
        a_node(
            search_volume=volume,
            competition=competition,
            conversion_rate=conversion,
            avg_order_value=aov,
            current_revenue=revenue,
        )
    )


@given(volume=metric, more=metric, competition=unit, higher=unit)
def test_score_is_monotonic(volume: float, more: float, competition: float, higher: float) -> None:
    low, high = sorted((volume, volume + more))
    assert (
        score_node(a_node(search_volume=high))["score"]
        >= score_node(a_node(search_volume=low))["score"]
    )
    easy, hard = sorted((competition, higher))
    assert (
        score_node(a_node(competition=easy))["score"]
        >= score_node(a_node(competition=hard))["score"]
    )


# --- processors ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PROCESSOR_CLASSES)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latency": -0.1}, "latency"),
        ({"latency": math.inf}, "latency"),
        ({"latency": math.nan}, "latency"),
        ({"failure_rate": -0.01}, "failure_rate"),
        ({"failure_rate": 1.01}, "failure_rate"),
        ({"failure_rate": math.nan}, "failure_rate"),
    ],
)
def test_constructors_validate(cls: type[Any], kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_constructor_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        OpportunityScorer(0.1)  # type: ignore[call-arg]


def entry_points() -> Iterator[tuple[str, str]]:
    """The ``bulkpipe.processors`` entry points declared in pyproject.toml."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    yield from project["entry-points"]["bulkpipe.processors"].items()


def test_entry_points_load_and_build_with_no_arguments() -> None:
    declared = dict(entry_points())
    assert set(declared) == {"scoring", "revenue", "full_analysis"}
    for target in declared.values():
        module, _, name = target.partition(":")
        processor = getattr(import_module(module), name)()
        assert callable(processor.process)


@pytest.mark.anyio
async def test_processors_return_the_pure_results() -> None:
    node = a_node()
    score, projection = score_node(node), project_revenue(node)
    assert await OpportunityScorer().process(node) == score
    assert await RevenueCalculator().process(node) == projection
    analysis = await FullAnalysis().process(node)
    assert analysis == {
        "score": score,
        "projection": projection,
        "combined_value": combined_value(score, projection),
    }
    assert json.loads(json.dumps(analysis)) == analysis


@pytest.mark.anyio
@pytest.mark.parametrize("cls", PROCESSOR_CLASSES)
async def test_failure_rate_one_always_raises(cls: type[Any]) -> None:
    processor = cls(failure_rate=1.0, seed=1)
    for _ in range(20):
        with pytest.raises(TransientUpstreamError):
            await processor.process(a_node())


@pytest.mark.anyio
@pytest.mark.parametrize("cls", PROCESSOR_CLASSES)
async def test_failure_rate_zero_never_raises(cls: type[Any]) -> None:
    processor = cls(failure_rate=0.0)
    for node in generate_nodes(200):
        await processor.process(node)


async def failure_pattern(processor: Any, calls: int) -> list[bool]:
    """Which of ``calls`` successive calls failed."""
    pattern = []
    for node in generate_nodes(calls):
        try:
            await processor.process(node)
        except TransientUpstreamError:
            pattern.append(True)
        else:
            pattern.append(False)
    return pattern


@pytest.mark.anyio
@pytest.mark.parametrize("cls", PROCESSOR_CLASSES)
async def test_seeded_failures_are_reproducible(cls: type[Any]) -> None:
    first = await failure_pattern(cls(failure_rate=0.5, seed=9), 100)
    assert first == await failure_pattern(cls(failure_rate=0.5, seed=9), 100)
    assert 10 < sum(first) < 90
    assert first != await failure_pattern(cls(failure_rate=0.5, seed=10), 100)


@pytest.mark.anyio
async def test_full_analysis_draws_each_sub_call_separately() -> None:
    # One attempt fails with probability 1 - 0.5**2 = 0.75, not 0.5 (draws not shared).
    failures = sum(await failure_pattern(FullAnalysis(failure_rate=0.5, seed=4), 400))
    assert 240 < failures < 360


@pytest.mark.anyio
@pytest.mark.parametrize(("cls", "calls"), [(OpportunityScorer, 1), (FullAnalysis, 2)])
async def test_latency_is_honoured(cls: type[Any], calls: int) -> None:
    latency = 0.05
    processor = cls(latency=latency)
    start = anyio.current_time()
    await processor.process(a_node())
    assert anyio.current_time() - start >= calls * latency * 0.99  # no upper bound: noisy hosts


# --- demo report pieces ----------------------------------------------------------------------


def an_outcome(item_id: str, result: Any) -> ItemOutcome:
    """A succeeded outcome of ``item_id`` with ``result``."""
    now = datetime.now(UTC)
    return ItemOutcome(
        item_id=item_id,
        status=ItemStatus.SUCCEEDED,
        result=result,
        attempts=1,
        started_at=now,
        finished_at=now,
    )


@pytest.mark.anyio
async def test_top_opportunities_keeps_the_best_in_order() -> None:
    values = [5.0, 42.0, 17.5, 99.0, 0.0, 63.2, 42.5]

    async def outcomes() -> AsyncIterator[ItemOutcome]:
        for index, value in enumerate(values):
            yield an_outcome(f"node-{index}", {"combined_value": value})
        yield an_outcome("odd", None)

    top = await top_opportunities(outcomes(), 3)
    assert top == [("node-3", 99.0), ("node-5", 63.2), ("node-6", 42.5)]


# --- CLI usage (no engine needed: these stop at argument parsing) -----------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["demo", "--nodes", "0"],
        ["demo", "--nodes", "many"],
        ["demo", "--latency", "-1"],
        ["demo", "--failure-rate", "1.5"],
        ["demo", "--concurrency", "0"],
        ["demo", "--retry-delay", "nan"],
        ["demo", "--batch-size", "1000000"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_cli_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--nodes", "--latency", "--failure-rate", "--seed", "--batch-size"):
        assert option in out


def test_job_options_keep_the_backoff_cap_valid() -> None:
    options = job_options(DemoConfig(retry_delay=45.0))
    assert options.retry_delay == 45.0
    assert options.retry_delay_max >= 45.0
    assert job_options(DemoConfig()).retry_delay == 0.05


# --- end to end, through the engine (small and fast) -----------------------------------------


@pytest.mark.anyio
async def test_run_demo_end_to_end() -> None:
    config = DemoConfig(nodes=300, latency=0.0, failure_rate=0.1, retry_delay=0.0, batch_size=50)
    snapshots: list[Job] = []
    report = await run_demo(config, on_progress=snapshots.append)
    assert report.completed
    assert snapshots[-1].status.is_terminal
    summary = report.job.result
    assert summary is not None
    assert summary.total == 300
    assert summary.succeeded + summary.failed == 300
    values = [item.combined_value for item in report.top]
    assert len(values) == 10
    assert values == sorted(values, reverse=True)
    names = {node["id"]: node["name"] for node in generate_nodes(300, seed=config.seed)}
    assert all(item.name == names[item.node_id] for item in report.top)
