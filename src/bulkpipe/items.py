"""Checking and encoding submitted items, a batch at a time (the edge where input is validated)."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from types import AsyncGeneratorType, GeneratorType
from typing import Any

import anyio

from .error_types import ErrorType
from .models import ProcessingError
from .store import EncodedItem

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode

#: The longest item id accepted, in bytes of UTF-8 (so 1,000 ASCII characters). Every store
#: indexes ids; PostgreSQL's btree refuses keys of more than about 2,700 bytes.
MAX_ID_BYTES = 1000
# An integer of more bits than this has more than MAX_ID_BYTES digits (str() would be slow).
_MAX_INT_ID_BITS = 3400


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
        error_type=ErrorType.INVALID_ITEM,
        timestamp=datetime.now(UTC),
    )


class IdType:
    """The type of one job's ids, string or integer, fixed by its first accepted item and
    kept by the submitter across chunks (and calls), so that ``1`` and ``"1"`` (stored alike,
    as the text ``1``) never both name items of the job."""

    __slots__ = ("first", "integer")

    def __init__(self) -> None:
        #: Whether the job's ids are integers (None until the first item is accepted).
        self.integer: bool | None = None
        #: The first accepted id, as stored (for messages).
        self.first = ""


def encode_items(
    raw: Sequence[Any], id_key: str, first_position: int, ids: IdType | None = None
) -> tuple[list[EncodedItem], list[ProcessingError]]:
    """Encode one chunk of submitted items; refuse (with a reason) the ones that are not valid.

    An item must be a mapping with a non-empty string or integer (not a bool) under
    ``id_key`` and must encode as strict JSON that is valid UTF-8 text (no lone surrogate).
    The id must hold no NUL and be at most :data:`MAX_ID_BYTES` bytes of UTF-8, and be of the
    type of the job's other ids (``ids``: fixed by the first item accepted; a fresh one when
    None). An integer id is stored as its decimal text. Repeated ids are refused by the store,
    which knows every id.
    """
    encoded: list[EncodedItem] = []
    rejected: list[ProcessingError] = []
    position = first_position
    ids = ids or IdType()
    integer = ids.integer
    for item in raw:
        position += 1
        if not isinstance(item, Mapping):
            rejected.append(
                _reject(position, None, f"expected a mapping, got {type(item).__name__}")
            )
            continue
        item_id = item.get(id_key)
        is_int = False
        if isinstance(item_id, str):
            # The common id (short ASCII text) is settled by the first three cheap tests.
            if not (item_id.isascii() and 0 < len(item_id) <= MAX_ID_BYTES) or "\0" in item_id:
                problem = _id_problem(item_id)
                if problem is not None:
                    rejected.append(_reject(position, None, f"its {id_key!r} {problem}"))
                    continue
        elif isinstance(item_id, int) and not isinstance(item_id, bool):
            if item_id.bit_length() > _MAX_INT_ID_BITS:
                reason = f"its {id_key!r} is an integer of more than {MAX_ID_BYTES} digits"
                rejected.append(_reject(position, None, reason))
                continue
            item_id = str(item_id)
            if len(item_id) > MAX_ID_BYTES:
                reason = f"its {id_key!r} is an integer of more than {MAX_ID_BYTES} digits"
                rejected.append(_reject(position, None, reason))
                continue
            is_int = True
        else:
            reason = (
                f"it has no {id_key!r} key"
                if item_id is None
                else f"its {id_key!r} must be a string or an integer, not {type(item_id).__name__}"
            )
            rejected.append(_reject(position, None, reason))
            continue
        if is_int is not integer and integer is not None:
            rejected.append(_reject(position, None, _mixed(id_key, item_id, is_int, ids)))
            continue
        try:
            payload = _encode(item)
        except (TypeError, ValueError) as exc:
            rejected.append(_reject(position, item_id, f"it is not JSON-serialisable ({exc})"))
            continue
        if not payload.isascii():  # isascii() is O(1) on str; only non-ASCII text is checked
            try:
                payload.encode("utf-8")
            except UnicodeEncodeError as exc:
                reason = (
                    f"it is not valid UTF-8 text: {payload[exc.start : exc.end]!r} at index "
                    f"{exc.start} of its JSON is a lone surrogate"
                )
                rejected.append(_reject(position, item_id, reason))
                continue
        encoded.append((item_id, payload))
        if integer is None:  # the first item accepted fixes the type of the job's ids
            integer = ids.integer = is_int
            ids.first = item_id
    return encoded, rejected


def _mixed(id_key: str, item_id: str, is_int: bool, ids: IdType) -> str:
    """Why an id of the other type than the job's is refused (the words follow "item #n")."""
    if is_int:
        return (
            f"its {id_key!r} {item_id} is an integer but this job's ids are strings (the "
            f"first: {_shown(ids.first)}); give every item an id of the same type"
        )
    return (
        f"its {id_key!r} {_shown(item_id)} is a string but this job's ids are integers (the "
        f"first: {ids.first}); give every item an id of the same type"
    )


def _id_problem(item_id: str) -> str | None:
    """Why a string id cannot be stored, or None if it can (the words follow "its 'id'")."""
    if not item_id:
        return "is an empty string"
    if item_id.isascii():
        size = len(item_id)
    else:
        try:
            size = len(item_id.encode("utf-8"))
        except UnicodeEncodeError as exc:
            return (
                f"{_shown(item_id)} is not valid UTF-8 text: {item_id[exc.start : exc.end]!r} "
                f"at index {exc.start} is a lone surrogate"
            )
    if size > MAX_ID_BYTES:
        return (
            f"{_shown(item_id)} is {size} bytes long in UTF-8; ids may be at most "
            f"{MAX_ID_BYTES} bytes"
        )
    if "\0" in item_id:
        return f"{_shown(item_id)} holds a NUL character (\\x00), which ids may not"
    return None


def _shown(item_id: str) -> str:
    """The id as a Python literal (surrogates and NUL escaped), cut short if long."""
    return repr(item_id) if len(item_id) <= 60 else f"{item_id[:40]!r}... ({len(item_id)} chars)"


def duplicate_errors(
    ids: Sequence[str], id_key: str, *, integer: bool = False
) -> list[ProcessingError]:
    """Errors for items refused because the job already had their id (``integer``: the job's
    ids are integers, shown as such)."""
    now = datetime.now(UTC)
    return [
        ProcessingError(
            item_id=item_id,
            error=f"item rejected: repeated {id_key} {item_id if integer else repr(item_id)}; "
            "the first item with it is kept",
            error_type=ErrorType.INVALID_ITEM,
            timestamp=now,
        )
        for item_id in ids
    ]


class ChunkReader:
    """Reads a sync or async iterable of items a chunk (a list of up to ``size``) at a time,
    without reading ahead, and closes it.

    Lists and tuples are read directly. Any other sync iterable (a file, stdin, a generator)
    is read in a worker thread, one chunk per thread call, through a limiter of its own (so
    it does not take the default thread pool), so that a source that blocks never blocks the
    event loop. A read cancelled while its thread runs leaves that thread to finish the chunk.
    """

    def __init__(self, source: Iterable[Any] | AsyncIterable[Any], size: int) -> None:
        self.size = size
        self._async: AsyncIterator[Any] | None = None
        self._sync: Iterator[Any] = iter(())
        self._direct = isinstance(source, (list, tuple))
        if isinstance(source, AsyncIterable):
            self._async = aiter(source)
        else:
            self._sync = iter(source)
        self._limiter = anyio.CapacityLimiter(1)
        self._lock = threading.Lock()
        self._reading = False  # a thread is reading a chunk (it closes the source if asked)
        self._closed = False

    async def read(self) -> list[Any]:
        """The next chunk; [] once the source has no more items."""
        if self._async is not None:
            chunk: list[Any] = []
            while len(chunk) < self.size:
                try:
                    chunk.append(await anext(self._async))
                except StopAsyncIteration:
                    break
            return chunk
        if self._direct:
            return list(islice(self._sync, self.size))
        return await anyio.to_thread.run_sync(
            self._read_in_thread, limiter=self._limiter, abandon_on_cancel=True
        )

    def _read_in_thread(self) -> list[Any]:
        with self._lock:
            if self._closed:
                return []
            self._reading = True
        try:
            return list(islice(self._sync, self.size))
        finally:
            with self._lock:
                self._reading = False
                close = self._closed
            if close:  # closed while this thread read: close the source now
                self._close_sync()

    async def aclose(self) -> None:
        """Close the source if it is a generator: ``aclose()`` an async one (shielded), and
        ``close()`` a sync one once no thread is reading it (else that thread closes it when
        its chunk is read). Other iterables are left as they are."""
        if self._async is not None:
            if isinstance(self._async, AsyncGeneratorType):
                with anyio.CancelScope(shield=True):
                    await self._async.aclose()
            return
        with self._lock:
            self._closed = True
            if self._reading:
                return
        self._close_sync()

    def _close_sync(self) -> None:
        if isinstance(self._sync, GeneratorType):
            self._sync.close()
