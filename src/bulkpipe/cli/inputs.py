"""Reading items from JSON Lines or CSV (a file or stdin), and ``--param KEY=VALUE`` pairs.

Items are streamed: a file is read as the job takes its items in, never held whole. The file
is opened (and a CSV header checked) at once, so a missing file fails before a job exists; a
line that cannot be read later fails the job, naming the file and the line.

Reading is strict, so that nothing is dropped silently: CSV is parsed with ``strict=True`` (an
unterminated quote is an error, not a field that swallows the rest of the file), and a line
longer than :data:`MAX_LINE_BYTES` is refused after reading at most that many bytes of it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

from .errors import InputError

FORMATS: Final = ("jsonl", "csv")
#: The longest line (a JSON Lines item, or a CSV row, which may span lines inside quotes)
#: read, in bytes, not counting its line break. A longer one is refused, never held whole.
MAX_LINE_BYTES: Final = 16 * 1024 * 1024
_EXTENSIONS: Final = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# A CSV cell that is a JSON number becomes a number ("007" and "1." stay strings).
_NUMBER: Final = re.compile(r"-?(?:0|[1-9]\d*)(?P<real>(?:\.\d+)?(?:[eE][-+]?\d+)?)\Z")

_decode = json.JSONDecoder().decode


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_decode_param = json.JSONDecoder(parse_constant=_no_constant).decode


def detect_format(path: str, given: str | None) -> str:
    """The format of ``path``: ``given``, else from its extension (``-``, stdin: jsonl)."""
    if given is not None:
        return given
    if path == "-":
        return "jsonl"
    found = _EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise InputError(
            f"{path}: cannot tell the format from the extension (.jsonl, .ndjson or .csv); "
            "pass --format jsonl or --format csv"
        )
    return found


class ItemFile:
    """Items read lazily from an open file (or stdin); :meth:`close` closes the file."""

    def __init__(self, stream: IO[Any], rows: Iterator[Any], *, owned: bool) -> None:
        self._stream = stream
        self._rows = rows
        self._owned = owned

    def __iter__(self) -> Iterator[Any]:
        return self._rows

    def close(self) -> None:
        """Close the file (stdin is left open)."""
        if self._owned:
            self._stream.close()


def read_items(
    path: str, fmt: str | None, *, id_key: str, max_line_bytes: int = MAX_LINE_BYTES
) -> ItemFile:
    """Items from ``path`` (``-`` for stdin) in format ``fmt`` (None: by extension)."""
    fmt = detect_format(path, fmt)
    name = "<stdin>" if path == "-" else path
    stream = _open(path)
    owned = path != "-"
    try:
        lines = _Lines(stream, name, max_line_bytes)
        rows = _jsonl(lines, name) if fmt == "jsonl" else _csv(lines, name, id_key=id_key)
    except BaseException:
        if owned:
            stream.close()
        raise
    return ItemFile(stream, rows, owned=owned)


def _open(path: str) -> IO[Any]:
    if path == "-":
        return getattr(sys.stdin, "buffer", sys.stdin)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open the items file: {exc.strerror or exc}") from exc


class _Lines:
    """The lines of a stream as text, each decoded alone so that an error names its line.

    A line is read with ``readline(limit + 1)``, so one longer than ``limit`` bytes is refused
    having read no more than that. ``record_bytes`` adds up the lines of one record (a CSV row
    may span lines inside quotes); the reader zeroes it before each record.
    """

    def __init__(self, stream: IO[Any], name: str, limit: int) -> None:
        self._readline = stream.readline
        self._name = name
        self._limit = limit
        self.lineno = 0  # lines read so far
        self.record_start = 1  # the line the current record starts on
        self.record_bytes = 0

    def start_record(self) -> None:
        """The next line read starts a new record."""
        self.record_start = self.lineno + 1
        self.record_bytes = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._readline(self._limit + 1)
        if not raw:
            raise StopIteration
        self.lineno += 1
        ends = raw[-1:] in (b"\n", "\n")
        self.record_bytes += len(raw)
        if self.record_bytes - ends > self._limit:  # line breaks inside a record count
            where = (
                f"line {self.lineno}"
                if self.record_start == self.lineno
                else f"lines {self.record_start}-{self.lineno} (one CSV row, quoted)"
            )
            raise InputError(
                f"{self._name} {where}: longer than {self._limit} bytes, the most one item may "
                "take; is a line break or a closing quote missing?"
            )
        if isinstance(raw, str):
            line = raw
        else:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{self._name} line {self.lineno}: not UTF-8 text ({exc.reason})"
                ) from None
        return line.removeprefix("\ufeff") if self.lineno == 1 else line


def _jsonl(lines: _Lines, name: str) -> Iterator[Any]:
    for line in lines:
        lines.start_record()
        if not line.strip():
            continue
        try:
            item = _decode(line)
        except ValueError as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InputError(f"{name} line {lines.lineno}: not valid JSON: {detail}") from None
        yield item


def _csv(lines: _Lines, name: str, *, id_key: str) -> Iterator[dict[str, Any]]:
    # strict: an unterminated quote is an error at the end of the file, not a last field
    # that silently swallows every line after it.
    reader = csv.reader(lines, strict=True)
    header = _header(reader, name, id_key)
    return _rows(reader, lines, name, header, id_key=id_key)


def _csv_error(lines: _Lines, name: str, exc: csv.Error) -> InputError:
    """An InputError for a CSV parse error, naming the line the bad row starts on."""
    start, end = lines.record_start, lines.lineno
    if str(exc) == "unexpected end of data":
        return InputError(
            f"{name} line {start}: not valid CSV: a quoted field opened on this line is never "
            f"closed (it runs to the end of the file, line {end}); close the quote, or double "
            'a quote inside a quoted field ("")'
        )
    where = f"line {end}" if start >= end else f"line {end} (in the row that starts on {start})"
    return InputError(f"{name} {where}: not valid CSV: {exc}")


def _header(reader: Any, name: str, id_key: str) -> list[str]:
    try:
        header: list[str] = next(reader, [])
    except csv.Error as exc:
        raise InputError(f"{name} line 1: not a readable CSV header: {exc}") from None
    if not header:
        raise InputError(f"{name}: the CSV file is empty; its first line must name the columns")
    blank = [str(i) for i, column in enumerate(header, start=1) if not column.strip()]
    if blank:
        raise InputError(f"{name} line 1: column(s) {', '.join(blank)} have no name")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise InputError(f"{name} line 1: repeated column(s) {', '.join(repeated)}")
    if id_key not in header:
        raise InputError(
            f"{name}: no {id_key!r} column (columns: {', '.join(header)}); "
            "name the column of unique item ids with --id-key"
        )
    return header


def _rows(
    reader: Any, lines: _Lines, name: str, header: list[str], *, id_key: str
) -> Iterator[dict[str, Any]]:
    width = len(header)
    while True:
        lines.start_record()
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise _csv_error(lines, name, exc) from None
        if row is None:
            return
        if not row:
            continue  # a blank line
        if len(row) != width:
            raise InputError(
                f"{name} line {lines.record_start}: {len(row)} fields, the header has {width}"
            )
        yield {
            column: value if column == id_key else _cell(value)
            for column, value in zip(header, row, strict=True)
        }


def _cell(value: str) -> Any:
    match = _NUMBER.match(value)
    if match is None:
        return value
    if not match["real"]:
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else value


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; a VALUE that is JSON is decoded, any other is a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--param {pair!r}: expected KEY=VALUE")
        if key in params:
            raise InputError(f"--param {key!r} is given twice")
        try:
            params[key] = _decode_param(text)
        except ValueError:
            params[key] = text
    return params
