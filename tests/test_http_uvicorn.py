"""The HTTP API on a real uvicorn on 127.0.0.1: streamed events, cancel, and ``serve()``."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from bulkpipe import Pipeline
from bulkpipe.http import create_app, serve
from bulkpipe.stores import MemoryStore
from tests.helpers import PATIENCE

pytestmark = pytest.mark.subprocess


async def tick(item: dict[str, Any]) -> int:
    await anyio.sleep(0.02)
    return int(item["id"])


async def stuck(item: dict[str, Any]) -> None:
    await anyio.sleep(PATIENCE * 10)


@contextmanager
def uvicorn_in_a_thread() -> Iterator[str]:
    """A uvicorn server on a free port of 127.0.0.1 in a thread, over a running pipeline."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    servers: list[uvicorn.Server] = []
    failures: list[BaseException] = []

    async def main() -> None:
        pipeline = Pipeline(MemoryStore(), processors={"tick": tick, "stuck": stuck})
        async with pipeline:
            # log_config=None: uvicorn's records reach pytest's log capture.
            config = uvicorn.Config(
                create_app(pipeline), lifespan="off", log_config=None, log_level="info", ws="none"
            )
            servers.append(uvicorn.Server(config))
            await servers[0].serve(sockets=[sock])

    def run() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + PATIENCE
        while not (servers and servers[0].started):
            assert not failures, failures
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(PATIENCE)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"
    assert not failures, failures


def follow(client: httpx.Client, job_id: str, interval: float) -> list[tuple[float, str, Any]]:
    """Read a job's event stream to its end: (arrival time, event, data) per event."""
    seen: list[tuple[float, str, Any]] = []
    name = ""
    path = f"/jobs/{job_id}/events"
    with client.stream("GET", path, params={"interval": interval}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((time.monotonic(), name, json.loads(line.removeprefix("data: "))))
    return seen


def test_submit_follow_and_cancel_on_uvicorn(caplog: pytest.LogCaptureFixture) -> None:
    with uvicorn_in_a_thread() as url, httpx.Client(base_url=url, timeout=PATIENCE) as client:
        options = {"batch_size": 2, "concurrency": 1, "progress_interval": 0.05}
        items = [{"id": n} for n in range(20)]
        job = client.post("/jobs", json={"processor": "tick", "items": items, "options": options})
        assert job.status_code == 201, job.text
        seen = follow(client, job.json()["id"], interval=0.05)
        names = [name for _, name, _ in seen]
        assert names[-1] == "end"
        assert set(names[:-1]) == {"progress"}
        assert seen[-1][2]["status"] == "completed"
        assert seen[-1][2]["succeeded_items"] == 20
        # Streamed as the job ran (~0.4 s), not all at once at its end.
        assert len(seen) >= 3
        assert seen[-1][0] - seen[0][0] > 0.1
        assert [data["processed_items"] for _, _, data in seen] == sorted(
            data["processed_items"] for _, _, data in seen
        )

        other = client.post("/jobs", json={"processor": "stuck", "items": [{"id": 1}]}).json()
        # A client that leaves a stream early ends it on the server, without errors.
        with client.stream("GET", f"/jobs/{other['id']}/events") as response:
            first = next(response.iter_lines())
            assert first == "event: progress"
        cancelled = client.delete(f"/jobs/{other['id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert client.delete(f"/jobs/{other['id']}").status_code == 409
        assert [name for _, name, _ in follow(client, other["id"], 1.0)] == ["end"]
    assert any(r.name.startswith("uvicorn") for r in caplog.records)  # the log is captured
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.skipif(os.name == "nt", reason="sends SIGTERM")
def test_serve_runs_until_sigterm() -> None:
    port = free_port()
    code = (
        "from bulkpipe.http import serve\n"
        f"serve('memory://', host='127.0.0.1', port={port}, workers=1, log_level='warning')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=PATIENCE) as client:
            deadline = time.monotonic() + PATIENCE * 2
            while True:
                try:
                    if client.get("/jobs").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
            items = [{"id": n, "search_volume": n * 100} for n in range(50)]
            job = client.post("/jobs", json={"processor": "scoring", "items": items}).json()
            seen = follow(client, job["id"], interval=0.05)
            assert seen[-1][1] == "end"
            assert seen[-1][2]["status"] == "completed"
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=PATIENCE)
        assert process.returncode == 0, err.decode()
        assert b"Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_says_when_the_port_is_taken() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve("memory://", host="127.0.0.1", port=port)
