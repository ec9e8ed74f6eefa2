"""What SQLiteStore says about sqlite3's errors: a hint per SQLite result code."""

from __future__ import annotations

import sqlite3

_HINTS = {
    sqlite3.SQLITE_BUSY: "another connection held the database locked for longer than "
    "busy_timeout; is a long transaction running elsewhere? (or raise busy_timeout)",
    sqlite3.SQLITE_LOCKED: "the database is locked by another connection of this process",
    sqlite3.SQLITE_READONLY: "the file, or its directory (SQLite writes -wal and -shm files "
    "beside it), is read-only; check the permissions",
    sqlite3.SQLITE_PERM: "access to the file was denied; check the permissions",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened; check that the path and its directory "
    "exist and are writable",
    sqlite3.SQLITE_FULL: "the disk (or the database's size limit) is full; free some space",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error; check the disk and the file system",
    sqlite3.SQLITE_CORRUPT: "the database file is corrupt; restore it from a backup",
    sqlite3.SQLITE_NOTADB: "the file is not a SQLite database (or it is encrypted); check the path",
}


def hint(exc: Exception) -> str:
    """What to check after the sqlite3 error ``exc``."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # misuse of the driver, not a problem with the file
        return "this is a bulkpipe bug; please report it"
    return _HINTS.get(code & 0xFF, "check the database file")
