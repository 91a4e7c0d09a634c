"""Every verdict and flag of a phase in every report format: `unverified` (counted apart, styled apart,
on speedups too), `outlier`, `drift`, `contended`, the host lock's wait, `repeats: auto`'s stop, MFU
naming its peak with the roofline beside it, and an `ok` row above 100% MFU marked. Through `farm report`
(stdout and -o), `farm results` and `farm run`'s output, against a real Redis; old summaries still read.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from farm.cli.main import app
from farm.cli.output import emit_results
from farm.reports import plots
from farm.reports.cells import STATUS_STYLE, cells, mfu_text, speedup_text
from farm.reports.diff import environment_diff
from farm.reports.formats import render
from farm.reports.history import results_section
from farm.reports.report import Report, Row, build_report
from farm.results import synthetic as syn
from farm.results.host import HostLoad
from farm.results.peaks import Peak
from farm.results.records import (
    SUMMARY_VERSION,
    Record,
    record_from_dict,
    record_from_summary,
    records_from_results,
    summary_json,
)
from farm.results.result import CPU_GEMM_ONEDNN, JobResult
from farm.results.store import ResultStore
from farm.settings import get_settings
from farm.spec import Job

CPU = {"init": [1.2], "forward": [0.50, 0.51, 0.49, 0.50, 0.52], "train": [1.60, 1.62, 1.58, 1.61, 1.59]}
GPU = {"init": [1.5], "forward": [0.0050, 0.0051, 0.0049, 0.0050, 0.0050], "train": [0.020, 0.021, 0.019, 0.02, 0.02]}
ROOF = Peak(flops=1.5e11, source="measured: best of the model GEMM shapes, load 0.1, box1.lab", tolerance=1.0)
BUSY = HostLoad(
    lock_wait_s=0.75,
    load_avg_1m=2.9,
    other_cpu_s=1.8,
    contended=True,
    reason="other processes used 1.8 CPU s in 2.5 s",
)
NO_CEILING = "no ceiling for AMD Instinct MI300X: not in the table, nothing to derive from"
FORMATS = ["terminal", "markdown", "csv", "json", "html"]
SUFFIX = {"markdown": ".md", "csv": ".csv", "json": ".json", "html": ".html", "terminal": ".txt"}


def _results() -> list[JobResult]:
    """Run r1: a CPU baseline (forward contended, waited for the lock, roofline, repeats auto; train drifts),
    an H100 (train has an outlier) and an MI300X that no ceiling checks (unverified)."""
    cpu = syn.result("r1", 0, "cpu", CPU)
    cpu = syn.flagged(cpu, "forward", host=BUSY, roofline=ROOF, repeats_stop="target")
    cpu = syn.flagged(cpu, "train", drift=True)
    h100 = syn.flagged(syn.result("r1", 1, "cuda", GPU), "train", outlier=True)
    amd = syn.result("r1", 2, "cuda:mi300", GPU, fingerprint=syn.machine("amd1", gpu="AMD Instinct MI300X"))
    amd = syn.flagged(syn.flagged(amd, "forward", unverified=NO_CEILING), "train", unverified=NO_CEILING)
    return [cpu, h100, amd]


def _row(report: Report, device: str, phase: str) -> Row:
    return next(r for r in report.rows if r.record.device == device and r.phase_name == phase)


@pytest.fixture()
def report() -> Report:
    return build_report(records_from_results(_results()))


@pytest.fixture()
def stored(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultStore]:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    results = _results()
    jobs = [Job(job_id=r.job_id, run_id=r.run_id, device=r.device, spec=r.spec) for r in results]
    store.create_run("r1", [results[0].spec], jobs, state="done")
    for r in results:
        assert store.put_result(r)
    yield store


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout


# -- the report model --------------------------------------------------------------------------


def test_each_flag_reaches_its_row(report: Report) -> None:
    assert report.status_counts() == {"ok": 2, "unverified": 1}
    amd = _row(report, "cuda:mi300", "forward")
    assert amd.status == "unverified" and [f.text for f in amd.flags if f.kind == "unverified"] == [NO_CEILING]
    fwd = _row(report, "cpu", "forward")
    assert {f.kind for f in fwd.flags} == {"contended"} and BUSY.reason in fwd.flags[0].text
    assert [f.kind for f in _row(report, "cpu", "train").flags] == ["drift"]
    assert "outlier" in {f.kind for f in _row(report, "cuda:h100", "train").flags}
    # the baseline's own flags are shown on the speedups that rest on it, as `baseline`
    assert any("baseline (cpu @ box1) contended" in f.text for f in _row(report, "cuda:h100", "forward").flags)
    assert any(n.startswith("waited for the host lock") and "0.75 s" in n for n in report.notes)


def test_a_speedup_with_an_unverified_side_says_so(report: Report) -> None:
    amd = _row(report, "cuda:mi300", "forward")
    assert amd.speedup is not None and amd.speedup_unverified == "result"
    assert speedup_text(amd).endswith("(unverified)")
    assert _row(report, "cuda:h100", "forward").speedup_unverified is None
    # an unverified baseline: every speedup against it says so, both sides when both are
    base = syn.flagged(syn.result("r2", 0, "cpu", CPU), "forward", unverified="no ceiling for this CPU")
    amd2 = syn.result("r2", 1, "cuda:mi300", GPU, fingerprint=syn.machine("amd1", gpu="AMD Instinct MI300X"))
    h100 = syn.result("r2", 2, "cuda", GPU)
    rep = build_report(records_from_results([base, syn.flagged(amd2, "forward", unverified=NO_CEILING), h100]))
    assert speedup_text(_row(rep, "cuda:h100", "forward")).endswith("(baseline unverified)")
    assert speedup_text(_row(rep, "cuda:mi300", "forward")).endswith("(both unverified)")
    assert any(f.kind == "baseline" and "unverified" in f.text for f in _row(rep, "cuda:h100", "forward").flags)


def test_mfu_names_its_peak_and_the_roofline_beside_it(report: Report) -> None:
    fwd = _row(report, "cpu", "forward")
    p = fwd.phase
    assert p is not None and p.mfu is not None and p.achieved_flops is not None
    assert mfu_text(fwd) == f"{p.mfu:.1%} of theoretical (roofline {p.achieved_flops / ROOF.flops:.1%})"
    assert mfu_text(_row(report, "cuda:h100", "forward")).endswith("% of datasheet")  # table: h100 ...
    assert mfu_text(_row(report, "cuda:mi300", "forward")) == "-"  # no ceiling, no MFU
    assert f"MFU roofline (measured, beside the peak): {ROOF.source}" in report.peaks
    assert "MFU % of datasheet: table: h100 float32 dense" in report.peaks


def test_an_ok_row_above_100_percent_mfu_is_marked_not_printed_plainly() -> None:
    res = syn.result("r3", 0, "cpu", CPU)
    fwd = res.phases["forward"]
    res.phases["forward"] = fwd.model_copy(update={"mfu": 1.12})  # a bug elsewhere: judge() should not let it be ok
    rep = build_report(records_from_results([res]))
    row = _row(rep, "cpu", "forward")
    assert row.status == "ok"
    assert "(ABOVE PEAK)" in mfu_text(row) and "ABOVE-PEAK" in cells(row)[-1]
    assert any(f.kind == "above-peak" and "112.0%" in f.text for f in row.flags)
    assert '<tr class="status-ok baseline above-peak">' in render(rep, "html")
    assert all("(ABOVE PEAK)" not in mfu_text(r) for r in rep.rows if r.phase and r.phase.mfu and r.phase.mfu <= 1), (
        "rows within their peak are printed plainly"
    )


def test_unverified_is_styled_apart_from_ok_and_invalid() -> None:
    assert STATUS_STYLE["unverified"] not in (STATUS_STYLE["ok"], STATUS_STYLE["invalid"])
    html = render(build_report(records_from_results(_results())), "html")
    assert "tr.status-unverified td" in html and ".flag-unverified" in html
    assert '<tr class="status-unverified">' in html and 'class="flag flag-unverified"' in html


def test_plot_labels_carry_the_flags(report: Report) -> None:
    assert plots.flag_tags(_row(report, "cuda:mi300", "forward")) == " unverified"
    assert plots.flag_tags(_row(report, "cpu", "forward")) == " contended"
    assert plots.flag_tags(_row(report, "cpu", "train")) == " drift"
    assert "outlier" in plots.flag_tags(_row(report, "cuda:h100", "train"))
    assert plots.time_bars_png(report.groups[0]) and plots.speedup_png(report.groups[0])  # they still draw


def test_history_marks_and_counts_flagged_points() -> None:
    quiet = syn.result("n1", 0, "cpu", CPU)
    busy = syn.flagged(syn.result("n2", 0, "cpu", CPU), "forward", host=BUSY)
    section = results_section([quiet, busy])
    assert section is not None and "2 results, 0 regressions, 1 contended" in section[1]


def test_diff_shows_how_each_phase_was_measured() -> None:
    a = syn.result("n1", 0, "cpu", CPU)
    b = syn.flagged(syn.result("n2", 0, "cpu", CPU), "forward", host=BUSY, roofline=ROOF)
    b.fresh_process = True
    rows = {(s, k): (va, vb) for s, k, va, vb in environment_diff(a, b).rows}
    assert rows["measurement", "forward.contended"] == ("-", "True")
    assert rows["measurement", "forward.load_avg_1m"] == ("-", "2.9")
    assert rows["peak", "forward.roofline_source"] == ("-", ROOF.source)
    assert rows["job", "fresh_process"] == ("-", "True")


# -- every format, through the CLI, against a real Redis -------------------------------------------


def _check(fmt: str, text: str, compact: bool = False) -> None:
    """The verdicts and flags of `_results()` in one rendered report (`compact`: the terminal's
    default table, without the repeats column and the speedup's notes: `--wide` has them)."""
    if fmt == "json":
        doc = json.loads(text)
        assert doc["status_counts"] == {"ok": 2, "unverified": 1}
        rows = {(r["device"], r["phase"]): r for r in doc["rows"]}
    elif fmt == "csv":
        rows = {(r["device"], r["phase"]): r for r in csv.DictReader(io.StringIO(text))}
    if fmt in ("json", "csv"):
        fwd, amd = rows["cpu", "forward"], rows["cuda:mi300", "forward"]
        assert amd["status"] == "unverified" and f"unverified: {NO_CEILING}" in str(amd["flags"])
        assert str(amd["speedup_unverified"]) == "result"
        assert str(fwd["contended"]) == "True" and fwd["contended_reason"] == BUSY.reason
        assert float(fwd["lock_wait_s"]) == 0.75 and fwd["repeats_stop"] == "target"
        assert fwd["peak_kind"] == "theoretical" and fwd["roofline_source"] == ROOF.source
        assert 0 < float(fwd["mfu"]) < float(fwd["mfu_roofline"])
        assert str(rows["cpu", "train"]["drift"]) == "True" and str(rows["cuda:h100", "train"]["outlier"]) == "True"
        assert "outlier: slowest repeat" in str(rows["cuda:h100", "train"]["flags"])
        assert {str(r["status"]) for r in rows.values()} == {"ok", "unverified"}  # never an unverified "ok"
        return
    # terminal, Markdown, HTML: the counts in the header, each flag's label and full text, the peaks
    wide_only = ("(unverified)", "5 (auto: target)")
    for needle in (
        "3 results (2 ok, 1 unverified)",
        NO_CEILING,
        "unverified",
        "(unverified)",
        "contended",
        BUSY.reason,
        "drift",
        "outlier",
        "% of theoretical",
        "(roofline ",
        ROOF.source,
        "% of datasheet",
        "5 (auto: target)",
        "waited for the host lock",
    ):
        if not (compact and needle in wide_only):
            assert needle in text, (fmt, needle)


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_shows_every_flag_in_every_format(stored: ResultStore, tmp_path: Path, fmt: str) -> None:
    code, text = cli("report", "r1", "--format", fmt)
    assert code == 0, text
    _check(fmt, text, compact=fmt == "terminal")
    if fmt == "terminal":
        code, text = cli("report", "r1", "--wide")
        assert code == 0, text
        _check(fmt, text)
    out = tmp_path / f"report{SUFFIX[fmt]}"
    code, text = cli("report", "r1", "-o", str(out))
    assert code == 0, text
    _check(fmt, out.read_text(encoding="utf-8"))


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "csv", "html"])
def test_farm_results_shows_every_flag(stored: ResultStore, fmt: str) -> None:
    code, text = cli("results", "r1", "--format", fmt)
    assert code == 0, text
    _check(fmt, text, compact=fmt == "terminal")
    if fmt == "terminal":
        code, text = cli("results", "r1", "--wide")
        assert code == 0, text
        _check(fmt, text)


def test_farm_results_json_carries_the_fields(stored: ResultStore) -> None:
    code, text = cli("results", "r1", "--json")
    assert code == 0, text
    by_device = {r["device"]: r for r in json.loads(text)}
    assert by_device["cuda:mi300"]["status"] == "unverified"
    fwd = by_device["cpu"]["phases"]["forward"]
    assert fwd["host"]["contended"] and fwd["roofline_source"] == ROOF.source and fwd["repeats_stop"] == "target"
    assert by_device["cuda"]["phases"]["train"]["stats"]["outlier"] is True


def test_farm_run_output_shows_status_flags_peak_and_roofline(capsys: pytest.CaptureFixture[str]) -> None:
    """`farm run` prints through emit_results: the same table, the counts, and how it was measured."""
    results = _results()
    results[0].fresh_process = True
    results[0].cpu_gemm = CPU_GEMM_ONEDNN
    emit_results(results, "terminal", None, title="gpt2, batch 1 x seq 128, float32")
    text = capsys.readouterr().out
    _check("terminal", text, compact=True)
    assert "forward.host_lock_wait=750 ms (not timed)" in text and "forward.load_avg_1m=2.90" in text
    assert "forward: repeats auto stopped by target (n=5)" in text and "fresh process" in text
    assert "float32 linears and attention on oneDNN" in text


def test_farm_run_names_the_peak_of_a_real_cpu_measurement() -> None:
    pytest.importorskip("torch")
    args = ["run", "--model", "gpt2-tiny", "--seq", "16", "--phases", "forward", "--repeats", "3", "--devices", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 result (1 ok)" in res.stdout
    # the MFU against the named theoretical peak, under 100%, the roofline beside it, both sources below
    mfu = re.search(r"(\d+\.\d)% of theoretical \(roofline \d+\.\d%\)", res.stdout)
    assert mfu is not None and float(mfu[1]) < 100, res.stdout
    assert "MFU % of theoretical: theoretical: " in res.stdout and "MFU roofline (measured" in res.stdout


# -- records: the new fields survive the compact summary; old summaries and results still read --------


def test_summary_round_trip_carries_every_new_field() -> None:
    results = _results()
    results[0].fresh_process = False
    for res in results:
        rec = record_from_dict(res.model_dump(mode="json"))
        back = record_from_summary(json.loads(summary_json(rec, 123)))
        assert back == rec
    rec = record_from_dict(results[0].model_dump(mode="json"))
    p = rec.phases["forward"]
    assert (p.contended, p.contended_reason, p.lock_wait_s, p.load_avg_1m) == (True, BUSY.reason, 0.75, 2.9)
    assert (p.roofline_flops, p.roofline_source, p.repeats_stop) == (ROOF.flops, ROOF.source, "target")
    assert rec.phases["train"].drift and rec.fresh_process is False


def _old_result_doc(res: JobResult) -> dict[str, Any]:
    """A result as stored before these fields existed (no host, roofline, repeats_stop, fresh_process,
    outlier or drift)."""
    doc = res.model_dump(mode="json")
    doc.pop("fresh_process")
    for p in doc["phases"].values():
        for k in ("host", "roofline_flops", "roofline_source", "repeats_stop"):
            p.pop(k)
        if p["stats"]:
            p["stats"].pop("outlier")
            p["stats"].pop("drift")
    return doc


def _v2_summary(doc: dict[str, Any], result_bytes: int) -> str:
    """A summary in the layout of SUMMARY_VERSION 2 (the one before this one), as it was written."""
    rec = record_from_dict(doc)
    head_fields = [
        "job_id", "run_id", "device", "torch_device", "status", "error", "warnings", "spec_hash", "model_name",
        "params", "batch", "seq", "dtype", "matmul_precision", "machine_tag", "hostname", "cpu_model", "gpu_names",
        "torch_version", "cuda_version", "farm_version", "threads", "finished_at",
    ]  # fmt: skip
    floats_f = ["median_s", "ci_low_s", "ci_high_s", "ci_coverage", "iqr_ratio", "tokens_per_s", "achieved_flops"]
    floats_f += ["mfu", "peak_flops"]
    other = ["name", "status", "error", "n", "noisy", "peak_source", "peak_memory_bytes", "memory_kind"]
    floats: list[float] = []
    phases = []
    for p in rec.phases.values():
        values = [getattr(p, f) for f in floats_f]
        nones = sum(1 << i for i, v in enumerate(values) if v is None)
        phases.append([*(getattr(p, f) for f in other), p.invalid_reason, len(p.times), nones])
        floats += [*p.times, *(0.0 if v is None else v for v in values)]
    packed = base64.b64encode(np.asarray(floats, dtype="<f8").tobytes()).decode("ascii")
    return json.dumps([result_bytes, 2, *(getattr(rec, f) for f in head_fields), phases, packed])


def test_old_summaries_and_old_results_still_read(stored: ResultStore) -> None:
    old = syn.result("r0", 0, "cpu", CPU)
    doc = _old_result_doc(old)
    raw = json.dumps(doc)
    stored.r.set(stored.key("result", old.job_id), raw)  # as an older farm stored it
    stored.r.set(stored.key("summary", old.job_id), _v2_summary(doc, len(raw.encode())))
    assert record_from_summary(json.loads(_v2_summary(doc, 1))) is None  # another version: re-derived
    (rec,) = stored.load_records([old.job_id])
    assert isinstance(rec, Record) and rec.status == "ok" and rec.fresh_process is None
    p = rec.phases["forward"]
    assert (p.outlier, p.drift, p.contended, p.lock_wait_s, p.roofline_flops, p.repeats_stop) == (
        False,
        False,
        False,
        None,
        None,
        None,
    )
    assert p.median_s == pytest.approx(0.50) and p.mfu == pytest.approx(old.phases["forward"].mfu)
    row = json.loads(stored.r.get(stored.key("summary", old.job_id)))
    assert row[1] == SUMMARY_VERSION  # the summary was rewritten in the current layout
    assert stored.load_records([old.job_id]) == [rec]  # and reads back as the same record
    rep = build_report([rec])
    for fmt in FORMATS:
        assert render(rep, fmt)
    assert rep.status_counts() == {"ok": 1} and mfu_text(_row(rep, "cpu", "forward")).endswith("% of theoretical")
