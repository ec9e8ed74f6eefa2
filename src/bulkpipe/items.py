"""Checking and encoding submitted items, a batch at a time (the edge where input is validated)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from .models import ProcessingError
from .store import EncodedItem

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode

INVALID_ITEM = "InvalidItem"


def encode_json(value: Any) -> str:
    """Compact, strict JSON (no NaN or Infinity) of ``value``; raises TypeError or ValueError."""
    return _encode(value)


def decode_payloads(items: Sequence[EncodedItem]) -> list[Any]:
    """Decode a batch of stored payloads in one parser call."""
    return _decode("[" + ",".join(payload for _, payload in items) + "]")  # type: ignore[no-any-return]


def _reject(position: int, item_id: str | None, reason: str) -> ProcessingError:
    return ProcessingError(
        item_id=item_id,
        error=f"item #{position} rejected: {reason}",
        error_type=INVALID_ITEM,
        timestamp=datetime.now(UTC),
    )


def encode_items(
    raw: Sequence[Any], id_key: str, first_position: int
) -> tuple[list[EncodedItem], list[ProcessingError]]:
    """Encode one chunk of submitted items; refuse (with a reason) the ones that are not valid.

    An item must be a mapping with a non-empty string or integer under ``id_key`` and must
    encode as strict JSON. Repeated ids are refused by the store, which knows every id.
    """
    encoded: list[EncodedItem] = []
    rejected: list[ProcessingError] = []
    position = first_position
    for item in raw:
        position += 1
        if not isinstance(item, Mapping):
            rejected.append(
                _reject(position, None, f"expected a mapping, got {type(item).__name__}")
            )
            continue
        item_id = item.get(id_key)
        if isinstance(item_id, str):
            if not item_id:
                rejected.append(_reject(position, None, f"its {id_key!r} is an empty string"))
                continue
        elif isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        else:
            reason = (
                f"it has no {id_key!r} key"
                if item_id is None
                else f"its {id_key!r} must be a string or an integer, not {type(item_id).__name__}"
            )
            rejected.append(_reject(position, None, reason))
            continue
        try:
            payload = _encode(item)
        except (TypeError, ValueError) as exc:
            rejected.append(_reject(position, item_id, f"it is not JSON-serialisable ({exc})"))
            continue
        encoded.append((item_id, payload))
    return encoded, rejected


def duplicate_errors(ids: Sequence[str], id_key: str) -> list[ProcessingError]:
    """Errors for items refused because the job already had their id."""
    now = datetime.now(UTC)
    return [
        ProcessingError(
            item_id=item_id,
            error=f"item rejected: repeated {id_key} {item_id!r}; the first item with it is kept",
            error_type=INVALID_ITEM,
            timestamp=now,
        )
        for item_id in ids
    ]


async def chunked(
    source: Iterable[Any] | AsyncIterable[Any], size: int
) -> AsyncIterator[list[Any]]:
    """Lists of up to ``size`` items from a sync or async iterable, without reading ahead."""
    if isinstance(source, AsyncIterable):
        chunk: list[Any] = []
        async for item in source:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    iterator = iter(source)
    while chunk := list(islice(iterator, size)):
        yield chunk
