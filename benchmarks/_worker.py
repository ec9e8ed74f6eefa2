"""A worker process for ``benchmarks/stores.py``: ``python _worker.py STORE_URL``.

It serves the store with the processors the benchmark submits jobs for (``sleep10`` sleeps
10 ms per item; ``noop`` does nothing), prints ``ready`` once it is serving, and stops
gracefully on SIGTERM/SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio

from bulkpipe import Worker
from bulkpipe.stores import open_store

SLEEP_SECONDS = 0.010


async def sleep10(item: dict[str, Any]) -> None:
    """Wait 10 ms: an I/O-bound item that costs almost no CPU."""
    await anyio.sleep(SLEEP_SECONDS)


async def noop(item: dict[str, Any]) -> None:
    """Do nothing."""
    return None


async def main(url: str, poll_interval: float, lease_timeout: float) -> None:
    worker = Worker(
        open_store(url),
        processors={"sleep10": sleep10, "noop": noop},
        lease_timeout=lease_timeout,
        poll_interval=poll_interval,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(partial(worker.run, handle_signals=True))
        print("ready", flush=True)  # serving; SIGTERM now stops it gracefully


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A bulkpipe worker for benchmarks/stores.py.")
    parser.add_argument("url", help="the store URL to serve")
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--lease-timeout", type=float, default=30.0)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    anyio.run(main, args.url, args.poll_interval, args.lease_timeout, backend=args.backend)
    sys.exit(0)
