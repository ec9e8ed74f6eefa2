"""Strict, bounded reading of item files (issue 13, findings 7 and 8).

A CSV row with an unterminated quote used to swallow the rest of the file silently (the job got
the rows before it and the command exited 0); a line with no end was read whole into memory
before it was refused. Now both are errors naming the line, exit 2, and a long line is refused
after reading at most ``MAX_LINE_BYTES`` of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bulkpipe.cli import cli
from bulkpipe.cli.errors import InputError
from bulkpipe.cli.inputs import MAX_LINE_BYTES, read_items

from .helpers import CREATED
from .test_cli_subprocess import BULKPIPE, ENV


def invoke(*args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_error_line(result: Result | subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The command exited 2 with exactly one ``bulkpipe: error:`` line holding ``fragments``."""
    code = result.exit_code if isinstance(result, Result) else result.returncode
    assert code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not CREATED.fullmatch(line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bulkpipe: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def csv_file(path: Path, bad_row: str | None = None, rows: int = 1000) -> Path:
    """A CSV of ``rows`` items (``id,v``), with row 2 (line 3) replaced by ``bad_row``."""
    lines = ["id,v", *(f"{n},x{n}" for n in range(1, rows + 1))]
    if bad_row is not None:
        lines[2] = bad_row
    path.write_text("\n".join(lines) + "\n")
    return path


def items_of(path: Path, fmt: str | None = None, **kwargs: Any) -> list[Any]:
    items = read_items(str(path), fmt, id_key="id", **kwargs)
    try:
        return list(items)
    finally:
        items.close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BULKPIPE_STORE", raising=False)


# --- CSV is strict --------------------------------------------------------------------------


@pytest.mark.parametrize("wait", [True, False])
def test_an_unterminated_quote_fails_the_submit_naming_its_line(tmp_path: Path, wait: bool) -> None:
    path = csv_file(tmp_path / "items.csv", '2,"unbalanced')
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = invoke("submit", "scoring", str(path), *(["--wait"] if wait else []), "--store", store)
    one_error_line(result, "items.csv line 3: not valid CSV", "never closed", "was marked failed")


def test_a_stray_quote_after_a_quoted_field_is_an_error(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "items.csv", '2,"quoted"tail')
    with pytest.raises(InputError, match=r"items.csv line 3: not valid CSV: ',' expected"):
        items_of(path)


def test_quoted_fields_may_still_hold_line_breaks_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text('id,v\n1,"two\nlines"\n2,"say ""hi"""\n3,plain\n')
    assert items_of(path) == [
        {"id": "1", "v": "two\nlines"},
        {"id": "2", "v": 'say "hi"'},
        {"id": "3", "v": "plain"},
    ]


def test_a_field_count_error_names_the_line_its_row_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text('id,v\n1,"two\nlines",extra\n')
    with pytest.raises(InputError, match="line 2: 3 fields, the header has 2"):
        items_of(path)


def test_a_good_thousand_row_csv_gives_a_thousand_items(tmp_path: Path) -> None:
    assert len(items_of(csv_file(tmp_path / "items.csv"))) == 1000


# --- lines are bounded ------------------------------------------------------------------------


def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    line = json.dumps({"id": "a", "v": "x" * 100})
    limit = len(line.encode())
    path = tmp_path / "items.jsonl"
    path.write_text(f"{line}\n{line}\r\n{line}")  # a CRLF line counts its \r
    with pytest.raises(InputError, match=f"items.jsonl line 2: longer than {limit} bytes"):
        items_of(path, max_line_bytes=limit)
    path.write_text(f"{line}\n{line}")
    assert len(items_of(path, max_line_bytes=limit)) == 2
    path.write_text(f'{line}\n{line[:-1]}é"')
    with pytest.raises(InputError, match="line 2: longer than"):
        items_of(path, max_line_bytes=limit)


def test_a_csv_row_spanning_lines_counts_all_of_them(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text('id,v\n1,"' + "x\n" * 60 + '"\n2,short\n')
    with pytest.raises(InputError, match=r"items.csv lines 2-5\d \(one CSV row, quoted\)"):
        items_of(path, max_line_bytes=100)
    assert len(items_of(path, max_line_bytes=200)) == 2


def test_an_unterminated_quote_is_stopped_by_the_line_limit(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text('id,v\n1,"open\n' + "2,more\n" * 1000)
    with pytest.raises(InputError, match="lines 2-"):
        items_of(path, max_line_bytes=1000)


def test_the_cli_refuses_a_line_over_the_documented_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text('{"id": "ok"}\n' + '{"id": "big", "v": "' + "x" * MAX_LINE_BYTES + '"}\n')
    result = invoke("submit", "scoring", str(path), "--wait", "--store", "memory://")
    one_error_line(result, f"big.jsonl line 2: longer than {MAX_LINE_BYTES} bytes")


# --- the real console script ----------------------------------------------------------------

_PEAK = textwrap.dedent(
    """
    import resource, subprocess, sys
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sys.stdout.write(f"{done.returncode}\\n{peak}\\n")
    sys.stderr.write(done.stderr)
    """
)


def run_measured(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """``bulkpipe ARGS`` in its own process; its result and peak RSS in KiB."""
    watcher = subprocess.run(
        [sys.executable, "-c", _PEAK, str(BULKPIPE), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    code, peak = watcher.stdout.split()
    result = subprocess.CompletedProcess(args, int(code), "", watcher.stderr)
    return result, int(peak)


def write_without_newline(path: Path, size: int) -> None:
    """One JSON Lines "line" of ``size`` bytes and no line break."""
    chunk = b"x" * (1 << 20)
    with path.open("wb") as out:
        out.write(b'{"id": "a", "v": "')
        for _ in range(size // len(chunk)):
            out.write(chunk)


@pytest.mark.subprocess
def test_console_script_refuses_a_huge_line_in_bounded_memory(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    small = tmp_path / "small.jsonl"
    small.write_text('{"id": "a"}\n{"id": \n')
    base, base_peak = run_measured("submit", "scoring", str(small), "--store", store, cwd=tmp_path)
    one_error_line(base, "small.jsonl line 2: not valid JSON")
    huge = tmp_path / "huge.jsonl"
    size = 8 * MAX_LINE_BYTES  # 128 MiB with no line break: the old reader held it whole, twice
    write_without_newline(huge, size)
    try:
        result, peak = run_measured("submit", "scoring", str(huge), "--store", store, cwd=tmp_path)
    finally:
        huge.unlink()
    one_error_line(result, f"huge.jsonl line 1: longer than {MAX_LINE_BYTES} bytes")
    grown_mib = (peak - base_peak) / 1024
    assert grown_mib < 3 * MAX_LINE_BYTES / (1 << 20), (base_peak, peak)


@pytest.mark.subprocess
def test_console_script_fails_on_an_unterminated_csv_quote(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "items.csv", '2,"unbalanced')
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    result, _ = run_measured("submit", "scoring", str(path), "--store", store, cwd=tmp_path)
    one_error_line(result, "items.csv line 3", "never closed")
    listed = subprocess.run(
        [str(BULKPIPE), "list", "--json", "--store", store],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [job] = json.loads(listed.stdout)
    assert job["status"] == "failed"


def test_jsonl_items_that_are_not_utf8_text_are_refused_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "ok"}\n{"id": "bad\\udc80"}\n{"id": "nul\\u0000"}\n{"id": "fine"}\n')
    result = invoke("submit", "scoring", str(path), "--wait", "--json", "--store", "memory://")
    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["total_items"], job["rejected_items"]) == (2, 2)
