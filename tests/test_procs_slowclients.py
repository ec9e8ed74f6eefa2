"""``bulkpipe serve`` against slow clients, on loopback: a real server process, raw sockets.

Slowloris (headers or a body trickling in at one byte a second) is cut off by the read
timeouts while normal requests are answered promptly; past --max-connections requests are
answered 503. Every loop here is bounded by a deadline; everything stops by itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

pytest.importorskip("uvicorn")

BULKPIPE = Path(sys.executable).with_name("bulkpipe")
ENV = {key: value for key, value in os.environ.items() if key != "BULKPIPE_STORE"}


@contextlib.contextmanager
def server(tmp_path: Path, *args: str) -> Iterator[tuple[str, int]]:
    """``bulkpipe serve`` on a free loopback port; yields (host, port)."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with subprocess.Popen(
        [str(BULKPIPE), "serve", "--port", "0", "--store", url, *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            found = None
            deadline = time.monotonic() + 30
            while found is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            assert found is not None, "the server did not start"
            # Keep reading its log so that it never blocks on a full pipe.
            drain = subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            try:
                yield "127.0.0.1", int(found.group(1))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
                drain.wait(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()


def trickle(
    address: tuple[str, int], count: int, first: bytes, drip: bytes, limit: float
) -> tuple[list[float], list[bytes]]:
    """Open ``count`` connections that send ``first`` then ``drip`` once a second; return how
    long each stayed open (``limit`` for those still open after ``limit`` seconds) and what
    each received."""
    socks: dict[socket.socket, int] = {}
    opened = time.monotonic()
    for i in range(count):
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(first)
        sock.setblocking(False)
        socks[sock] = i
    lived = [limit] * count
    got = [b""] * count
    next_drip = time.monotonic() + 1
    while socks and time.monotonic() - opened < limit:
        readable, _, _ = select.select(list(socks), [], [], 0.1)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            got[socks[sock]] += data
            if not data:
                lived[socks.pop(sock)] = time.monotonic() - opened
                sock.close()
        if time.monotonic() >= next_drip:
            next_drip += 1
            for sock in list(socks):
                with contextlib.suppress(OSError):  # closed by the server: seen on recv
                    sock.send(drip)
    for sock in socks:
        sock.close()
    return lived, got


def timed_get(url: str) -> tuple[int, float]:
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.monotonic() - began


def test_slowloris_is_cut_off_and_normal_requests_are_answered(tmp_path: Path) -> None:
    timeout = 2.0
    with server(tmp_path, "--header-timeout", str(timeout), "--body-timeout", str(timeout)) as (
        host,
        port,
    ):
        answers: list[tuple[int, float]] = []

        def meanwhile() -> None:
            for _ in range(3):
                time.sleep(0.5)
                answers.append(timed_get(f"http://{host}:{port}/jobs"))

        client = threading.Thread(target=meanwhile)
        client.start()
        try:
            lived, got = trickle(
                (host, port), 200, b"GET /jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a", 10
            )
        finally:
            client.join(timeout=30)
        body_lived, _ = trickle(
            (host, port),
            5,
            b"POST /jobs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{",
            b" ",
            10,
        )
    assert max(lived) < timeout + 1.5, sorted(lived)[-5:]  # not the 10 s they asked for
    assert min(lived) >= timeout - 0.5, sorted(lived)[:5]
    assert all(data.startswith(b"HTTP/1.1 408 ") for data in got), {d[:20] for d in got}
    assert max(body_lived) < timeout + 1.5, body_lived
    assert [status for status, _ in answers] == [200, 200, 200]
    assert max(seconds for _, seconds in answers) < 1.0, answers


def test_requests_past_max_connections_are_answered_503(tmp_path: Path) -> None:
    with server(tmp_path, "--max-connections", "5") as (host, port):
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(5)]
        try:
            status, _ = timed_get(f"http://{host}:{port}/jobs")
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        after, _ = timed_get(f"http://{host}:{port}/jobs")
    assert status == 503
    assert after == 200


def test_the_cli_defaults_are_the_servers() -> None:
    from bulkpipe.cli import serve as cli
    from bulkpipe.http import server

    assert (cli._HEADER_TIMEOUT, cli._BODY_TIMEOUT, cli._KEEP_ALIVE_TIMEOUT) == (
        server.DEFAULT_HEADER_TIMEOUT,
        server.DEFAULT_BODY_TIMEOUT,
        server.DEFAULT_KEEP_ALIVE_TIMEOUT,
    )
    assert cli._MAX_CONNECTIONS == server.DEFAULT_MAX_CONNECTIONS
