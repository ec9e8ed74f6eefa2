"""Reading items from JSON Lines or CSV (a file or stdin), and ``--param KEY=VALUE`` pairs.

Items are streamed: a file is read as the job takes its items in, never held whole. The file
is opened (and a CSV header checked) at once, so a missing file fails before a job exists; a
line that cannot be read later fails the job, naming the file and the line.
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


def read_items(path: str, fmt: str | None, *, id_key: str) -> ItemFile:
    """Items from ``path`` (``-`` for stdin) in format ``fmt`` (None: by extension)."""
    fmt = detect_format(path, fmt)
    name = "<stdin>" if path == "-" else path
    stream = _open(path)
    owned = path != "-"
    try:
        lines = _text_lines(stream, name)
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


def _text_lines(stream: IO[Any], name: str) -> Iterator[str]:
    """The lines of ``stream`` as text, decoded one by one so an error names its line."""
    for lineno, raw in enumerate(stream, start=1):
        if isinstance(raw, str):
            line = raw
        else:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{name} line {lineno}: not UTF-8 text ({exc.reason})") from None
        yield line.removeprefix("\ufeff") if lineno == 1 else line


def _jsonl(lines: Iterator[str], name: str) -> Iterator[Any]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = _decode(line)
        except ValueError as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InputError(f"{name} line {lineno}: not valid JSON: {detail}") from None
        yield item


def _csv(lines: Iterator[str], name: str, *, id_key: str) -> Iterator[dict[str, Any]]:
    reader = csv.reader(lines)
    header = _header(reader, name, id_key)
    return _rows(reader, name, header, id_key=id_key)


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


def _rows(reader: Any, name: str, header: list[str], *, id_key: str) -> Iterator[dict[str, Any]]:
    width = len(header)
    try:
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != width:
                raise InputError(
                    f"{name} line {reader.line_num}: {len(row)} fields, the header has {width}"
                )
            yield {
                column: value if column == id_key else _cell(value)
                for column, value in zip(header, row, strict=True)
            }
    except csv.Error as exc:
        raise InputError(f"{name} line {reader.line_num}: not valid CSV: {exc}") from None


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
