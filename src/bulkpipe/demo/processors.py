"""Demo processors: the seed's opportunity scorer, revenue calculator and full analysis.

The math lives in plain functions (:func:`score_node`, :func:`project_revenue`,
:func:`combined_value`); the processor classes wrap it in a simulated upstream call that waits
``latency`` seconds and then fails with probability ``failure_rate``, raising
:class:`TransientUpstreamError`, which bulkpipe retries like any ordinary exception.

The processors are registered as the ``bulkpipe.processors`` entry points ``scoring``,
``revenue`` and ``full_analysis``, and so are built with no arguments (no latency, no failures).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, Final

import anyio

__all__ = [
    "LIFT_NORMALISER",
    "FullAnalysis",
    "OpportunityScorer",
    "RevenueCalculator",
    "TransientUpstreamError",
    "combined_value",
    "project_revenue",
    "score_node",
]

LIFT_NORMALISER: Final = 100_000.0
"""A projected lift of this much or more counts as the full revenue value in the combined value."""

_VOLUME_DECADES: Final = 6.0  # 10**6 monthly searches count as full volume
_CONVERSION_CAP: Final = 0.08  # a conversion rate this high counts as full conversion


class TransientUpstreamError(Exception):
    """The simulated upstream call failed; a retry may succeed."""


def score_node(node: Mapping[str, Any]) -> dict[str, float]:
    """Score a node's opportunity: ``{"score": 0..100, "confidence": 0..1}``.

    High search volume, low competition and a high conversion rate give a high score; the
    confidence grows with search volume. A missing, negative or non-finite metric counts as 0.
    """
    volume = _volume_factor(node)
    competition = min(1.0, _metric(node, "competition"))
    conversion = min(1.0, _metric(node, "conversion_rate") / _CONVERSION_CAP)
    score = 100.0 * (0.45 * volume + 0.35 * (1.0 - competition) + 0.20 * conversion)
    return {"score": score, "confidence": min(1.0, 0.35 + 0.6 * volume)}


def project_revenue(node: Mapping[str, Any]) -> dict[str, float]:
    """Project a node's yearly revenue lift: ``{"projected_lift": >= 0, "confidence": 0..1}``.

    The potential is the share of yearly searches reachable at the node's competition, times its
    conversion rate and order value; the lift is what that adds over ``current_revenue``. A
    missing, negative or non-finite metric counts as 0.
    """
    reachable_share = 0.05 + 0.30 * (1.0 - min(1.0, _metric(node, "competition")))
    potential = (
        12.0
        * _metric(node, "search_volume")
        * reachable_share
        * min(1.0, _metric(node, "conversion_rate"))
        * _metric(node, "avg_order_value")
    )
    current = _metric(node, "current_revenue")
    lift = potential - current if math.isfinite(potential) else 0.0
    history_bonus = 0.2 if current > 0 else 0.0
    confidence = min(1.0, 0.25 + 0.5 * _volume_factor(node) + history_bonus)
    return {"projected_lift": max(0.0, lift), "confidence": confidence}


def combined_value(score: Mapping[str, float], projection: Mapping[str, float]) -> float:
    """The seed's combined opportunity value, 0..100.

    ``(score/100 * 0.4 + min(1, lift/100000) * 0.6) * mean(confidences) * 100``.
    """
    score_value = score["score"] / 100.0
    revenue_value = min(1.0, projection["projected_lift"] / LIFT_NORMALISER)
    confidence = (score["confidence"] + projection["confidence"]) / 2.0
    return (score_value * 0.4 + revenue_value * 0.6) * confidence * 100.0


def _metric(node: Mapping[str, Any], key: str) -> float:
    value = float(node.get(key) or 0.0)
    return value if math.isfinite(value) and value > 0.0 else 0.0


def _volume_factor(node: Mapping[str, Any]) -> float:
    return min(1.0, math.log10(1.0 + _metric(node, "search_volume")) / _VOLUME_DECADES)


class _SimulatedUpstream:
    """A processor whose every call waits ``latency`` seconds, then fails at ``failure_rate``."""

    _upstream: str = "upstream"

    def __init__(
        self, *, latency: float = 0.0, failure_rate: float = 0.0, seed: int | None = None
    ) -> None:
        self.latency: Final = _check_latency(latency)
        self.failure_rate: Final = _check_failure_rate(failure_rate)
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(latency={self.latency!r}, failure_rate={self.failure_rate!r})"
        )

    async def _call_upstream(self) -> None:
        """Simulate one upstream call: wait, then maybe raise :class:`TransientUpstreamError`."""
        if self.latency > 0.0:
            await anyio.sleep(self.latency)
        if self.failure_rate > 0.0 and self._rng.random() < self.failure_rate:
            raise TransientUpstreamError(
                f"simulated {self._upstream} call failed (failure_rate={self.failure_rate:g})"
            )


def _check_latency(latency: float) -> float:
    value = float(latency)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"latency must be a finite number of seconds >= 0, got {latency!r}")
    return value


def _check_failure_rate(failure_rate: float) -> float:
    value = float(failure_rate)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"failure_rate must be a probability in [0, 1], got {failure_rate!r}")
    return value


class OpportunityScorer(_SimulatedUpstream):
    """Processor ``scoring``: :func:`score_node` behind one simulated upstream call.

    Keyword-only arguments: ``latency`` (seconds per call, >= 0), ``failure_rate`` (chance in
    [0, 1] that a call raises :class:`TransientUpstreamError`) and ``seed`` (makes the failure
    draws reproducible).
    """

    _upstream = "scoring"

    async def process(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``{"score": 0..100, "confidence": 0..1}`` for one node."""
        await self._call_upstream()
        return score_node(item)


class RevenueCalculator(_SimulatedUpstream):
    """Processor ``revenue``: :func:`project_revenue` behind one simulated upstream call.

    Takes the same keyword-only arguments as :class:`OpportunityScorer`.
    """

    _upstream = "revenue"

    async def process(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``{"projected_lift": >= 0, "confidence": 0..1}`` for one node."""
        await self._call_upstream()
        return project_revenue(item)


class FullAnalysis:
    """Processor ``full_analysis``: scoring, then revenue, then :func:`combined_value`.

    Each of the two sub-calls has its own latency and its own failure draw, so one attempt takes
    about ``2 * latency`` and fails with probability ``1 - (1 - failure_rate) ** 2``. Takes the
    same keyword-only arguments as :class:`OpportunityScorer`.
    """

    def __init__(
        self, *, latency: float = 0.0, failure_rate: float = 0.0, seed: int | None = None
    ) -> None:
        scorer_seed, calculator_seed = _split_seed(seed)
        self.scorer: Final = OpportunityScorer(
            latency=latency, failure_rate=failure_rate, seed=scorer_seed
        )
        self.calculator: Final = RevenueCalculator(
            latency=latency, failure_rate=failure_rate, seed=calculator_seed
        )

    def __repr__(self) -> str:
        return (
            f"FullAnalysis(latency={self.scorer.latency!r}, "
            f"failure_rate={self.scorer.failure_rate!r})"
        )

    async def process(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``{"score": {...}, "projection": {...}, "combined_value": 0..100}``."""
        score = await self.scorer.process(item)
        projection = await self.calculator.process(item)
        return {
            "score": score,
            "projection": projection,
            "combined_value": combined_value(score, projection),
        }


def _split_seed(seed: int | None) -> tuple[int | None, int | None]:
    """Two independent seeds from one, so the two sub-calls' failures are not correlated."""
    if seed is None:
        return None, None
    rng = random.Random(seed)
    return rng.getrandbits(64), rng.getrandbits(64)
