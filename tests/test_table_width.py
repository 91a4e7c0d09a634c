"""Terminal tables that fit the terminal: `farm results` and `farm report` through the real CLI at 80,
120 and 200 columns (COLUMNS), against stored results in a real Redis. The compact default shows every
header and every cell's key value whole (never cut to `…`), the run id and spec in the table's title,
the explanations wrapped below; `--wide` shows every column; the other formats keep every column; and
every view lists phases in the order they run (init, forward, train, generate)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from farm.cli.main import app
from farm.reports import plots
from farm.reports.cells import COLUMNS, COMPACT_COLUMNS, ROW_FIELDS, cells, compact_cells, plain_text
from farm.reports.listing import Listing, to_terminal
from farm.reports.report import Report, build_report
from farm.results import synthetic as syn
from farm.results.host import HostLoad
from farm.results.peaks import Peak
from farm.results.records import records_from_results
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import get_settings
from farm.spec import BenchSpec, Job

RUN = "20261201T020000-3f2a9c"
WIDTHS = (80, 120, 200)
# Phases given out of order: every view must put them back in the order they run.
CPU = {"train": [1.60, 1.62, 1.58, 1.61, 1.59], "generate": [2.1, 2.2, 2.0, 2.1, 2.15], "init": [1.2],
       "forward": [0.50, 0.51, 0.49, 0.50, 0.52]}  # fmt: skip
GPU = {"generate": [0.21, 0.22, 0.2, 0.21, 0.215], "forward": [0.0050, 0.0051, 0.0049, 0.0050, 0.0050],
       "init": [1.5], "train": [0.020, 0.030, 0.021, 0.026, 0.019]}  # fmt: skip
RUN_ORDER = ["init", "forward", "train", "generate"]
# A CPU whose core is not in the table: its peak is only an upper bound, so its MFU is at least the value.
UPPER = Peak(flops=2.26e11, source="upper bound (microarchitecture not in the table): 2 cores x 32 FLOP/cycle")
BUSY = HostLoad(lock_wait_s=0.0, load_avg_1m=2.9, other_cpu_s=1.8, contended=True, reason="other processes ran")
SPEC = BenchSpec(model="gpt2", batch=1, seq=128, phases=("init", "forward", "train", "generate"))


def _results() -> list[JobResult]:
    cpu = syn.result(RUN, 0, "cpu", CPU, spec=SPEC, fingerprint=syn.machine("lab-cpu-01"), peak=UPPER)
    cpu = syn.flagged(cpu, "forward", host=BUSY)
    gpu = syn.machine("lab-h100-01", gpu="NVIDIA H100 80GB HBM3")
    return [cpu, syn.result(RUN, 1, "cuda:h100", GPU, spec=SPEC, fingerprint=gpu)]


@pytest.fixture()
def stored(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ResultStore:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    results = _results()
    jobs = [Job(job_id=r.job_id, run_id=RUN, device=r.device, spec=r.spec) for r in results]
    store.create_run(RUN, [SPEC], jobs, name="nightly", state="done")
    for r in results:
        assert store.put_result(r)
    return store


@pytest.fixture()
def report() -> Report:
    return build_report(records_from_results(_results()))


def cli(args: list[str], columns: int | None = None) -> str:
    env = {"COLUMNS": str(columns)} if columns else {}
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    return res.stdout


def _row_lines(text: str, phase: str, device: str) -> list[str]:
    """The lines of the table row of `phase` on `device` (a row may wrap onto the next lines)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s*{phase}\s+{re.escape(device)}\s", line):
            rest = [x for x in lines[i + 1 : i + 4] if x.startswith(" " * (len(phase) + 2))]  # its wrapped lines
            return [line, *rest]
    raise AssertionError(f"no row {phase} {device} in:\n{text}")


def _check_compact(text: str, report: Report, width: int) -> None:
    assert "…" not in text
    assert max(cell_len(line) for line in text.splitlines()) <= width, text  # table and notes fit
    header = next(line for line in text.splitlines() if line.lstrip().startswith("phase "))
    assert header.split() == ["phase", "device", "machine", "median", "95%", "CI", "speedup", "MFU", "flags"]
    title = next(line for line in text.splitlines() if line.startswith(f"run {RUN} · "))  # the run id in the title
    assert f"spec {SPEC.spec_hash()}" in title or SPEC.spec_hash() in text  # the spec (the title may wrap)
    for row in report.rows:
        values = compact_cells(row)
        lines = _row_lines(text, row.phase_name, row.record.device)
        first = lines[0]
        for col, value in zip(COMPACT_COLUMNS, values, strict=True):
            if col in ("speedup", "flags", "machine"):  # may wrap at spaces: each word whole, in order
                joined = " ".join(" ".join(x.split()) for x in lines)
                assert all(word in joined for word in value.split()), (col, value, lines)
            else:
                assert value in first, (col, value, first)  # whole, on the row's line
    cpu_fwd = next(r for r in report.rows if r.record.device == "cpu" and r.phase_name == "forward")
    mfu = compact_cells(cpu_fwd)[COMPACT_COLUMNS.index("MFU")]
    assert mfu.startswith("≥ ") and mfu.endswith("%") and mfu in text  # a lower bound keeps its ≥
    assert "contended" in text and "baseline" in text
    # the explanations below the table: the peak's derivation and every flag, wrapped to the width
    said = " ".join(text.split())
    assert UPPER.source in said and "flag: cpu @ lab-cpu-01, run " in said and "--wide for every column" in said


@pytest.mark.parametrize("width", WIDTHS)
def test_results_and_report_fit_the_terminal(stored: ResultStore, report: Report, width: int) -> None:
    for args in (["results", RUN], ["results", "latest"], ["report", RUN]):
        _check_compact(cli(args, width), report, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_wide_shows_every_column_whole(stored: ResultStore, report: Report, width: int) -> None:
    for args in (["results", RUN, "--wide"], ["report", RUN, "--wide"], ["compare", "--run", RUN, "--wide"]):
        text = cli(args, width)
        assert "…" not in text
        header = next(line for line in text.splitlines() if "┃ run " in line)
        for col in COLUMNS:
            assert col in header, (col, header)
        for row in report.rows:
            line = next(x for x in text.splitlines() if f" {row.phase_name} " in x and f" {row.record.device} " in x)
            texts = cells(row)
            for col in ("run", "device", "phase", "median", "95% CI (cov.)", "tokens/s", "FLOP/s", "MFU"):
                assert texts[COLUMNS.index(col)] in line, (col, texts[COLUMNS.index(col)], line)
            assert texts[COLUMNS.index("speedup [95% CI]")] in line
        assert "≥ " in text and "% of upper bound" in text
    wide = cli(["report", RUN, "--wide"], 80)
    assert max(cell_len(line) for line in wide.splitlines()) > 80  # wider than the terminal rather than cut


def test_piped_without_columns_is_the_compact_table(stored: ResultStore, report: Report) -> None:
    text = cli(["results", RUN])
    assert "┃ run " not in text and "tokens/s" not in text.split("flag:")[0].split("compact table")[0]
    _check_compact(text, report, 240)


def test_other_formats_keep_every_column(stored: ResultStore, tmp_path: Path) -> None:
    md = cli(["report", RUN, "--format", "markdown"], 80)
    assert "| " + " | ".join(COLUMNS) + " |" in md
    rows = list(csv.DictReader(io.StringIO(cli(["results", RUN, "--csv"], 80))))
    assert list(rows[0]) == list(ROW_FIELDS) and len(rows) == 8
    doc = json.loads(cli(["report", RUN, "--json"], 80))
    assert set(ROW_FIELDS) <= set(doc["rows"][0])
    html = cli(["report", RUN, "--format", "html"], 80)
    assert all(f"<th>{c}</th>" in html for c in COLUMNS)
    cli(["results", RUN, "-o", str(tmp_path / "results.txt")], 80)  # a file has no width: every column
    txt = (tmp_path / "results.txt").read_text(encoding="utf-8")
    assert all(col in txt for col in COLUMNS) and "…" not in txt


def _phases_in(text: str) -> list[str]:
    """The phase names in the order they appear in `text` (each once)."""
    found = re.findall(r"\b(init|forward|train|generate)\b", text)
    return list(dict.fromkeys(found))


def test_phases_in_the_order_they_run_in_every_view(stored: ResultStore, report: Report) -> None:
    assert [r.phase_name for r in report.rows] == [p for p in RUN_ORDER for _ in range(2)]
    term = cli(["results", RUN], 120)
    table = term[term.index(f"run {RUN} · ") : term.index("flag:")]
    assert _phases_in(table) == RUN_ORDER
    wide = cli(["report", RUN, "--wide"], 200)
    assert _phases_in(wide[wide.index("┃ run ") : wide.index("flag:")]) == RUN_ORDER
    md = cli(["report", RUN, "--format", "markdown"])
    assert [line.split(" | ")[3] for line in md.splitlines() if line.startswith(f"| {RUN} ")] == [
        p for p in RUN_ORDER for _ in range(2)
    ]
    rows = list(csv.DictReader(io.StringIO(cli(["report", RUN, "--format", "csv"]))))
    assert list(dict.fromkeys(r["phase"] for r in rows)) == RUN_ORDER
    doc = json.loads(cli(["report", RUN, "--json"]))
    assert list(dict.fromkeys(r["phase"] for r in doc["rows"])) == RUN_ORDER
    html = cli(["report", RUN, "--format", "html"])
    tables = html[html.index('<table class="results">') : html.index("</table>")]
    assert _phases_in(re.sub(r"<[^>]+>", " ", tables)) == RUN_ORDER
    # the plots draw their panels and groups in the same order, whatever order the rows come in
    assert plots._phases(list(reversed(report.rows))) == RUN_ORDER


def test_a_series_report_fits_with_its_history_below(
    stored: ResultStore, report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over more results than the threshold: one row per series (the run ids differ: one table per
    spec), the history below the table; still within 80 columns."""
    from farm.reports import report as report_mod

    for n in range(1, 4):  # three more nights of the same two jobs
        run = f"2026120{n + 1}T020000-3f2a9c"
        results = [r.model_copy(update={"run_id": run, "job_id": f"{run}-{i:03d}"}) for i, r in enumerate(_results())]
        stored.create_run(run, [SPEC], [Job(job_id=r.job_id, run_id=run, device=r.device, spec=SPEC) for r in results])
        for r in results:
            assert stored.put_result(r)
    monkeypatch.setattr(report_mod, "SERIES_THRESHOLD", 5)
    text = cli(["report"], 80)
    assert "one row per series" in text and "…" not in text
    assert max(cell_len(line) for line in text.splitlines()) <= 80, text
    assert "4 results" in text and "history: cpu @ lab-cpu-01, forward: 4 results, median 500 ms" in " ".join(
        text.split()
    )


# -- listings (workers, verdicts, jobs, sweep points) in an 80-column terminal ------------------------


def _verdicts(rows: list[tuple[str, str]]) -> Listing:
    lst = Listing("run n014 (nightly): judged", ["kind", "machine", "device", "model", "spec", "phase", "change"])
    for kind, machine in rows:
        lst.add(kind, machine, "cpu", "gpt2-medium", "9a48763c07fa", "forward", "+35.4%", status=kind)
    return lst


def _lines(lst: Listing, width: int) -> list[str]:
    return plain_text(to_terminal(lst, width), width).splitlines()


def test_a_listing_too_wide_for_80_columns_is_laid_out_to_read() -> None:
    """Squeezed to 80 columns a verdict table cut every cell to `reg…`, `qui…`: one row now reads as
    `field value` lines; several rows show what they share once above the table; nothing is cut."""
    one = _lines(_verdicts([("regression", "quietbox")]), 80)
    assert all(cell_len(line) <= 80 for line in one) and "…" not in "\n".join(one)
    assert one[0] == "run n014 (nightly): judged"
    assert any(re.search(r"│ machine\s+│ quietbox\s+│", line) for line in one)
    assert any(re.search(r"│ spec\s+│ 9a48763c07fa\s+│", line) for line in one)
    many = _lines(_verdicts([("regression", "box7"), ("unchanged", "box8"), ("too-noisy", "noisy")]), 60)
    text = "\n".join(many)
    assert "…" not in text and all(cell_len(line) <= 60 for line in many)
    shared = next(line for line in many if line.startswith("every row:"))
    assert "model gpt2-medium" in shared and "machine" not in shared
    assert re.search(r"│ too-noisy\s+│ noisy\s+│", text)


def test_a_listing_that_fits_is_unchanged() -> None:
    lst = _verdicts([("regression", "box7"), ("unchanged", "box8")])
    assert _lines(lst, 200) == plain_text(to_terminal(lst), 200).splitlines()  # as every listing was
    assert not any(line.startswith("every row:") for line in _lines(lst, 200))
