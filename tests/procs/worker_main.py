"""A worker process for the multi-process tests: ``python worker_main.py STORE_URL LOG_DIR``.

It serves the store with one processor, ``sleepy``, which appends each item id it finishes to
``LOG_DIR/<pid>.log`` (so a test can count how often items ran) after sleeping ``item["ms"]``
milliseconds (an item with ``block_ms`` first blocks the event loop that long, with
``time.sleep``, as a badly written processor would). An item with ``"exit": N`` is a poison
item: after sleeping and logging, the process exits at once with code N (``os._exit``, as a
crash would). It stops gracefully on SIGTERM/SIGINT. Environment knobs: ``LEASE_TIMEOUT``,
``LOG_LEVEL`` (log at this level; default: Python's, warnings and errors to stderr),
``LOG_FILE`` (with ``LOG_LEVEL``: log to this file instead of stderr).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from bulkpipe import Worker
from bulkpipe.stores import open_store


class Sleepy:
    """Sleeps per item, then logs the item id (one line, flushed, per batch of writes)."""

    def __init__(self, log_dir: Path) -> None:
        self._log = (log_dir / f"{os.getpid()}.log").open("a", buffering=1)

    async def process(self, item: dict[str, Any]) -> dict[str, Any]:
        if "block_ms" in item:
            time.sleep(item["block_ms"] / 1000)  # noqa: ASYNC251 - blocks the loop, on purpose
        await anyio.sleep(item.get("ms", 1) / 1000)
        self._log.write(f"{item['id']}\n")
        if item.get("exit") is not None:
            os._exit(int(item["exit"]))
        return {"pid": os.getpid()}


async def main(url: str, log_dir: Path) -> None:
    worker = Worker(
        open_store(url),
        processors={"sleepy": Sleepy(log_dir)},
        lease_timeout=float(os.environ.get("LEASE_TIMEOUT", "2.0")),
        poll_interval=0.05,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(partial(worker.run, handle_signals=True))
        print("ready", flush=True)  # serving, and SIGTERM now stops it gracefully
    print("stopped", flush=True)


if __name__ == "__main__":
    if os.environ.get("LOG_LEVEL"):
        logging.basicConfig(
            level=os.environ["LOG_LEVEL"].upper(),
            filename=os.environ.get("LOG_FILE"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    anyio.run(main, sys.argv[1], Path(sys.argv[2]))
