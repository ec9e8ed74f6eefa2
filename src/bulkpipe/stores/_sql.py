"""Named SQL queries and numbered migrations, read from the package's ``.sql`` files.

A query file holds several statements, each under a header comment ``-- name: NAME --``.
Table names are written ``{prefix}jobs`` and so on; the prefix is validated (a short SQL
identifier) before it is substituted, and every value is passed as a parameter.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from ..errors import InvalidArgument

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*--\s*$", re.MULTILINE)
_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe table-name prefix, else raise :class:`InvalidArgument`."""
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise InvalidArgument(
            f"table prefix {prefix!r} is not valid; use 1-31 lowercase letters, digits and "
            "underscores, starting with a letter (for example 'bulkpipe_')"
        )
    return prefix


def _text(dialect: str, name: str) -> str:
    return files("bulkpipe.stores.sql").joinpath(dialect, name).read_text(encoding="utf-8")


@cache
def load_queries(dialect: str, prefix: str) -> dict[str, str]:
    """The named queries of ``sql/<dialect>/queries.sql`` with the table prefix applied."""
    text = _text(dialect, "queries.sql")
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise RuntimeError(f"query {name!r} is defined twice in sql/{dialect}/queries.sql")
        queries[name] = body.strip().replace("{prefix}", check_prefix(prefix))
    return queries


@cache
def load_migrations(dialect: str, prefix: str) -> list[tuple[int, str]]:
    """``(version, script)`` for every ``sql/<dialect>/migrations/NNNN_*.sql``, in order."""
    folder = files("bulkpipe.stores.sql").joinpath(dialect, "migrations")
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            script = entry.read_text(encoding="utf-8").replace("{prefix}", check_prefix(prefix))
            found.append((int(match.group(1)), script))
    found.sort()
    versions = [v for v, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"sql/{dialect}/migrations must be numbered 0001, 0002, ...: {versions}")
    return found


def schema_script(dialect: str, prefix: str) -> str:
    """``sql/<dialect>/schema.sql``: the current schema, to compare with the migrations."""
    return _text(dialect, "schema.sql").replace("{prefix}", check_prefix(prefix))
