"""Job stores: where jobs, items and outcomes live."""

from __future__ import annotations

from .memory import MemoryStore

__all__ = ["MemoryStore"]
