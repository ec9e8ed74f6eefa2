"""A claimed batch while a worker holds it: its decoded items, the outcomes gathered so far,
and how far its lanes have got."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio

from .error_types import ErrorType
from .items import decode_payloads
from .results import decode_payload, describe, storable_text, type_name
from .store import ClaimedBatch, Lease, OutcomeRow


class OpenBatch:
    """A claimed batch while this worker holds it."""

    __slots__ = (
        "closed",
        "deadline",
        "flushed",
        "ids",
        "items",
        "lanes",
        "lease",
        "left",
        "next",
        "rows",
        "scopes",
    )

    def __init__(self, claimed: ClaimedBatch, deadline: float, abandon: str | None = None) -> None:
        """Decode the batch's items; with ``abandon``, fail every item with that message
        (BatchKeptCrashing) instead, without decoding or running any."""
        self.lease: Lease = claimed.lease
        self.rows: list[OutcomeRow] = []
        if abandon is not None:
            now = time.time()
            self.rows = [
                OutcomeRow(
                    item_id, False, None, abandon, ErrorType.BATCH_KEPT_CRASHING, 0, now, now
                )
                for item_id, _ in claimed.items
            ]
            self.ids: list[str] = []
            self.items: list[Any] = []
        else:
            self.ids = [item_id for item_id, _ in claimed.items]
            try:
                self.items = decode_payloads(claimed.items)
                readable = len(self.items) == len(self.ids)  # "1},{2" would decode as two
            except Exception:  # a bad payload, or a null one
                readable = False
            if not readable:
                self._decode_one_by_one(claimed)
        self.next = 0  # index of the next unstarted item
        self.left = len(self.items)  # items without an outcome yet
        self.flushed = 0  # rows already recorded
        self.deadline = deadline
        self.lanes = 0
        self.scopes: set[anyio.CancelScope] = set()
        self.closed = False

    def _decode_one_by_one(self, claimed: ClaimedBatch) -> None:
        """Keep the items that decode; fail the others (UnreadableItem), never running them."""
        self.ids, self.items = [], []
        for item_id, payload in claimed.items:
            try:
                item = decode_payload(payload)
            except Exception as exc:  # ValueError, TypeError, RecursionError
                now = time.time()
                message = (
                    f"the stored payload of item {item_id!r} cannot be decoded as JSON "
                    f"({type_name(exc)}: {describe(exc)}); the item was not run. The store "
                    "holds a damaged row: submit the item again in a new job"
                )
                self.rows.append(
                    OutcomeRow(
                        item_id,
                        False,
                        None,
                        storable_text(message),
                        ErrorType.UNREADABLE_ITEM,
                        0,
                        now,
                        now,
                    )
                )
                continue
            self.ids.append(item_id)
            self.items.append(item)

    @property
    def startable(self) -> bool:
        return not self.closed and self.next < len(self.items)

    def time_out(
        self, running: Sequence[int], attempts: int, started: float | None, timeout: float
    ) -> None:
        """Fail what the batch did not finish by its deadline (``timeout`` seconds after it
        was claimed): the items ``running`` when it passed and every unstarted one."""
        now = time.time()
        message = (
            f"the batch did not finish within {timeout:g} s "
            "(JobOptions.timeout); this item was not completed"
        )
        indexes = [*running, *range(self.next, len(self.items))]
        self.next = len(self.items)
        self.rows.extend(
            OutcomeRow(
                self.ids[i],
                False,
                None,
                message,
                ErrorType.BATCH_TIMEOUT,
                attempts,
                started or now,
                now,
            )
            for i in indexes
        )
        self.left -= len(indexes)
