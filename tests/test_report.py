"""The report's table model and every text format: content and flags (no Redis, no torch)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console

from farm.dates import parse_when
from farm.errors import SpecError
from farm.reports.cells import COLUMNS, cells, fmt_flops
from farm.reports.compare import Baseline
from farm.reports.formats import render, to_markdown, to_terminal
from farm.reports.report import Report, Selection, build_report
from farm.results import synthetic as syn
from farm.results.records import records_from_results
from farm.results.result import JobResult
from farm.spec import BenchSpec, Job

CPU = {"init": [1.2], "forward": [0.50, 0.51, 0.49, 0.50, 0.52], "train": [1.60, 1.62, 1.58, 1.61, 1.59]}
GPU = {"init": [1.5], "forward": [0.0050, 0.0051, 0.0049, 0.0050, 0.0050], "train": [0.020, 0.030, 0.021, 0.026, 0.019]}
# 1e-6 s for a GPT-2 forward is far above an A100's peak: the seed's unsynchronised timer.
IMPOSSIBLE = {"init": [1.5], "forward": [1e-6, 1.1e-6, 1e-6], "train": [0.03, 0.031, 0.029]}


@pytest.fixture()
def report() -> Report:
    a100 = syn.machine("gpu2", gpu="NVIDIA A100-SXM4-40GB", torch_version="2.4.0")
    results = [
        syn.result("r1", 0, "cpu", CPU),
        syn.result("r1", 1, "cuda", GPU),
        syn.result("r1", 2, "cuda:a100", IMPOSSIBLE, fingerprint=a100),
        syn.result("r1", 3, "cuda:l4", {}, status="oom", error="forward: out of memory (predicted 14.2 GiB)"),
    ]
    return build_report(records_from_results(results), selection=Selection(runs=("r1",)))


def _row(report: Report, device: str, phase: str):
    return next(r for r in report.rows if r.record.device == device and r.phase_name == phase)


def test_rows_speedups_and_flags(report: Report) -> None:
    assert len(report.groups) == 1 and len(report.rows) == 10
    fwd = _row(report, "cuda:h100", "forward")
    assert fwd.baseline is not None and fwd.baseline.device == "cpu"
    assert fwd.speedup is not None and fwd.speedup.value == pytest.approx(0.50 / 0.0050)
    assert fwd.speedup.low <= fwd.speedup.value <= fwd.speedup.high
    assert _row(report, "cpu", "forward").is_baseline
    # 0.030 s is 1.43x the median and beyond the others' far-out fence (farm.results.stats rules)
    assert [f.kind for f in _row(report, "cuda:h100", "train").flags] == ["noisy", "outlier"]
    bad = _row(report, "cuda:a100", "forward")
    assert bad.speedup is None  # an impossible number is never reported as a speedup
    assert {f.kind for f in bad.flags} == {"invalid", "versions"}
    assert _row(report, "cuda:l4", "-").flags[0].kind == "oom"
    assert any("mixed torch versions" in n for n in report.notes)
    assert _row(report, "cuda:h100", "init").speedup.low is None  # one repeat: no interval


def test_markdown_has_table_speedups_and_every_flag(report: Report) -> None:
    md = to_markdown(report)
    assert "| run | machine | device | phase | median |" in md
    assert "100× [" in md and "baseline" in md
    for text in (
        "INVALID",
        "noisy",
        "OOM",
        "versions",
        "out of memory (predicted 14.2 GiB)",
        "above the device's peak",
    ):
        assert text in md
    assert "mixed torch versions" in md


def test_terminal_text_shows_flags(report: Report) -> None:
    text = render(report, "terminal")
    assert "gpt2 · batch 1 × seq 128" in text
    for text_ in ("INVALID", "noisy", "OOM", "versions", "mixed torch versions", "speedup [95% CI]"):
        assert text_ in text


def test_csv_one_row_per_job_and_phase_with_flags(report: Report) -> None:
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert len(rows) == 10
    fwd = next(r for r in rows if r["device"] == "cuda:h100" and r["phase"] == "forward")
    assert float(fwd["speedup"]) == pytest.approx(100.0)
    assert float(fwd["speedup_ci_low"]) <= 100.0 <= float(fwd["speedup_ci_high"])
    assert float(fwd["median_s"]) == pytest.approx(0.005)
    bad = next(r for r in rows if r["device"] == "cuda:a100" and r["phase"] == "forward")
    assert bad["status"] == "invalid" and "invalid:" in bad["flags"] and "versions:" in bad["flags"]
    assert next(r for r in rows if r["device"] == "cuda:l4")["status"] == "oom"
    assert "noisy:" in next(r for r in rows if r["device"] == "cuda:h100" and r["phase"] == "train")["flags"]


def test_json_has_rows_notes_and_raw_times(report: Report) -> None:
    doc = json.loads(render(report, "json"))
    assert doc["results"] == 4 and len(doc["rows"]) == 10
    assert any("mixed torch versions" in n for n in doc["notes"])
    fwd = next(r for r in doc["rows"] if r["device"] == "cuda:h100" and r["phase"] == "forward")
    assert fwd["times_s"] == GPU["forward"] and fwd["baseline_job_id"] == "r1-000"
    kinds = {f.split(":")[0] for r in doc["rows"] for f in r["flags"]}
    assert {"invalid", "noisy", "oom", "versions"} <= kinds


def test_groups_by_spec_and_baseline_run() -> None:
    small = BenchSpec(model="gpt2-tiny", batch=1, seq=32)
    results = [
        syn.result("old", 0, "cuda", GPU, finished_at=None),
        syn.result("new", 0, "cuda", {k: [t / 2 for t in v] for k, v in GPU.items()}),
        syn.result("new", 1, "cpu", CPU, spec=small),
    ]
    rep = build_report(records_from_results(results), baseline=Baseline(run="old"))
    assert [g.title.split(" ·")[0] for g in rep.groups] == ["gpt2-tiny", "gpt2"]
    fwd = next(r for r in rep.rows if r.record.job_id == "new-000" and r.phase_name == "forward")
    assert fwd.baseline is not None and fwd.baseline.job_id == "old-000"
    assert fwd.speedup is not None and fwd.speedup.value == pytest.approx(2.0)
    assert any("no baseline" in n for n in rep.notes)  # the tiny spec never ran in run "old"


def test_parse_when() -> None:
    assert parse_when("2026-11-01", "since").isoformat() == "2026-11-01T00:00:00+00:00"
    assert parse_when(None, "since") is None
    assert parse_when("7d", "since") is not None
    with pytest.raises(SpecError, match="since"):
        parse_when("last tuesday", "since")


def test_unknown_format_is_refused(report: Report) -> None:
    with pytest.raises(ValueError, match="allowed"):
        render(report, "pdf")


def test_mixed_versions_flag_rows_without_a_baseline_relation_in_csv() -> None:
    old = syn.machine("box1", torch_version="2.3.0", farm_version="0.0.9")
    results = [syn.result(f"n{i}", 0, "cpu", CPU) for i in range(2)] + [
        syn.result("n9", 0, "cpu", CPU, fingerprint=old)
    ]
    rep = build_report(records_from_results(results))
    rows = list(csv.DictReader(io.StringIO(render(rep, "csv"))))
    odd = [r for r in rows if r["run_id"] == "n9"]
    assert odd and all("versions: farm 0.0.9, torch 2.3.0, unlike most results here" in r["flags"] for r in odd)
    assert all("versions" not in r["flags"] for r in rows if r["run_id"] != "n9")
    assert any("mixed farm versions" in n for n in rep.notes)


def test_fmt_seconds_picks_the_unit_after_rounding() -> None:
    from farm.reports.cells import fmt_seconds

    assert [fmt_seconds(x) for x in (0.9996, 0.0009996, 0.5, 2.5, 123.4, 1e-7)] == [
        "1 s", "1 ms", "500 ms", "2.5 s", "123 s", "0.1 µs",
    ]  # fmt: skip


def test_cancelled_job_without_a_torch_version_is_no_mixed_versions_note() -> None:
    ok = syn.result("c1", 0, "cpu", CPU)
    job = Job(job_id="c1-001", run_id="c1", device="cuda", spec=ok.spec)
    cancelled = JobResult.failure(job, "cancelled", "cancelled by the user before it ran")
    rep = build_report(records_from_results([ok, cancelled]))
    assert cancelled.machine is None or cancelled.machine.torch_version is None  # unknown, as stored
    assert not any("mixed" in n for n in rep.notes), rep.notes
    assert all(f.kind != "versions" for r in rep.rows for f in r.flags)
    assert _row(rep, "cuda", "-").flags[0].kind == "cancelled"


def test_flops_cells_carry_an_si_prefix_chosen_per_value() -> None:
    assert [fmt_flops(x) for x in (8.62e10, 4.52e13, 5.12e8, 999.96e9, 1.5e3, 12.0, None, 0.0)] == [
        "86.2 G", "45.2 T", "512 M", "1 T", "1.5 k", "12", "-", "-",
    ]  # fmt: skip
    rep = build_report(records_from_results([syn.result("f1", 0, "cpu", CPU)]))
    fwd = _row(rep, "cpu", "forward")
    assert fwd.phase is not None and fwd.phase.achieved_flops is not None
    flops_cell = cells(fwd)[COLUMNS.index("FLOP/s")]
    assert flops_cell == fmt_flops(fwd.phase.achieved_flops) and flops_cell.endswith(" G")  # a CPU: GFLOP/s
    assert "| FLOP/s |" in to_markdown(rep) and "TFLOP/s" not in to_markdown(rep)
    assert json.loads(render(rep, "json"))["rows"][1]["achieved_flops"] == fwd.phase.achieved_flops  # raw


def test_wide_run_id_ci_mfu_and_speedup_are_whole_on_a_160_column_terminal() -> None:
    """`--wide`: every column, the run id, CI, MFU and speedup never wrapped (the compact default and
    its widths: tests/test_table_width.py)."""
    run = "20261201T105923-3f2a9c"
    gpu = syn.machine("gpu-box-in-the-far-rack", gpu="NVIDIA H100 80GB HBM3")
    results = [
        syn.result(run, 0, "cpu", CPU, fingerprint=syn.machine("cpu-box-in-the-far-rack")),
        syn.result(run, 1, "cuda:h100", GPU, fingerprint=gpu),
    ]
    rep = build_report(records_from_results(results))
    fwd = _row(rep, "cuda:h100", "forward")
    whole = [cells(fwd)[COLUMNS.index(c)] for c in ("run", "95% CI (cov.)", "MFU", "speedup [95% CI]")]
    assert fwd.speedup is not None and fwd.speedup.low is not None and " – " in whole[1]
    buf = io.StringIO()
    Console(width=160, file=buf, color_system=None).print(to_terminal(rep, wide=True), crop=False)
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) > 160  # wider than the terminal rather than cut
    line = next(x for x in lines if run in x and "forward" in x and "cuda:h100" in x)  # the id in full
    for cell in whole:  # and each of the four cells on the row's one line
        assert cell in line, (cell, line)
    assert "…" not in buf.getvalue()
