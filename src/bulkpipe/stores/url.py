"""Opening a store from a URL: ``memory://``, ``sqlite:///file.db``, ``postgresql://...``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..errors import InvalidArgument
from ..store import JobStore
from .memory import MemoryStore

_SCHEMES = "memory://, sqlite:///relative.db, sqlite:////absolute/path.db, postgresql://..."


def open_store(url: str, **options: Any) -> JobStore:
    """The store a URL names (not opened yet: :class:`Pipeline` and :class:`Worker` open it).

    - ``memory://``: a new :class:`MemoryStore`.
    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: a ``SQLiteStore``.
    - ``postgresql://user@host:port/db`` (or ``postgres://``): a ``PostgresStore``.

    A ``?prefix=name_`` query parameter sets the table prefix of a SQL store; other keyword
    ``options`` go to the store's constructor.
    """
    if not isinstance(url, str) or "://" not in url:
        raise InvalidArgument(f"store URL {url!r} is not a URL; use one of {_SCHEMES}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidArgument(
            f"store URL {url!r} is malformed ({exc}); use one of {_SCHEMES}"
        ) from None
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "memory":
        if parts.netloc or parts.path.strip("/") or query:
            raise InvalidArgument(f"store URL {url!r}: memory:// takes no host, path or query")
        return MemoryStore()
    if scheme == "sqlite":
        if parts.netloc:
            raise InvalidArgument(
                f"store URL {url!r}: a SQLite URL has no host; write sqlite:///relative.db "
                "or sqlite:////absolute/path.db"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise InvalidArgument(f"store URL {url!r} names no database file")
        from .sqlite import SQLiteStore

        return SQLiteStore(path, **_sql_options(url, query, options))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        query.pop("prefix", None)
        dsn = parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()
        prefix = dict(parse_qsl(parts.query)).get("prefix")
        if prefix is not None:
            options = {**options, "prefix": prefix}
        return PostgresStore(dsn, **options)
    raise InvalidArgument(
        f"store URL {url!r} has an unknown scheme {scheme!r}; use one of {_SCHEMES}"
    )


def _sql_options(url: str, query: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    extra = set(query) - {"prefix"}
    if extra:
        raise InvalidArgument(f"store URL {url!r}: unknown parameter(s) {', '.join(sorted(extra))}")
    if "prefix" in query:
        options = {**options, "prefix": query["prefix"]}
    return options
