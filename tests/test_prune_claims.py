"""A prune on PostgreSQL never holds up a worker's claims from another job for long: the
acceptance run of ``benchmarks/prune.py`` (100 jobs of 1,000 items pruned while a claimer
claims from a live job), asserting that no claim during the prune took over 1.5 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import POSTGRES_URL, postgres_or_skip

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "prune.py"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.subprocess
def test_claims_are_never_delayed_long_by_a_prune() -> None:
    postgres_or_skip()
    args = [sys.executable, str(BENCHMARK), "--json", "--postgres-url", POSTGRES_URL]
    done = subprocess.run(
        [*args, "--jobs", "100", "--items", "1000", "--baseline", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["pruned_jobs"] == 100
    during = figures["during_prune"]
    assert during["claims"] > 0, figures
    assert during["max"] < 1.5, figures
