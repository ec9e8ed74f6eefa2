"""Job stores: where jobs, items and outcomes live.

``MemoryStore`` is always available. ``SQLiteStore`` needs nothing extra; ``PostgresStore``
needs the ``postgres`` extra (``pip install 'bulkpipe[postgres]'``). Both are imported on
first use, so importing this package never needs a database driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .memory import MemoryStore
from .url import open_store

if TYPE_CHECKING:
    from .postgres import PostgresStore
    from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "PostgresStore", "SQLiteStore", "open_store"]


def __getattr__(name: str) -> Any:
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore

        return SQLiteStore
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'bulkpipe.stores' has no attribute {name!r}")
