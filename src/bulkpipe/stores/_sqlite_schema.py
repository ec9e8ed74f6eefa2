"""SQLiteStore's schema: migration scripts split into statements, and the tables of a file
compared with the ones ``schema.sql`` makes (so that foreign or changed tables are refused)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple

from ._sql import load_queries, schema_script

_DIALECT = "sqlite"
_TABLES = ("meta", "jobs", "batches", "items", "outcomes", "errors", "workers", "locks")


class SchemaObject(NamedTuple):
    """``schema_objects``: one row of ``sqlite_master``."""

    type: str
    name: str
    tbl_name: str
    sql: str | None


def statements(script: str) -> Iterator[str]:
    """The statements of a migration script, one at a time (``executescript`` would commit)."""
    chunk = ""
    for line in script.splitlines(keepends=True):
        chunk += line
        if sqlite3.complete_statement(chunk):
            yield chunk.strip()
            chunk = ""
    if any(line.strip() and not line.lstrip().startswith("--") for line in chunk.splitlines()):
        raise RuntimeError(f"incomplete SQL statement at the end of a migration: {chunk!r}")


@lru_cache(maxsize=16)
def expected_schema(prefix: str) -> tuple[SchemaObject, ...]:
    """``sqlite_master`` rows of this prefix's tables as ``schema.sql`` creates them."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for statement in statements(schema_script(_DIALECT, prefix)):
            conn.execute(statement)
        return schema_objects(conn, prefix)
    finally:
        conn.close()


def schema_objects(conn: sqlite3.Connection, prefix: str) -> tuple[SchemaObject, ...]:
    tables = json.dumps([prefix + name for name in _TABLES])
    query = load_queries(_DIALECT, prefix)["schema_objects"]
    return tuple(map(SchemaObject._make, conn.execute(query, {"tables": tables})))
