"""Every command that prints data takes `--format` and `-o`, in every format, against a real Redis
holding a stored 15-night history (the README's and docs/farm.md's promise)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from test_regress_cli import stored  # noqa: F401 (fixture)
from typer.testing import CliRunner

from farm.cli.main import app
from farm.results.store import ResultStore
from farm.spec import Job

COMMANDS = {
    "status": ["status", "n014"],
    "results": ["results", "n014"],
    "report": ["report", "latest"],
    "compare": ["compare", "--run", "n013,n014"],
    "regressions": ["regressions", "--all", "--no-notify"],
    "workers": ["workers"],
    "check": ["check", "n014", "--no-notify"],
    "schedule list": ["schedule", "list"],
}
FORMATS = ["markdown", "csv", "json", "html", "terminal"]
SUFFIX = {"markdown": ".md", "csv": ".csv", "json": ".json", "html": ".html", "terminal": ".txt"}


def cli(*args: str) -> tuple[int, str]:
    """Exit code and stdout (stderr carries notes, not data)."""
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout


def _looks_like(fmt: str, text: str) -> None:
    assert text.strip(), "empty output"
    if fmt == "json":
        json.loads(text)
    elif fmt == "html":
        assert text.lstrip().lower().startswith("<!doctype html") and text.rstrip().endswith("</html>")
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert len(rows[0]) > 1 and all(len(r) == len(rows[0]) for r in rows)
    elif fmt == "markdown":
        assert "|---" in text or "| --- |" in text
    else:
        assert "\x1b[" not in text  # plain text in a file: no colour codes


@pytest.fixture()
def runs(stored: ResultStore) -> ResultStore:  # noqa: F811
    """The stored history, with run n014 holding its jobs (as a submitted run does)."""
    results = stored.query(runs=["n014"])
    jobs = [Job(job_id=r.job_id, run_id=r.run_id, device=r.device, spec=r.spec) for r in results]
    stored.create_run("n014", [results[0].spec], jobs, name="nightly", state="done")
    return stored


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_format_and_output_file(runs: ResultStore, tmp_path: Path, name: str, fmt: str) -> None:
    args = COMMANDS[name]
    expected = (0, 1) if name == "check" else (0,)  # check exits 1 on the injected regression
    code, text = cli(*args, "--format", fmt)
    assert code in expected, text
    if fmt != "terminal":
        _looks_like(fmt, text)
    out = tmp_path / f"out{SUFFIX[fmt]}"
    code, text = cli(*args, "-o", str(out))  # the format follows the suffix
    assert code in expected, text
    _looks_like(fmt, out.read_text(encoding="utf-8"))
