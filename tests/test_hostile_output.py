"""Hostile text from data is shown escaped for each format it is printed in, and `-o` fails cleanly
(issue 13, the output side).

Results whose machine tag, host name, CPU model, model name, error and run name hold Rich markup,
ANSI escape sequences, bidi overrides, mathtext, spreadsheet formulas, HTML tags, CR/LF and very
long text are stored in a real Redis; then every format of report, compare, results and diff, the
import command, the printing `farm run` does after measuring, and the webhook message are checked
for the exact escaped forms (`farm.reports.cells` says which function escapes for which format).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from farm.cli import output
from farm.cli.main import app
from farm.nightly.regress import Verdict
from farm.nightly.webhook import MAX_TEXT, message
from farm.reports.cells import FORMULA_START, MAX_LABEL, csv_cell, html_text, md, plot_label, term
from farm.results import synthetic as syn
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import get_settings
from farm.spec import Job

MARKUP = "[/x][link=https://evil.example]click[/link][bold red]"
ANSI = "\x1b[31mred\x1b]0;pwned\x07\x1b[0m"
BIDI = "\u202eevil\u202c"
MATH = r"$\frac{1}{0}$ $\undefinedcmd{$"  # the second is not valid mathtext: parsed, it raises
HTML = "<script>alert(1)</script><img src=x onerror=alert(1)>"
CRLF = "line1\r\nline2\rline3"
BODY = " ".join([MARKUP, ANSI, BIDI, MATH, HTML, CRLF])
MACHINE = '=HYPERLINK("http://evil.example","x") ' + BODY
HOST = "+cmd " + BODY
MODEL = "@SUM(1+1) " + BODY
ERROR = "-2+3+cmd|' /C calc'!A0 " + BODY + " " + "L" * 3000
CPU = "\tcpu " + BODY
RUN_NAME = BODY

# The terminal's escaped forms (`term`): markup printed as typed, control and bidi characters as escapes.
TERM_FORMS = [
    MARKUP,
    r"\x1b[31mred\x1b]0;pwned\x07\x1b[0m",
    r"\u202eevil\u202c",
    r"line1\r\nline2\rline3",
    MATH,
    HTML,
]
# Markdown's (`md`): pipes and backticks escaped, tags as entities, CR/LF as spaces.
MD_FORMS = [
    MARKUP,
    r"\x1b[31mred\x1b]0;pwned\x07\x1b[0m",
    "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;",
    "line1 line2 line3",
]
HTML_FORMS = ["&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;", "[/x][link="]
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # \t, \n allowed
FORMATS = ["terminal", "markdown", "csv", "json", "html"]


def _hostile(res: JobResult, *, machine: str = MACHINE) -> JobResult:
    assert res.machine is not None
    fp = res.machine.model_copy(update={"machine_tag": machine, "hostname": HOST, "cpu_model": CPU})
    return res.model_copy(update={"machine": fp, "model_name": MODEL})


def hostile_results(run_id: str = "h001") -> list[JobResult]:
    """A CPU baseline, a CUDA result and a failed CPU job of one run, every text field hostile."""
    times = {"forward": [0.10, 0.11, 0.10, 0.12, 0.10], "train": [0.30, 0.31, 0.30, 0.32, 0.33]}
    cuda_fp = syn.machine(gpu="NVIDIA H100 80GB HBM3")
    return [
        _hostile(syn.result(run_id, 0, "cpu", times)),
        _hostile(
            syn.result(run_id, 1, "cuda", {k: [t / 20 for t in v] for k, v in times.items()}, fingerprint=cuda_fp)
        ),
        _hostile(syn.result(run_id, 2, "cpu", {}, status="failed", error=ERROR)),
    ]


def _store(store: ResultStore, results: list[JobResult], name: str = RUN_NAME) -> None:
    jobs = [Job(job_id=r.job_id, run_id=r.run_id, device=r.device, spec=r.spec) for r in results]
    store.create_run(results[0].run_id, [results[0].spec], jobs, name=name, state="done")
    for r in results:
        assert store.put_result(r)


@pytest.fixture()
def hostile(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultStore]:
    """A real Redis holding run h001 (hostile text everywhere) and a wide stdout console: a table
    cell is not folded onto two lines, so an escaped form can be found whole."""
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    monkeypatch.setattr(output.out, "width", 20_000)
    store = ResultStore.from_url(redis_url)
    _store(store, hostile_results())
    yield store


def cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def nl(text: str) -> str:
    """CR LF as LF (the test runner's stdout may turn one into the other)."""
    return text.replace("\r\n", "\n")


def strings(doc: Any) -> set[str]:
    """Every string in a JSON document."""
    if isinstance(doc, str):
        return {doc}
    if isinstance(doc, dict):
        return {s for v in doc.values() for s in strings(v)}
    if isinstance(doc, list):
        return {s for v in doc for s in strings(v)}
    return set()


def check_format(fmt: str, text: str) -> None:
    """The hostile text of the fixture, escaped as `fmt` escapes it."""
    assert "\x1b" not in text and "\u202e" not in text
    if fmt == "terminal":
        for form in TERM_FORMS:
            assert form in text, form
        assert "\r" not in text and "\x07" not in text
    elif fmt == "markdown":
        for form in MD_FORMS:
            assert form in text, form
        assert "<script" not in text and "<img" not in text and "\r" not in text
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows
        for row in rows:
            for value in row.values():
                if value.startswith(FORMULA_START):  # only a number may begin so (a negative one)
                    assert re.fullmatch(r"-[0-9.]+(e-?[0-9]+)?", value), value
        cells = {nl(v) for row in rows for v in row.values()}
        assert nl(csv_cell(MACHINE)) in cells and csv_cell(MACHINE).startswith("'=HYPERLINK(")
    elif fmt == "json":
        assert MACHINE in strings(json.loads(text))  # the data, exactly
    elif fmt == "html":
        for form in HTML_FORMS:
            assert form in text, form
        assert "<script" not in text and "<img src=x" not in text


COMMANDS = {
    "report": ["report", "h001"],
    "compare": ["compare", "--run", "h001"],
    "results": ["results", "h001"],
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_report_compare_results_show_hostile_text_escaped(hostile: ResultStore, name: str, fmt: str) -> None:
    code, text, _ = cli(*COMMANDS[name], "--format", fmt)
    assert code == 0, text
    check_format(fmt, text)


def test_json_keeps_the_data_exactly(hostile: ResultStore) -> None:
    code, text, _ = cli("results", "h001", "--json")
    assert code == 0
    doc = json.loads(text)
    assert {r["machine"]["machine_tag"] for r in doc} == {MACHINE}
    assert {r["model_name"] for r in doc} == {MODEL}
    assert "\x1b" not in text  # JSON writes it as \u001b


@pytest.mark.parametrize("fmt", FORMATS)
def test_diff_shows_hostile_text_escaped(hostile: ResultStore, fmt: str) -> None:
    code, text, _ = cli("diff", "h001-000", "h001-002", "--all", "--format", fmt)
    assert code == 0, text
    assert "\x1b" not in text and "\u202e" not in text
    if fmt == "terminal":
        assert term(HOST) in text and term(CPU) in text
    elif fmt == "markdown":
        assert md(HOST) in text and "<script" not in text
    elif fmt == "csv":
        cells = {nl(v) for row in csv.reader(io.StringIO(text)) for v in row}
        assert {nl(csv_cell(HOST)), nl(csv_cell(CPU)), nl(csv_cell(MACHINE))} <= cells
    elif fmt == "html":
        assert "<script" not in text and nl(html_text(HOST)) in nl(text)
    else:
        rows = json.loads(text)["differences"]
        assert {"section": "hardware", "key": "hostname", "a": HOST, "b": HOST} in rows


def test_import_survives_hostile_text(hostile: ResultStore, tmp_path: Path) -> None:
    results = hostile_results("h002")
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps({"run_id": "h002", "results": [r.model_dump(mode="json") for r in results]}))
    code, text, err = cli("import", str(path))
    assert code == 0, text + err
    assert "\x1b" not in text + err
    code, text, _ = cli("report", "h002")
    assert code == 0 and term(MACHINE) in text and "\x1b" not in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_farm_run_prints_its_results_after_measuring(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What `farm run` does once it has measured: its results and warnings printed, never lost."""
    output.out.width = 20_000
    try:
        results = hostile_results("r001")
        results[1] = syn.flagged(results[1], "forward", unverified="no ceiling " + BODY)
        output.emit_results(results, fmt, None, title=f"{MODEL}, batch 1 x seq 128")
        output.warn(f"cpu: unverified: {BODY}")
    finally:
        output.out.width = 240
    got = capsys.readouterr()
    check_format(fmt, got.out)
    assert "\x1b" not in got.err and term(BODY) in got.err


def test_error_messages_are_one_escaped_line(hostile: ResultStore) -> None:
    code, _, err = cli("report", "h001", "--machine", BODY)
    assert code == 4
    assert err.count("\n") == 1 and "\x1b" not in err and "\r" not in err
    assert r"\x1b[31mred" in err and "[/x][link=" in err


def test_webhook_text_is_escaped_and_capped() -> None:
    v = Verdict(
        kind="regression", reason=BODY, machine="<!channel> " + CRLF + " " + MACHINE, device="cpu", spec_hash="abc",
        model=MODEL + "M" * 5000, phase="forward", run_id="n001", job_id="n001-000",
        finished_at=datetime(2026, 11, 2, tzinfo=UTC), baseline_s=1.0, new_s=1.2, change=0.2, n_history=5,
    )  # fmt: skip
    msg = message(v)
    text = str(msg["text"])
    assert len(text) <= MAX_TEXT
    assert "&lt;!channel&gt;" in text and "<" not in text and ">" not in text
    assert r"\x1b[31mred\x1b]0;pwned\x07" in text and "\x1b" not in text and "\u202e" not in text
    assert r"line1\r\nline2" in text and "\r" not in text and "\n" not in text
    assert "\x1b" not in json.dumps(msg)
    assert msg["verdict"]["machine"] == "<!channel> " + CRLF + " " + MACHINE  # type: ignore[index]  # the data, as data


def test_escaping_functions() -> None:
    assert term("a\x1b[2Jb\u202ec\n") == r"a\x1b[2Jb\u202ec\n"
    assert md("a|b`c`<b>&[x](y)![i](j)\r\nz") == r"a\|b\`c\`&lt;b&gt;&amp;[x]\(y)![i]\(j) z"
    assert [csv_cell(v) for v in ("=1+1", "+1", "-cmd", "@SUM(A1)", "\tx", "\rx", "ok")] == [
        "'=1+1", "+1", "'-cmd", "'@SUM(A1)", "'\tx", "'\rx", "ok",
    ]  # fmt: skip
    assert [csv_cell(v) for v in (-1.5, -3, "-1.5", "-2e-3", None)] == [-1.5, -3, "-1.5", "-2e-3", None]
    label = plot_label("a\x1b[31m\n$x$" + "y" * 200)
    assert label.startswith("a[31m $x$") and len(label) == MAX_LABEL and "\x1b" not in label


# -- -o FILE: one line, exit 1, nothing half-written ------------------------------------------


def _one_line_error(code: int, err: str, why: str) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("error: cannot write") and why in err, err
    assert "Traceback" not in err


def test_output_into_a_missing_directory(hostile: ResultStore, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "report.md"
    code, _, err = cli("report", "h001", "-o", str(target))
    _one_line_error(code, err, "No such file or directory")
    assert not (tmp_path / "missing").exists()


def test_output_onto_a_directory(hostile: ResultStore, tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    code, _, err = cli("report", "h001", "-o", str(tmp_path / "d.csv"))
    _one_line_error(code, err, "Is a directory")
    assert list((tmp_path / "d.csv").iterdir()) == []


def test_output_into_a_read_only_place(hostile: ResultStore) -> None:
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    code, _, err = cli("report", "h001", "-o", "/sys/kernel/farm-report.md")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: cannot write /sys/kernel/farm-report.md")


def test_output_onto_a_full_device(hostile: ResultStore) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    code, _, err = cli("report", "h001", "-o", "/dev/full", "--format", "csv")
    _one_line_error(code, err, "No space left on device")


@pytest.fixture()
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): a real file system that fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_file_system_keeps_the_old_file_whole(hostile: ResultStore, full_fs: Path) -> None:
    old = full_fs / "report.json"
    old.write_text('{"old": true}\n')
    big = hostile_results("h003")
    for i in range(4, 40):  # enough results for a JSON report far above 64 KiB
        big.append(_hostile(syn.result("h003", i, "cpu", {"forward": [0.1 + j / 100 for j in range(50)]})))
    _store(hostile, big)
    code, _, err = cli("results", "h003", "-o", str(old))
    _one_line_error(code, err, "No space left on device")
    assert old.read_text() == '{"old": true}\n'
    assert [p.name for p in full_fs.iterdir()] == ["report.json"]  # no temporary file left


def test_output_replaces_a_file_whole(hostile: ResultStore, tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old\n")
    target.chmod(0o640)
    code, _, err = cli("report", "h001", "-o", str(target))
    assert code == 0, err
    assert target.read_text().startswith("# farm report") and (target.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name != "redis"] == ["report.md"]


# -- plots: dates out of range, mathtext ------------------------------------------------------


@pytest.mark.parametrize("year", [9999, 1])
def test_html_report_survives_a_date_out_of_range(hostile: ResultStore, year: int) -> None:
    """One result of a series dated year 9999 (or 1) is left out of the history plot, counted in
    its caption; the report and the other plots are drawn."""
    spec = hostile_results()[0].spec
    series = [
        syn.result(f"d{i:03d}", 0, "cpu", {"forward": [1.0, 1.1, 1.0, 1.2, 1.0]}, spec=spec,
                   finished_at=datetime(2026, 10, 1 + i, tzinfo=UTC))
        for i in range(4)
    ]  # fmt: skip
    series.append(
        syn.result("d004", 0, "cpu", {"forward": [1.0] * 5}, spec=spec, finished_at=datetime(year, 1, 2, tzinfo=UTC))
    )
    assert {r.status for r in series} == {"ok"}
    for r in series:
        _store(hostile, [r], name="dates")
    code, text, err = cli("report", "d003", "--format", "html")
    assert code == 0, err
    assert "1 left out of the plot (date outside 1970-2200)" in text
    assert text.count('src="data:image/png;base64,') >= 2  # time bars and the history plot


def test_html_report_draws_mathtext_as_text(hostile: ResultStore) -> None:
    """`$\\undefinedcmd{$` in a machine and model name: parsed as mathtext, it would abort the report."""
    code, text, err = cli("report", "h001", "--format", "html")
    assert code == 0, err
    assert 'src="data:image/png;base64,' in text  # the time bars, labelled with the machine and model
    assert "$\\frac{1}{0}$" in text  # shown as typed in the tables


def test_history_page_into_a_missing_directory(hostile: ResultStore, tmp_path: Path) -> None:
    """`farm regressions --html` writes through the same whole-or-nothing writer as `-o`."""
    target = tmp_path / "missing" / "history.html"
    code, _, err = cli("regressions", "--no-notify", "--html", str(target))
    _one_line_error(code, err, "No such file or directory")
    assert not target.parent.exists()
