"""One output layer: the results' CSV is the report's, listings render in every format (escaped),
the format comes from --format, its aliases or -o's suffix, and render(report, "html") carries history."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli.main import app
from farm.cli.output import fmt_of, results_report
from farm.dates import parse_when
from farm.errors import SpecError
from farm.reports.cells import ROW_FIELDS, row_dict
from farm.reports.formats import render
from farm.reports.listing import Listing
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import get_settings
from farm.spec import SkippedDevice, parse_spec

TINY = {"model": "gpt2-tiny", "seq": 8, "devices": ["cpu"]}


def _failed() -> JobResult:
    job = parse_spec(TINY).expand("r")[0]
    return JobResult.failure(job, "failed", "boom\nline two")


def test_results_csv_is_the_report_csv() -> None:
    report = results_report([_failed()], "t")
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert len(rows) == 1 and list(rows[0]) == list(row_dict(report.rows[0])) == list(ROW_FIELDS)  # the report's
    assert rows[0]["status"] == "failed" and rows[0]["job_id"] == "r-000" and rows[0]["error"].startswith("boom")


def test_format_choice() -> None:
    assert fmt_of(None, None) == "terminal"
    assert fmt_of(None, Path("x.html")) == "html" and fmt_of(None, Path("x.md")) == "markdown"
    assert fmt_of(None, None, json_alias=True) == "json" and fmt_of(None, None, csv_alias=True) == "csv"
    assert fmt_of("markdown", Path("x.csv")) == "markdown"
    with pytest.raises(SpecError):
        fmt_of("yaml", None)


def test_listing_formats_escape_data() -> None:
    lst = Listing("t <b>", ["name", "value"], notes=["n|1"])
    lst.add("[bold]x[/]", "<script>", status="failed")
    lst.add("y", None)
    html = render(lst, "html")
    assert "<script>" not in html and "&lt;script&gt;" in html and 'class="status-failed"' in html
    assert "[bold]x[/]" in render(lst, "terminal")  # shown as text, not read as markup
    assert "n\\|1" in render(lst, "markdown")
    assert list(csv.reader(io.StringIO(render(lst, "csv")))) == [
        ["name", "value"],
        ["[bold]x[/]", "<script>"],
        ["y", ""],
    ]
    assert json.loads(render(lst, "json"))["rows"][1] == {"name": "y", "value": None}
    lst.doc = {"own": "shape"}
    assert json.loads(render(lst, "json")) == {"own": "shape"}


def test_one_date_parser() -> None:
    assert parse_when("2026-11-28", "date").isoformat() == "2026-11-28T00:00:00+00:00"  # type: ignore[union-attr]
    with pytest.raises(SpecError, match="date"):
        parse_when("tonight", "date")


def test_results_and_status_formats(redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    res = _failed()
    job = parse_spec(TINY).expand("r")[0]
    store.create_run("r", [job.spec], [job])
    store.put_result(res)
    runner = CliRunner()
    for argv in (["results", "latest", "--csv"], ["results", "r", "--format", "csv"]):
        out = runner.invoke(app, argv)
        assert out.exit_code == 0, out.output
        (row,) = csv.DictReader(io.StringIO(out.stdout))
        assert row["job_id"] == "r-000" and "spec_hash" in row
    term = runner.invoke(app, ["results", "latest"])
    assert term.exit_code == 0 and "run r: 1/1 job(s) with results" in term.stdout and "FAILED" in term.stdout
    page = tmp_path / "status.html"
    st = runner.invoke(app, ["status", "latest", "-o", str(page)])
    assert st.exit_code == 0, st.output
    assert page.read_text().startswith("<!DOCTYPE html>") and "r-000" in page.read_text()
    doc = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert doc["run_id"] == "r" and doc["jobs"][0]["job_id"] == "r-000"
    md = runner.invoke(app, ["workers", "--format", "markdown"])
    assert md.exit_code == 0 and md.stdout.startswith("# 0 live worker(s)")


def test_help_reads_at_80_columns() -> None:
    """`farm --help` lists each command with its first sentence, folded by Rich at the width (a
    docstring's own line breaks once cut lines mid-sentence), and no help shows a placeholder."""
    import typer.main

    group = typer.main.get_command(app)
    commands = dict(group.commands)  # type: ignore[attr-defined]
    commands.update(commands["schedule"].commands)  # type: ignore[attr-defined]
    for name, cmd in commands.items():
        for text in (cmd.short_help or "", cmd.help or ""):
            assert "\n" not in text.split("\n\n")[0], name  # paragraphs joined
            assert "{" not in text and "SERIES_THRESHOLD" not in text, name
        assert (cmd.short_help or cmd.help or "").strip() and not (cmd.short_help or "").endswith("RUN..."), name
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0 and max(len(line) for line in res.output.splitlines()) <= 80
    results = next(line for line in res.output.splitlines() if "│ results" in line)
    assert "narrowed by" in results  # the sentence goes on to the fold, not cut at 'RUN...'
    report = CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "80"})
    assert "Over more than 2,000 results" in " ".join(report.output.split())


def test_a_skipped_device_is_shown_where_the_run_is_read(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run's record keeps the devices the embedded farm skipped, with why: `farm results` and
    `farm report` say so in every format (escaped), JSON as a field; a run recorded without it reads."""
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    job = parse_spec(TINY).expand("r")[0]
    skipped = [SkippedDevice(device="cuda", reason="no CUDA device on this machine"),
               SkippedDevice(device="cuda:<b>x", reason="no <b>x GPU on this machine")]  # fmt: skip
    store.create_run("r", [job.spec], [job], skipped=skipped)
    store.put_result(_failed())
    assert store.skipped_devices("r") == skipped
    line = "cuda: asked for, skipped: no CUDA device on this machine"
    runner = CliRunner()
    for argv in (["results", "r"], ["report", "r"]):
        out = runner.invoke(app, argv, terminal_width=200)
        assert line in out.stdout, out.output
    doc = json.loads(runner.invoke(app, ["report", "r", "--json"]).stdout)
    assert doc["skipped_devices"][0] == {"run_id": "r", "device": "cuda", "reason": "no CUDA device on this machine"}
    html = runner.invoke(app, ["report", "r", "--format", "html"]).stdout
    assert line in html and "cuda:&lt;b&gt;x" in html and "<b>x" not in html
    md = runner.invoke(app, ["report", "r", "--format", "markdown"]).stdout
    assert f"- {line}" in md and "cuda:&lt;b&gt;x" in md and "<b>x" not in md
    # a run recorded without the field (before it existed, or that skipped nothing) reads as before
    store.create_run("old", [job.spec], [job.model_copy(update={"job_id": "old-000", "run_id": "old"})])
    assert store.get_run("old")["skipped_devices"] == [] and store.skipped_devices("old") == []
    out = runner.invoke(app, ["results", "old"])
    assert out.exit_code == 0 and "asked for, skipped" not in out.stdout
