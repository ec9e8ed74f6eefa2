"""A throwaway PostgreSQL cluster for tests that crash the server: :func:`throwaway_cluster`.

Such tests must never touch the shared server that other tests use, so each gets its own
cluster: ``initdb`` into a temporary directory, owned by and run as the ``postgres`` OS user
when the tests run as root (PostgreSQL refuses to run as root), listening on a free loopback
port with its unix socket in the same directory, trust auth; stopped and removed at the end.
Where that cannot be done the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"a throwaway PostgreSQL cluster is needed in CI, but {reason}")
    pytest.skip(f"no throwaway PostgreSQL cluster: {reason}")


def _bin_dir() -> Path | None:
    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One running throwaway cluster; :attr:`url` reaches its ``postgres`` database."""

    def __init__(self, root: Path, bin_dir: Path, run_as: list[str]) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.bin = bin_dir
        self.run_as = run_as
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self.run_as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}"
                f"\n--- server log ---\n{self.server_log()}"
            )

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args)

    def server_log(self, tail: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return "(no server log)"

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "50",
            # A server crash (not an OS crash) keeps what was written to the OS: no need to
            # wait for the disk, which the machine shares with other tests.
            "fsync": "off",
            "restart_after_crash": "on",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))

    def start(self) -> None:
        self._pg_ctl("start")
        self.wait_ready()

    def restart_immediately(self) -> None:
        """``pg_ctl restart -m immediate``: a crash of the server, then crash recovery."""
        self._pg_ctl("-m", "immediate", "restart")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._pg_ctl("-m", "immediate", "stop")
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():  # pg_ctl failed: end the postmaster we started, by its pid
            with contextlib.suppress(Exception):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server accepts connections (after a start or a crash restart)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection, waiting for the server if it is restarting."""
        self.wait_ready()
        return psycopg.connect(self.url, autocommit=True, connect_timeout=5)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A fresh cluster for the duration of the block (skip, or fail in CI, if impossible)."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        _unavailable("initdb and pg_ctl were not found (is the PostgreSQL server installed?)")
        raise AssertionError("unreachable")
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' OS user to run the server")
        runuser = shutil.which("runuser")
        if runuser is None:
            _unavailable("running as root and runuser is missing")
        run_as = [str(runuser), "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="bulkpipe-pgcrash-"))
    cluster = Cluster(root, bin_dir, run_as)
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        try:
            cluster.init()
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
            _unavailable(f"the cluster did not start: {exc}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
