"""``bulkpipe worker --max-items/--max-memory``: a real worker process recycles itself.

The processors come from a throwaway plugin (a ``.dist-info`` with an entry point, on
PYTHONPATH), as an installed package's would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from bulkpipe import JobOptions, JobStatus, Pipeline
from bulkpipe.cli.worker import EXIT_LIMIT
from bulkpipe.stores import open_store

pytestmark = pytest.mark.subprocess

BULKPIPE = Path(sys.executable).with_name("bulkpipe")

PLUGIN = '''
import os
import time

BOOT = time.time()  # new after a re-exec
_hoard = []


def counting(item):
    return {"pid": os.getpid(), "boot": BOOT}


def leaky(item):
    """A processor with a leak: keeps every item's MB forever."""
    _hoard.append(b"x" * (item["mb"] << 20))
    time.sleep(item["ms"] / 1000)
    return {"pid": os.getpid(), "boot": BOOT}
'''


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    info = site / "bulkpipe_recycle_test-0.dist-info"
    info.mkdir(parents=True)
    (site / "recycle_plugin.py").write_text(PLUGIN)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: bulkpipe-recycle-test\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[bulkpipe.processors]\ncounting = recycle_plugin:counting\nleaky = recycle_plugin:leaky\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BULKPIPE_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def submit(url: str, processor: str, items: list[dict[str, int]], **options: int) -> str:
    async def main() -> str:
        async with Pipeline(store=open_store(url), workers=0) as p:
            # Before the worker starts (and the plugin is installed for it only).
            job = await p.submit(
                processor, items, options=JobOptions(**options), allow_unserved=True
            )
            return job.id

    return anyio.run(main)


def status_and_results(url: str, job_id: str) -> tuple[JobStatus, dict[str, object]]:
    async def main() -> tuple[JobStatus, dict[str, object]]:
        async with Pipeline(store=open_store(url), workers=0) as p:
            job = await p.get(job_id)
            results: dict[str, object] = {}
            async for outcome in p.outcomes(job_id):
                assert outcome.item_id not in results, outcome.item_id
                results[outcome.item_id] = outcome.result
            return job.status, results

    return anyio.run(main)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_until_done(
    args: list[str], env: dict[str, str], url: str, job_id: str, timeout: float = 90
) -> tuple[int, str, int]:
    """Run ``bulkpipe worker ARGS`` until the job ends (or it exits); return its exit status,
    its stderr and the highest resident memory seen (bytes)."""
    peak = 0
    with subprocess.Popen(
        [str(BULKPIPE), "worker", "--store", url, "--poll-interval", "0.1", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError, IndexError, ValueError):  # it is re-executing
                    peak = max(peak, rss(proc.pid))
                if status_and_results(url, job_id)[0].is_terminal:
                    proc.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.1)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return proc.returncode, err, peak


def test_max_items_recycles_and_the_job_completes_once_per_item(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    n = 30
    job_id = submit(url, "counting", [{"id": i} for i in range(n)], batch_size=5, concurrency=1)
    code, err, _ = run_until_done(["--max-items", "10"], plugin_env, url, job_id)
    assert code == 0, err
    assert err.count("--max-items reached; serving afresh") >= 2, err
    status, results = status_and_results(url, job_id)
    assert status is JobStatus.COMPLETED
    assert sorted(results, key=int) == [str(i) for i in range(n)]


def test_max_items_with_exit_on_limit_exits_for_a_supervisor(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    job_id = submit(url, "counting", [{"id": i} for i in range(20)], batch_size=5, concurrency=1)
    code, err, _ = run_until_done(["--max-items", "5", "--exit-on-limit"], plugin_env, url, job_id)
    assert code == EXIT_LIMIT, err
    status, results = status_and_results(url, job_id)
    assert status is JobStatus.PROCESSING  # claimed nothing more after its 5 items ...
    assert len(results) == 5  # ... whose outcomes it recorded before it exited


def test_max_memory_re_executes_a_leaking_worker(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    n, mb, limit = 20, 20, 160  # 400 MB of leaks in all
    items = [{"id": i, "mb": mb, "ms": 150} for i in range(n)]
    job_id = submit(url, "leaky", items, batch_size=1, concurrency=1)
    code, err, peak = run_until_done(
        ["--max-memory", str(limit), "--lease-timeout", "1.5"], plugin_env, url, job_id
    )
    assert code == 0, err
    assert err.count("--max-memory reached; re-executing") >= 2, err
    assert peak < (limit + 100) << 20, peak / 2**20  # never near the 400 MB it leaks in all
    status, results = status_and_results(url, job_id)
    assert status is JobStatus.COMPLETED
    assert sorted(results, key=int) == [str(i) for i in range(n)]
    boots = {r["boot"] for r in results.values() if isinstance(r, dict)}
    assert len(boots) >= 3  # the items ran in three or more incarnations of the process


def test_a_stop_signal_sent_while_a_worker_starts_stops_it_gracefully(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    # As when a worker re-executes itself (--max-memory) and is sent SIGTERM before the new
    # program handles signals: the signal is blocked across exec, pending, and must stop the
    # new worker gracefully once it handles signals, not kill it nor be lost.
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    argv = [str(BULKPIPE), "worker", "--store", url, "--poll-interval", "0.1"]
    code = (
        "import os, signal, sys\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        f"os.execv({str(BULKPIPE)!r}, {argv!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=plugin_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "SIGTERM received; stopping gracefully" in done.stderr
