"""What PostgresStore says about where it connects and about psycopg's errors."""

from __future__ import annotations

import psycopg
import psycopg.conninfo
import psycopg.errors

#: How long a store call keeps retrying after connection errors before it gives up.
RETRY_FOR = 20.0


def describe_dsn(dsn: str) -> str:
    """Where the store connects, without the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{params.get('dbname') or ''}"


def hint(exc: Exception, *, retried: bool = True) -> str:
    """What to check after the psycopg error ``exc`` (``retried``: the call was retried)."""
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return (
            "a table or column of the store is missing; was the schema dropped or changed, "
            "or is the prefix wrong?"
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return "the database user lacks a privilege on the store's tables; check its grants"
    if isinstance(exc, psycopg.errors.DiskFull):
        return "the database server's disk is full; free some space"
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return "the server is read-only (a standby?); point the store at the primary"
    if isinstance(exc, psycopg.DataError):
        return "a value could not be stored; check the items and results for odd values"
    if isinstance(exc, psycopg.OperationalError):
        retry = f"the call was retried for up to {RETRY_FOR:g} s; " if retried else ""
        return f"{retry}check that the server is running and reachable from this machine"
    return "check the PostgreSQL server log"
