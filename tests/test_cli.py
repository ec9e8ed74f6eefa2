"""The ``bulkpipe`` command line through click's CliRunner: every command, its output and its
exit codes, on memory:// where one command is enough and on SQL stores across commands."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from pydantic import ValidationError

from bulkpipe import Job, JobStatus, PermanentError, Pipeline
from bulkpipe.cli import cli
from bulkpipe.cli.errors import InputError, redact, validation_message
from bulkpipe.cli.inputs import parse_params, read_items
from bulkpipe.cli.render import JobProgress, summary_line
from bulkpipe.demo import generate_nodes
from bulkpipe.options import JobOptions
from bulkpipe.stores import open_store

from .helpers import CREATED

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"
COMMANDS = {
    "cancel",
    "db",
    "delete",
    "demo",
    "list",
    "processors",
    "prune",
    "results",
    "retry",
    "serve",
    "status",
    "submit",
    "watch",
    "worker",
    "workers",
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in a temporary directory (the default store is ./bulkpipe.db), with no store env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BULKPIPE_STORE", raising=False)


def invoke(*args: str, input: str | None = None) -> Result:
    """Run ``bulkpipe ARGS``; a bug (any exception but an exit) fails the test with it."""
    result = CliRunner().invoke(cli, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(*args: str, input: str | None = None) -> Result:
    """Run ``bulkpipe ARGS`` and check it exits 0."""
    result = invoke(*args, input=input)
    assert result.exit_code == 0, result.stderr
    return result


def assert_one_error_line(result: Result, *fragments: str) -> str:
    """The command exited 2 with exactly one ``bulkpipe: error:`` line on stderr."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not CREATED.fullmatch(line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bulkpipe: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def write_nodes(path: Path, count: int) -> Path:
    """``count`` demo nodes as JSON Lines at ``path``."""
    path.write_text("".join(json.dumps(node) + "\n" for node in generate_nodes(count)))
    return path


@pytest.fixture
def nodes(tmp_path: Path) -> Path:
    """A JSON Lines file of 120 nodes."""
    return write_nodes(tmp_path / "nodes.jsonl", 120)


def a_job(text: str) -> Job:
    """A job printed with --json."""
    return Job.model_validate_json(text)


# --- the group ------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    out = ok("--help").stdout
    for command in COMMANDS:
        assert f"  {command} " in out
    for command in COMMANDS - {"db"}:
        assert "Usage: " in ok(command, "--help").stdout
    assert "upgrade" in ok("db", "--help").stdout


def test_version() -> None:
    assert ok("--version").stdout.startswith("bulkpipe, version ")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["--bogus", "list"], "--bogus"),
        (["submit", "scoring", "x.jsonl", "--bogus"], "No such option '--bogus'"),
        (["status"], "Missing argument 'JOB'"),
        (["list", "--status", "weird"], "'weird' is not one of"),
        (["list", "--limit", "0"], "--limit"),
        (["demo", "--latency", "nan"], "--latency"),
        (["worker", "--lease-timeout", "0"], "--lease-timeout"),
        (["results", "j", "--json", "--format", "csv"], "--json and --format csv"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    line = assert_one_error_line(invoke(*args), fragment)
    assert "--help" in line


# --- one command on memory:// ---------------------------------------------------------------


def test_submit_wait_prints_the_id_and_exits_0(nodes: Path) -> None:
    result = ok("submit", "scoring", str(nodes), "--wait", "--store", "memory://")
    job_id = result.stdout.strip()
    assert len(job_id) == 32
    assert f"job {job_id} completed: 120 items, 120 succeeded" in result.stderr
    assert "━" not in result.stderr  # no progress bar: stderr is not a terminal


def test_submit_wait_json_reports_the_final_job(nodes: Path) -> None:
    result = ok(
        "--store",
        "memory://",
        "submit",
        "scoring",
        str(nodes),
        "--wait",
        "--json",
        "--batch-size",
        "7",
        "--workers",
        "2",
        "--priority",
        "3",
        "--owner",
        "team-a",
    )
    job = a_job(result.stdout)
    assert job.status is JobStatus.COMPLETED
    assert (job.total_items, job.succeeded_items) == (120, 120)
    assert (job.options.batch_size, job.priority, job.owner) == (7, 3, "team-a")
    assert result.stderr == f"job {job.id} created\n"


def test_submit_from_stdin_and_csv(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"id": f"n{i}", "name": "x"}) + "\n" for i in range(5))
    job = a_job(
        ok("submit", "scoring", "-", "--wait", "--json", "--store", "memory://", input=lines).stdout
    )
    assert job.succeeded_items == 5
    table = tmp_path / "items.data"
    table.write_text("key,search_volume\n001,10\n002,20\n")
    result = ok(
        "submit", "scoring", str(table), "--format", "csv", "--id-key", "key",
        "--wait", "--json", "--store", "memory://",
    )  # fmt: skip
    assert a_job(result.stdout).succeeded_items == 2


def test_submit_from_an_installed_source() -> None:
    result = ok(
        "submit", "scoring", "--source", "project_nodes", "--param", "project_id=acme",
        "--param", "count=40", "--wait", "--json", "--store", "memory://",
    )  # fmt: skip
    job = a_job(result.stdout)
    assert (job.source, job.params, job.total_items) == (
        "project_nodes",
        {"project_id": "acme", "count": 40},
        40,
    )


def test_list_and_db_upgrade_on_memory() -> None:
    assert ok("list", "--store", "memory://").stderr.strip() == "no jobs"
    assert json.loads(ok("list", "--json", "--store", "memory://").stdout) == []
    upgraded = json.loads(ok("db", "upgrade", "--json", "--store", "memory://").stdout)
    assert upgraded == {"store": "memory://", "schema_version": None}
    assert "is ready" in ok("db", "upgrade", "--store", "memory://").stdout


def test_db_upgrade_reports_the_schema_version_of_a_sql_store(store_url: str) -> None:
    from bulkpipe.stores._sql import load_migrations

    dialect = "postgres" if store_url.startswith("postgresql") else "sqlite"
    latest = load_migrations(dialect, "x_")[-1][0]
    upgraded = json.loads(ok("db", "upgrade", "--json", "--store", store_url).stdout)
    assert upgraded["schema_version"] == latest
    assert f"schema version {latest}" in ok("db", "upgrade", "--store", store_url).stdout


def test_processors_lists_the_entry_points() -> None:
    found = json.loads(ok("processors", "--json").stdout)
    names = {entry["name"]: entry["target"] for entry in found["processors"]}
    assert names["scoring"] == "bulkpipe.demo.processors:OpportunityScorer"
    assert {"full_analysis", "revenue"} <= set(names)
    assert [entry["name"] for entry in found["sources"]] == ["project_nodes"]
    out = ok("processors").stdout
    assert "scoring" in out
    assert "project_nodes" in out


def test_demo_small_on_memory() -> None:
    args = ["demo", "--nodes", "200", "--latency", "0", "--retry-delay", "0"]
    out = ok(*args, "--store", "memory://").stdout
    assert "status        completed" in out
    assert "Top 10 opportunities" in out
    report = json.loads(ok(*args, "--json", "--store", "memory://").stdout)
    assert report["job"]["status"] == "completed"
    assert len(report["top"]) == 10


def test_demo_bad_options_name_the_flag() -> None:
    assert_one_error_line(invoke("demo", "--batch-size", "1000000"), "--batch-size")
    assert_one_error_line(invoke("demo", "--failure-rate", "1.5"), "--failure-rate")


def test_demo_acceptance_on_the_default_sqlite_store(tmp_path: Path) -> None:
    report = json.loads(ok("demo", "--json").stdout)  # 3,000 nodes, 20 ms, 5 % failures
    summary = report["job"]["result"]
    assert report["job"]["status"] == "completed"
    assert summary["total"] == 3000
    assert summary["success_rate"] >= 99.9
    assert summary["duration"] < 2.0
    assert (tmp_path / "bulkpipe.db").exists()


# --- across commands, on SQL stores ---------------------------------------------------------


def failing_job(url: str, count: int = 10) -> str:
    """A completed ``scoring`` job on ``url`` whose odd-numbered items failed."""

    def flaky(item: dict[str, Any]) -> dict[str, Any]:
        if item["id"] % 2:
            raise PermanentError("odd items fail")
        return {"ok": item["id"]}

    async def run() -> str:
        async with Pipeline(store=open_store(url), processors={"scoring": flaky}) as pipeline:
            job = await pipeline.submit(
                "scoring", [{"id": i} for i in range(count)], options={"batch_size": 4}
            )
            return (await pipeline.wait(job.id, timeout=30)).id

    return anyio.run(run)


def test_every_job_command_across_processes_of_one_store(store_url: str, nodes: Path) -> None:
    store = ["--store", store_url]
    failed = failing_job(store_url)

    pending = ok("submit", "scoring", str(nodes), "--owner", "ops", *store).stdout.strip()
    shown = ok("status", pending, *store).stdout
    assert "pending" in shown
    assert "120 items" in shown
    assert a_job(ok("status", pending, "--json", *store).stdout).total_items == 120

    listed = json.loads(ok("list", "--json", *store).stdout)
    assert [job["id"] for job in listed] == [pending, failed]
    only = json.loads(ok("list", "--json", "--status", "pending", "--owner", "ops", *store).stdout)
    assert [job["id"] for job in only] == [pending]
    assert pending in ok("list", "--limit", "1", *store).stdout

    cancelled = ok("cancel", pending, *store)
    assert f"cancelled job {pending}" in cancelled.stdout
    assert_one_error_line(invoke("cancel", pending, *store), "already cancelled")
    watched = invoke("watch", pending, *store)
    assert watched.exit_code == 1
    assert f"job {pending} cancelled" in watched.stdout

    rows = [json.loads(line) for line in ok("results", failed, *store).stdout.splitlines()]
    assert len(rows) == 10
    bad = ok("results", failed, "--failed", "--format", "csv", *store).stdout
    records = list(csv.DictReader(io.StringIO(bad)))
    assert sorted(int(r["item_id"]) for r in records) == [1, 3, 5, 7, 9]
    assert {r["error_type"] for r in records} == {"PermanentError"}
    good = ok("results", failed, "--succeeded", "--json", *store).stdout.splitlines()
    assert {json.loads(line)["result"]["ok"] for line in good} == {0, 2, 4, 6, 8}
    assert "odd items fail" in ok("status", failed, *store).stdout

    retried = a_job(ok("retry", failed, "--wait", "--json", *store).stdout)
    assert retried.retry_of == failed
    assert (retried.status, retried.total_items, retried.failed_items) == (
        JobStatus.COMPLETED,
        5,
        0,
    )
    assert ok("watch", retried.id, "--json", *store).stdout.count("\n") >= 1
    assert_one_error_line(invoke("retry", retried.id, *store), "nothing to retry")
    assert "is ready" in ok("db", "upgrade", *store).stdout


def test_submit_without_wait_leaves_the_job_for_a_worker(tmp_path: Path, nodes: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = ok("submit", "nobody_has_this", str(nodes), "--allow-unserved", "--store", url)
    assert "no processor 'nobody_has_this' is installed here" in result.stderr
    job = a_job(ok("status", result.stdout.strip(), "--json", "--store", url).stdout)
    assert job.status is JobStatus.PENDING


def test_the_store_comes_from_the_option_the_env_or_the_default(
    tmp_path: Path, nodes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = ok("submit", "scoring", str(nodes), "--wait").stdout.strip()
    assert (tmp_path / "bulkpipe.db").exists()
    ok("status", job_id)
    monkeypatch.setenv("BULKPIPE_STORE", f"sqlite:///{tmp_path / 'other.db'}")
    assert_one_error_line(invoke("status", job_id), "not found")
    ok("status", job_id, "--store", "sqlite:///bulkpipe.db")  # the command's option wins
    ok("--store", "sqlite:///bulkpipe.db", "status", job_id)


# --- mistakes: one line, exit 2 -------------------------------------------------------------


@pytest.mark.parametrize(
    "store", ["memory://", "sqlite:///jobs.db", UNREACHABLE, "nonsense", "sqlite:////no/dir/x.db"]
)
def test_unknown_job_or_unusable_store(store: str) -> None:
    assert_one_error_line(invoke("status", "no-such-job", "--store", store))


def test_unreachable_database_names_the_store() -> None:
    for args in (["list"], ["db", "upgrade"], ["submit", "scoring", "--source", "project_nodes"]):
        assert_one_error_line(invoke(*args, "--store", UNREACHABLE), "127.0.0.1")


@pytest.mark.parametrize(
    ("content", "name", "fragment"),
    [
        (None, "missing.jsonl", "missing.jsonl: cannot open"),
        ("", "items.txt", "--format"),
        ('{"id": 1}\n{"id": 2\n', "bad.jsonl", "bad.jsonl line 2: not valid JSON"),
        ("a,b\n1,2\n", "noid.csv", "no 'id' column"),
        ("id,a\n1,2\n3\n", "short.csv", "short.csv line 3: 1 fields, the header has 2"),
        ("", "empty.csv", "empty"),
    ],
)
def test_bad_item_files(tmp_path: Path, content: str | None, name: str, fragment: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    result = invoke("submit", "scoring", name, "--wait", "--store", "memory://")
    assert_one_error_line(result, fragment)


def test_bad_submit_arguments(nodes: Path) -> None:
    memory = ["--store", "memory://"]
    cases = [
        (["submit", "scoring", *memory], "give a FILE"),
        (["submit", "scoring", str(nodes), "--source", "project_nodes", *memory], "give a FILE"),
        (["submit", "scoring", str(nodes), "--param", "a=1", *memory], "--param goes with"),
        (["submit", "scoring", "--source", "nope", *memory], "unknown item source 'nope'"),
        (["submit", "scoring", "--source", "project_nodes", "--param", "x", *memory], "KEY=VALUE"),
        (["submit", "nope", str(nodes), "--wait", *memory], "unknown processor 'nope'"),
        (["submit", "scoring", str(nodes), "--batch-size", "0", *memory], "--batch-size"),
        (["submit", "scoring", str(nodes), "--concurrency", "x", *memory], "--concurrency"),
        (["submit", "scoring", str(nodes), "--item-concurrency", "500", *memory], "cannot exceed"),
    ]
    for args, fragment in cases:
        assert_one_error_line(invoke(*args), fragment)


def test_a_bad_source_param_fails_the_job_with_one_line() -> None:
    result = invoke(
        "submit", "scoring", "--source", "project_nodes", "--param", "count=3", "--wait",
        "--store", "memory://",
    )  # fmt: skip
    assert_one_error_line(result, "was marked failed")


# --- pieces ---------------------------------------------------------------------------------


def test_parse_params() -> None:
    assert parse_params(["a=1", "b=x", "c=", 'd="01"', "e=[1, 2]", "f=NaN", "g=a=b"]) == {
        "a": 1,
        "b": "x",
        "c": "",
        "d": "01",
        "e": [1, 2],
        "f": "NaN",
        "g": "a=b",
    }
    for bad in (["novalue"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(InputError):
            parse_params(bad)


def test_csv_cells_that_are_json_numbers_become_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("\ufeffid,n,x,lead,dot,big,text,empty\n7,-3,2.5e1,007,1.,1e999,a b,\n\n")
    items = read_items(str(path), None, id_key="id")
    assert list(items) == [
        {"id": "7", "n": -3, "x": 25.0, "lead": "007", "dot": "1.", "big": "1e999",
         "text": "a b", "empty": ""},
    ]  # fmt: skip
    items.close()


def iter_then_close(path: str, fmt: str | None = None) -> Iterator[Any]:
    """Read every item of ``path``, closing the file."""
    items = read_items(path, fmt, id_key="id")
    try:
        yield from items
    finally:
        items.close()


def test_jsonl_skips_blank_lines_and_reports_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "items.ndjson"
    path.write_text('{"id": 1}\n\n   \n{"id": 2}\n')
    assert list(iter_then_close(str(path))) == [{"id": 1}, {"id": 2}]
    path.write_bytes(b'{"id": 1}\n\xff\n')
    with pytest.raises(InputError, match="line 2: not UTF-8"):
        list(iter_then_close(str(path)))


def a_snapshot(done: int, failed: int, status: JobStatus, *, sealed: bool = True) -> Job:
    """A job snapshot with ``done`` of 300 items processed."""
    return Job.model_validate(
        {
            "id": "f" * 32,
            "type": "scoring",
            "status": status,
            "progress": 100 * done / 300,
            "total_items": 300,
            "processed_items": done,
            "succeeded_items": done - failed,
            "failed_items": failed,
            "errors": [],
            "error_count": failed,
            "options": JobOptions(),
            "sealed": sealed,
            "created_at": "2026-01-01T00:00:00Z",
        }
    )


def test_progress_bar_shows_count_percent_rate_eta_and_failures() -> None:
    stream = io.StringIO()
    with JobProgress(stream, enabled=True, auto_refresh=False) as bar:
        bar.update(a_snapshot(0, 0, JobStatus.PENDING, sealed=False))
        bar.update(a_snapshot(150, 2, JobStatus.PROCESSING))
    text = stream.getvalue()
    assert "150/300" in text
    assert "50%" in text
    assert "items/s" in text
    assert "2 failed" in text
    assert "scoring ffffffff" in text


def test_progress_bar_is_off_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with JobProgress(stream) as bar:
        assert not bar.enabled
        bar.update(a_snapshot(300, 0, JobStatus.COMPLETED))
    assert stream.getvalue() == ""


def test_summary_line_of_a_running_job() -> None:
    line = summary_line(a_snapshot(150, 3, JobStatus.PROCESSING))
    assert line == f"job {'f' * 32} processing: 150/300 items (50.0%), 3 failed"


def test_validation_message_names_the_flag() -> None:
    with pytest.raises(ValidationError) as caught:
        JobOptions.model_validate({"batch_size": 0, "max_retries": -1})
    message = validation_message(caught.value)
    assert message.startswith("invalid --batch-size: ")
    assert message.endswith("(and 1 more)")


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


def test_submit_to_memory_without_wait_warns(nodes: Path) -> None:
    result = ok("submit", "scoring", str(nodes), "--store", "memory://")
    assert "lasts only for this command" in result.stderr
    assert len(result.stdout.strip()) == 32
