"""``serve``: run the job API under uvicorn (what ``bulkpipe serve`` calls)."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import anyio
import uvicorn

from ..pipeline import Pipeline
from ..stores.url import open_store
from .app import create_app
from .auth import AuthCallable
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS

__all__ = ["serve"]

log = logging.getLogger("uvicorn.error")  # so the line shows up with uvicorn's own


def serve(
    store_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 0,
    auth: AuthCallable | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    log_level: str = "info",
    graceful_timeout: int = 5,
) -> None:
    """Serve the job API of the store at ``store_url`` on ``host:port`` until SIGINT/SIGTERM.

    ``workers`` in-process workers run jobs with the installed processors (0: this server only
    submits and reads; ``bulkpipe worker`` processes do the work). On the first signal the
    server stops accepting connections, gives open requests (event streams included)
    ``graceful_timeout`` seconds, then the workers stop gracefully and the store is closed; a
    second signal stops at once.

    Raises :class:`~bulkpipe.InvalidArgument` for a bad store URL, :class:`~bulkpipe.StoreError`
    when the store cannot be opened, and :class:`OSError` when ``host:port`` cannot be bound.
    """
    store = open_store(store_url)
    pipeline = Pipeline(store, workers=workers)
    app = create_app(pipeline, auth=auth, max_body_bytes=max_body_bytes, max_items=max_items)
    config = uvicorn.Config(
        app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=graceful_timeout
    )
    with _bind(host, port) as sock:
        # uvicorn runs on asyncio only.
        end_streams = app.state.bulkpipe_end_streams
        anyio.run(_serve, sock, pipeline, config, end_streams, backend="asyncio")


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}; is it in use?"
        ) from None


async def _serve(
    sock: socket.socket,
    pipeline: Pipeline,
    config: uvicorn.Config,
    end_streams: Callable[[], None],
) -> None:
    async with pipeline:
        server = _Server(config)
        async with anyio.create_task_group() as tg:
            if threading.current_thread() is threading.main_thread():
                tg.start_soon(_stop_on_signals, server, end_streams)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _stop_on_signals(server: uvicorn.Server, end_streams: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if server.should_exit:
                server.force_exit = True
                return
            end_streams()  # or open event streams hold the shutdown up until their jobs end
            server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server, leaving signals to :func:`serve`: uvicorn re-raises a caught signal
    when it returns, which would kill the process before the workers stop gracefully."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            log.info("bulkpipe API on http://%s:%d (press CTRL+C to quit)", _url_host(host), port)
