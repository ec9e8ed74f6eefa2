"""Helpers for the store-outage tests: a store wrapper that fails on demand, and a loopback
TCP proxy that can go "down" in front of a real server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from bulkpipe import StoreError
from bulkpipe.store import JobStore

#: The JobStore methods a FlakyStore forwards (open and close never fail).
_METHODS = (
    "create_job",
    "add_batch",
    "add_batches",
    "add_errors",
    "seal_job",
    "claim_batch",
    "record",
    "progress",
    "renew_leases",
    "release",
    "finish_job",
    "get_job",
    "list_jobs",
    "read_outcomes",
    "read_failed_items",
    "register_worker",
    "worker_seen",
    "unregister_worker",
    "list_workers",
)


class FlakyStore:
    """Wraps a store; while ``down`` is true every call raises :class:`StoreError`, as a
    store whose server is unreachable does: a call that starts while down never reaches the
    wrapped store, and one that ends while down loses its answer (it may have committed)."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.down = False
        self.refused = 0  # calls refused while down

    def __repr__(self) -> str:
        return f"FlakyStore({self.inner!r})"

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()


def _forward(name: str) -> Any:
    async def method(self: FlakyStore, *args: Any, **kwargs: Any) -> Any:
        if not self.down:
            result = await getattr(self.inner, name)(*args, **kwargs)
            if not self.down:
                return result
        self.refused += 1
        raise StoreError(f"flaky store: {name} failed (the server is down)")

    method.__name__ = name
    return method


for _name in _METHODS:
    setattr(FlakyStore, _name, _forward(_name))


class TcpProxy:
    """A loopback TCP proxy to ``target`` in its own threads. :meth:`go_down` closes every
    connection and refuses new ones (connections are accepted and closed at once) until
    :meth:`come_back`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def go_down(self) -> None:
        self._down.set()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def come_back(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed = True
        self.go_down()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self._down.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns -= {src, dst}
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def tcp_proxy(target: tuple[str, int]) -> Iterator[TcpProxy]:
    """A running :class:`TcpProxy`, closed on exit."""
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
