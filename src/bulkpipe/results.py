"""What a processor hands back, made storable: results as JSON every store can hold, and error
text that cannot break recording (the runner records per item what these return)."""

from __future__ import annotations

import json
from typing import Any

from .items import encode_json


def storable_text(text: str) -> str:
    """``text`` with lone surrogates backslash-escaped and NUL written as ``\\x00``: UTF-8 (so
    every store) refuses lone surrogates, and PostgreSQL refuses NUL in text and JSON."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text


def type_name(exc: BaseException) -> str:
    """The exception's class name, storable."""
    return storable_text(type(exc).__name__)


def describe(exc: BaseException) -> str:
    """``str(exc)``, else ``repr(exc)``, else a placeholder; storable, and never raises."""
    text = ""
    try:
        text = str.__str__(str(exc)) or str.__str__(repr(exc))
    except BaseException:  # a broken __str__ or __repr__ must not stop recording
        try:
            text = str.__str__(repr(exc))
        except BaseException:
            text = ""
    return storable_text(text or f"<{type(exc).__name__} that cannot be shown>")


def encode_result(value: Any) -> str:
    """Strict, compact JSON of ``value`` that is valid UTF-8; raises whatever the encoder raises
    (TypeError, ValueError, RecursionError, an object's own error) or UnicodeEncodeError for a
    lone surrogate. The UTF-8 check is skipped for ASCII text, the common case."""
    payload = encode_json(value)
    if not payload.isascii():
        payload.encode("utf-8")
    return payload


def decode_payload(payload: str) -> Any:
    """One stored item payload (the batch decoder failed on the batch it is in)."""
    return json.loads(payload)
