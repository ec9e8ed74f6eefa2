"""The README's example runs as written (docs that do not run rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.subprocess


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_the_readme_example_runs(tmp_path: Path) -> None:
    [example] = python_blocks(ROOT / "README.md")
    script = tmp_path / "example.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("completed total=3000 succeeded=3000"), done.stdout


def test_the_quickstart_first_job_runs(tmp_path: Path) -> None:
    first = python_blocks(ROOT / "docs" / "quickstart.md")[0]
    script = tmp_path / "first_job.py"
    script.write_text(first)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
