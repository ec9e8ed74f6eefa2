"""Synthetic taxonomy nodes for the demo: deterministic, JSON-serialisable dicts.

A node looks like a row of the seed's ``taxonomy_nodes`` table::

    {"id": "node-00001", "name": "Outdoor Gear", "depth": 0, "parent_id": None,
     "search_volume": 8123, "competition": 0.4312, "current_revenue": 2150.37,
     "conversion_rate": 0.0314, "avg_order_value": 61.5}

Every node after the first has a parent of one depth less that was generated before it, so the
nodes come out in an order a store can insert parent-first.
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Final

import anyio.lowlevel

__all__ = ["DEFAULT_COUNT", "MAX_DEPTH", "generate_nodes", "project_nodes", "project_seed"]

DEFAULT_COUNT: Final = 3000
"""How many nodes the demo and :func:`project_nodes` make unless told otherwise."""

MAX_DEPTH: Final = 4
"""The deepest level of the taxonomy; roots are at depth 0."""

_DEPTH_WEIGHTS: Final = (0.02, 0.08, 0.20, 0.35, 0.35)
_PARENT_WINDOW: Final = 256  # recent candidate parents kept per depth: bounded memory
_CHECKPOINT_EVERY: Final = 100

_ROOTS: Final = (
    "Home & Garden", "Outdoor Gear", "Electronics", "Fashion", "Health & Beauty", "Sports",
    "Toys & Games", "Kitchen", "Office Supplies", "Pet Supplies", "Automotive", "Books",
)  # fmt: skip
_MODIFIERS: Final = (
    "Premium", "Budget", "Eco-Friendly", "Compact", "Wireless", "Vintage", "Smart",
    "Portable", "Organic", "Professional", "Kids'", "Waterproof",
)  # fmt: skip
_NOUNS: Final = (
    "Lamps", "Backpacks", "Headphones", "Jackets", "Blenders", "Tents", "Chairs", "Cameras",
    "Sneakers", "Planters", "Notebooks", "Bottles", "Rugs", "Watches", "Brushes", "Speakers",
)  # fmt: skip


def generate_nodes(count: int = DEFAULT_COUNT, *, seed: int = 42) -> Iterator[dict[str, Any]]:
    """Yield ``count`` synthetic taxonomy nodes, the same ones for the same ``seed``.

    The ids run ``node-00001``, ``node-00002``... The arguments are checked at once (not on the
    first ``next()``); a negative ``count`` raises :class:`ValueError`.
    """
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return _iter_nodes(count, random.Random(seed))


def project_seed(project_id: str) -> int:
    """The node seed of a project: a stable CRC-32 of its id, the same in every process."""
    return zlib.crc32(project_id.encode("utf-8"))


async def project_nodes(params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Item source: the nodes of a project, ``{"project_id": str, "count": int = 3000}``.

    The same ``project_id`` always gives the same nodes (see :func:`project_seed`). Bad params
    raise :class:`ValueError` or :class:`TypeError` when iteration starts.
    """
    project_id, count = _project_params(params)
    for index, node in enumerate(generate_nodes(count, seed=project_seed(project_id)), start=1):
        yield node
        if index % _CHECKPOINT_EVERY == 0:
            await anyio.lowlevel.checkpoint()


def _project_params(params: Mapping[str, Any]) -> tuple[str, int]:
    project_id = params.get("project_id")
    if not isinstance(project_id, str) or not project_id:
        raise ValueError(f"params['project_id'] must be a non-empty str, got {project_id!r}")
    count = params.get("count", DEFAULT_COUNT)
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"params['count'] must be an int, got {count!r}")
    return project_id, count


def _iter_nodes(count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    parents: list[deque[str]] = [deque(maxlen=_PARENT_WINDOW) for _ in range(MAX_DEPTH)]
    for index in range(1, count + 1):
        node_id = f"node-{index:05d}"
        depth = _pick_depth(rng, parents)
        parent_id = rng.choice(parents[depth - 1]) if depth > 0 else None
        if depth < MAX_DEPTH:
            parents[depth].append(node_id)
        yield _make_node(rng, node_id, depth, parent_id)


def _pick_depth(rng: random.Random, parents: list[deque[str]]) -> int:
    """A depth whose parent level already has a node (always 0 for the first node)."""
    allowed = [d for d in range(MAX_DEPTH + 1) if d == 0 or parents[d - 1]]
    return rng.choices(allowed, weights=[_DEPTH_WEIGHTS[d] for d in allowed])[0]


def _make_node(
    rng: random.Random, node_id: str, depth: int, parent_id: str | None
) -> dict[str, Any]:
    search_volume = int(rng.lognormvariate(9.0 - 0.8 * depth, 1.0))  # median ~8k at the root
    competition = round(rng.betavariate(2.0, 2.0), 4)
    conversion_rate = round(rng.uniform(0.005, 0.08), 4)
    avg_order_value = round(rng.lognormvariate(4.0, 0.5), 2)  # median ~$55
    captured_share = rng.uniform(0.01, 0.15)
    current_revenue = 12 * search_volume * captured_share * conversion_rate * avg_order_value
    return {
        "id": node_id,
        "name": _make_name(rng, depth),
        "depth": depth,
        "parent_id": parent_id,
        "search_volume": search_volume,
        "competition": competition,
        "current_revenue": round(current_revenue, 2),
        "conversion_rate": conversion_rate,
        "avg_order_value": avg_order_value,
    }


def _make_name(rng: random.Random, depth: int) -> str:
    if depth == 0:
        return rng.choice(_ROOTS)
    modifiers = rng.sample(_MODIFIERS, k=min(depth - 1, 2))
    return " ".join([*modifiers, rng.choice(_NOUNS)])
