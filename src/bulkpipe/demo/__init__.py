"""The demo plugins: synthetic taxonomy nodes and the seed's scoring and revenue processors.

Nothing here imports the bulkpipe engine, so the processors can be loaded as entry points
without an import cycle. The demo job itself (``bulkpipe demo``) lives in
:mod:`bulkpipe.demo.run`.
"""

from __future__ import annotations

from .nodes import generate_nodes, project_nodes
from .processors import (
    FullAnalysis,
    OpportunityScorer,
    RevenueCalculator,
    TransientUpstreamError,
    combined_value,
    project_revenue,
    score_node,
)

__all__ = [
    "FullAnalysis",
    "OpportunityScorer",
    "RevenueCalculator",
    "TransientUpstreamError",
    "combined_value",
    "generate_nodes",
    "project_nodes",
    "project_revenue",
    "score_node",
]
