"""``serve``: run the job API under uvicorn (what ``bulkpipe serve`` calls)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import anyio
import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import InvalidArgument
from ..pipeline import Pipeline
from ..stores.url import open_store
from .app import create_app
from .auth import AuthCallable
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS

__all__ = ["serve"]

#: Seconds a client has to send a request's headers (from connecting, or from the end of
#: the previous response on a kept-alive connection).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a client has to send a request's whole body once its headers are in.
DEFAULT_BODY_TIMEOUT = 60.0
#: Seconds an idle kept-alive connection stays open.
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
#: Connections (and requests in progress) beyond which requests are answered 503.
DEFAULT_MAX_CONNECTIONS = 1000

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
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Serve the job API of the store at ``store_url`` on ``host:port`` until SIGINT/SIGTERM.

    ``workers`` in-process workers run jobs with the installed processors (0: this server only
    submits and reads; ``bulkpipe worker`` processes do the work). On the first signal the
    server stops accepting connections, gives open requests (event streams included)
    ``graceful_timeout`` seconds, then the workers stop gracefully and the store is closed; a
    second signal stops at once.

    Slow clients: a connection that has not sent a request's headers within
    ``header_timeout`` seconds (of connecting, or of the previous response) is answered 408
    and closed, as is one that has not sent the whole body within ``body_timeout`` seconds
    of its headers (closed, without an answer); an idle kept-alive connection is closed after
    ``keep_alive_timeout`` seconds; with ``max_connections`` connections open, further
    requests are answered 503.

    Raises :class:`~bulkpipe.InvalidArgument` for a bad store URL, :class:`~bulkpipe.StoreError`
    when the store cannot be opened, and :class:`OSError` when ``host:port`` cannot be bound.
    """
    store = open_store(store_url)
    pipeline = Pipeline(store, workers=workers)
    app = create_app(pipeline, auth=auth, max_body_bytes=max_body_bytes, max_items=max_items)
    for name, value in (
        ("header_timeout", header_timeout),
        ("body_timeout", body_timeout),
        ("keep_alive_timeout", keep_alive_timeout),
    ):
        if not 0 < value < float("inf"):
            raise InvalidArgument(f"{name} must be a positive number of seconds, not {value}")
    if max_connections < 1:
        raise InvalidArgument(f"max_connections must be 1 or more, not {max_connections}")
    config = _Config(
        app,
        log_level=log_level,
        lifespan="off",
        timeout_graceful_shutdown=graceful_timeout,
        http=_SlowClientProtocol,
        timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]  # a float works
        limit_concurrency=max_connections,
    )
    config.header_timeout = header_timeout
    config.body_timeout = body_timeout
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


class _Config(uvicorn.Config):
    """uvicorn's config with the read timeouts of :class:`_SlowClientProtocol`."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    body_timeout = DEFAULT_BODY_TIMEOUT


_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 42\r\nconnection: close\r\n\r\n"
    b"the request was not sent in time; closing\n"
)


class _SlowClientProtocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines, which uvicorn lacks: a request's headers
    must be in within ``header_timeout`` and its body within ``body_timeout`` of them, however
    slowly the bytes trickle in (a byte now and then restarts no timer). One timer per
    connection, re-armed per request; nothing per byte beyond a state check."""

    config: _Config

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase: object = None
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(h11.IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._phase = None  # a new request: its headers get a fresh deadline
        self._follow()

    def _follow(self) -> None:
        """Arm, keep or drop the deadline for where the client is in its request."""
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE or state is h11.SEND_BODY:
            if self._phase is not state:
                self._arm(state)
        elif self._deadline is not None:  # the request is in: the app's turn, no deadline
            self._disarm()

    def _arm(self, phase: object) -> None:
        self._disarm()
        self._phase = phase
        timeout = self.config.header_timeout if phase is h11.IDLE else self.config.body_timeout
        self._deadline = self.loop.call_later(timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        idle = self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE
        if self._phase is h11.IDLE and idle:  # no response begun: say why before closing
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()
