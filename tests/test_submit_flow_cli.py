"""``bulkpipe submit`` prints its job's id as soon as the job exists; another shell can watch and
cancel the job while its items are still read from stdin (real processes)."""

from __future__ import annotations

import json
import queue
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import CREATED, PATIENCE
from .test_cli_subprocess import BULKPIPE, ENV, bulkpipe, lines_of

pytestmark = pytest.mark.subprocess


def test_submit_from_stdin_shows_the_job_at_once_and_stops_when_cancelled(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with subprocess.Popen(
        [str(BULKPIPE), "--store", url, "submit", "scoring", "-", "--batch-size", "1"],
        cwd=tmp_path,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as submit:
        assert submit.stdin is not None
        assert submit.stderr is not None
        try:
            for n in range(3):
                submit.stdin.write(json.dumps({"id": n}) + "\n")
            submit.stdin.flush()  # stdin stays open: the submit is still reading
            errors = lines_of(submit.stderr)
            line = ""
            while not CREATED.fullmatch(line):
                line = errors.get(timeout=PATIENCE).strip()
            job_id = line.split()[1]
            deadline = time.monotonic() + PATIENCE
            while True:
                status = bulkpipe("--store", url, "status", job_id, cwd=tmp_path)
                assert status.returncode == 0, status.stderr
                if "submitting, 3 items stored" in status.stdout:
                    break
                assert time.monotonic() < deadline, status.stdout
                time.sleep(0.05)
            listed = bulkpipe("--store", url, "list", cwd=tmp_path)
            assert "submitting, 3 items stored" in listed.stdout
            cancel = bulkpipe("--store", url, "cancel", job_id, cwd=tmp_path)
            assert cancel.returncode == 0, cancel.stderr
            # The next item's store call answers that the job is closed: the submit ends
            # although stdin is still open.
            submit.stdin.write(json.dumps({"id": 3}) + "\n")
            submit.stdin.flush()
            out, _ = submit.communicate(timeout=PATIENCE)
        finally:
            if submit.poll() is None:
                submit.kill()
    assert submit.returncode == 0
    assert out.strip() == job_id
    with pytest.raises(queue.Empty):
        errors.get(timeout=0.1)  # no error line after "created" (only the warning before)
    done = bulkpipe("--store", url, "status", job_id, "--json", cwd=tmp_path)
    job = json.loads(done.stdout)
    assert (job["status"], job["sealed"], job["total_items"]) == ("cancelled", False, 3)
