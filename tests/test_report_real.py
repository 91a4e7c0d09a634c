"""A report over real results: gpt2-tiny timed on this machine's CPU by the core engine."""

from __future__ import annotations

import pytest

from farm.reports.cells import mfu_text
from farm.reports.compare import parse_baseline
from farm.reports.formats import render
from farm.reports.report import build_report
from farm.results.records import records_from_results
from farm.spec import BenchSpec

pytest.importorskip("torch")


def test_report_over_a_real_run() -> None:
    from farm.engine.runner import run_job

    # Two runs of one spec on this CPU, the first the baseline (`cpu` and `cpu:<machine>` would be one
    # device: farm.spec.series_device).
    spec = BenchSpec(model="gpt2-tiny", batch=1, seq=32, repeats=5, warmup=1, devices=("cpu",))
    results = [run_job(job) for run in ("reala", "realb") for job in spec.expand(run)]
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    report = build_report(records_from_results(results), parse_baseline("run=reala"))
    assert len(report.rows) == 6 and {r.record.device for r in report.rows} == {"cpu"}
    fwd = next(r for r in report.rows if r.record.run_id == "realb" and r.phase_name == "forward")
    assert fwd.baseline is not None and fwd.baseline.run_id == "reala"
    assert fwd.speedup is not None and fwd.speedup.low is not None and fwd.speedup.value > 0
    p = fwd.phase
    assert p is not None and p.n == 5 and p.tokens_per_s and p.achieved_flops and p.mfu and p.peak_memory_bytes
    assert mfu_text(fwd).startswith(f"{p.mfu:.1%} of ")  # the MFU names the kind of its peak
    assert any(p.peak_source in line for line in report.peaks)  # ... and the peak's source is printed
    md = render(report, "markdown")
    assert "gpt2-tiny · batch 1 × seq 32 · float32" in md and "baseline" in md and "×" in md
    html = render(report, "html")
    assert "<table" in html and "data:image/png;base64," in html
