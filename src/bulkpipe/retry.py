"""Backoff delays between attempts of one item."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """The pause before retry number ``attempt`` (1 for the first retry).

    Exponential (``base * 2 ** (attempt - 1)``, capped at ``cap``) with "equal jitter": a
    uniformly random half on top of a fixed half, so retries spread out but never fire at once.
    """
    ceiling = min(cap, base * (2.0 ** min(attempt - 1, 62)))
    half = ceiling / 2.0
    return half + rng.uniform(0.0, half)
