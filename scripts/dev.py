#!/usr/bin/env python3
"""Set up ``.venv`` and run a task: ``python3 scripts/dev.py demo`` (or ``test``).

Needs only Python 3.11+ on the machine; everything else is installed into ``.venv``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"


def run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs before the venv exists
        sys.exit(f"bulkpipe needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(digest)


def main() -> None:
    tasks = {"demo", "test", "lint", "setup"}
    task = sys.argv[1] if len(sys.argv) > 1 else ""
    if task not in tasks:
        sys.exit(f"usage: python3 scripts/dev.py {{{'|'.join(sorted(tasks))}}} [args...]")
    ensure_venv()
    extra = sys.argv[2:]
    try:
        if task == "demo":
            run(BIN / "bulkpipe", "demo", *extra)
        elif task in ("test", "lint"):
            run(BIN / "ruff", "check", "src", "tests", "benchmarks", "scripts")
            run(BIN / "mypy")
            if task == "test":
                run(BIN / "python", "-m", "pytest", *extra)
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)


if __name__ == "__main__":
    main()
