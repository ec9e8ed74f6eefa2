"""Helpers for the PostgreSQL store tests: unique table prefixes, emptied or dropped tables.

The server and the skip-or-fail rule come from ``tests/conftest.py`` (``POSTGRES_URL``,
``postgres_or_skip``, ``drop_prefixed``). Every test module uses its own random prefix, so
parallel runs and re-runs on one database never see each other's tables.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import anyio.to_thread
import psycopg

from bulkpipe.stores.postgres import PostgresStore

from .conftest import POSTGRES_URL, postgres_or_skip

#: The store's tables that hold data (``meta`` keeps the schema version).
DATA_TABLES = ("jobs", "batches", "items", "outcomes", "workers")


def unique_prefix() -> str:
    """A table prefix no other test run uses."""
    return f"t{uuid.uuid4().hex[:10]}_"


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added (``prefix=...``, ``application_name=...``)."""
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{key}={value}" for key, value in params.items())


def clear_tables(prefix: str) -> None:
    """Empty a store's data tables (much faster than dropping and creating them)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute("; ".join(f"DELETE FROM {prefix}{table}" for table in DATA_TABLES))


@contextlib.asynccontextmanager
async def empty_store(prefix: str, url: str = POSTGRES_URL) -> AsyncIterator[PostgresStore]:
    """An opened store whose tables (created if needed) hold nothing."""
    postgres_or_skip()
    store = PostgresStore(url, prefix=prefix)
    await store.open()
    try:
        await anyio.to_thread.run_sync(clear_tables, prefix)
        yield store
    finally:
        await store.close()
