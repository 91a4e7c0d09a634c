"""The cells of a report row, shared by every format: display text per column, the flag labels,
the header lines, and the same row as plain values (CSV and JSON). Never imports torch."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, RenderableType

from farm.reports.report import Report, Row, peak_kind

SEVERE = {"invalid", "above-peak", "failed", "oom", "timeout", "cancelled"}

# The one status-colour map (Rich styles) of every format and listing: job and phase statuses,
# job states and regression verdicts.
STATUS_STYLE = {
    "ok": "green",
    "done": "green",
    "unverified": "bold cyan",  # measured, unchecked: neither ok's green nor invalid's magenta
    "invalid": "bold magenta",
    "above-peak": "bold magenta",
    "failed": "bold red",
    "oom": "bold red",
    "timeout": "bold yellow",
    "cancelled": "dim",
    "unserved": "yellow",
    "skipped": "red",
    "regression": "bold red",
    "improvement": "green",
    "no-verdict": "dim",
}
COLUMNS = [
    "run",
    "machine",
    "device",
    "phase",
    "median",
    "95% CI (cov.)",
    "n",
    "tokens/s",
    "TFLOP/s",
    "MFU",
    "peak mem",
    "speedup [95% CI]",
    "flags",
]


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    # Three significant digits; the unit is chosen after rounding, so 0.9996 s is "1 s", not "1e+03 ms".
    r = float(f"{s:.3g}")
    if r >= 100:
        return f"{s:.0f} s"
    if r >= 1:
        return f"{r:g} s"
    if r >= 1e-3:
        return f"{r * 1e3:.3g} ms"
    return f"{r * 1e6:.3g} µs"


def fmt_bytes(b: int | None) -> str:
    if not b:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b} B"


def speedup_text(row: Row) -> str:
    if row.is_baseline:
        return "baseline"
    s = row.speedup
    if s is None:
        return "-"
    if s.low is None or s.high is None:
        text = f"{s.value:.3g}× ({s.note or 'no CI'})"
    else:
        text = f"{s.value:.3g}× [{s.low:.3g}, {s.high:.3g}]"
        extra = [e for e in (s.note, f"coverage {s.coverage:.0%}" if s.coverage is not None else None) if e]
        if extra:
            text += f" ({'; '.join(extra)})"
    side = row.speedup_unverified
    if side:
        text += " (unverified)" if side == "result" else f" ({side} unverified)"
    return text


def roofline_fraction(row: Row) -> float | None:
    """Achieved FLOP/s over the measured roofline, when the phase has both."""
    p = row.phase
    if p is None or not p.achieved_flops or not p.roofline_flops:
        return None
    return p.achieved_flops / p.roofline_flops


def mfu_text(row: Row) -> str:
    """The MFU naming its peak's kind, the roofline fraction beside it: `31.0% of theoretical (roofline 58.0%)`.

    An `ok` row above 100% is marked (judge() makes such a phase invalid: it is a bug elsewhere).
    """
    p = row.phase
    if p is None:
        return "-"
    text = "-"
    if p.mfu is not None:
        text = f"{p.mfu:.1%} of {peak_kind(p.peak_source)}"
        if p.mfu > 1.0 and row.status == "ok":
            text += " (ABOVE PEAK)"
    roof = roofline_fraction(row)
    if roof is not None:
        text = f"{text} (roofline {roof:.1%})" if p.mfu is not None else f"- (roofline {roof:.1%})"
    return text


def repeats_text(row: Row) -> str:
    p = row.phase
    if p is None:
        return "0"
    return f"{p.n} (auto: {p.repeats_stop})" if p.repeats_stop else str(p.n)


def flag_labels(row: Row) -> str:
    kinds = dict.fromkeys(f.kind for f in row.flags)  # one label per kind; the full texts are listed apart
    return ", ".join(k.upper() if k in SEVERE else k for k in kinds)


def cells(row: Row) -> list[str]:
    """The display cells of a row, in `COLUMNS` order."""
    rec, p = row.record, row.phase
    ci = "-"
    if p and p.n > 1 and p.ci_low_s is not None and p.ci_high_s is not None:
        ci = f"{fmt_seconds(p.ci_low_s)} – {fmt_seconds(p.ci_high_s)} ({p.ci_coverage or 0:.0%})"
    return [
        rec.run_id,
        rec.machine_tag or "-",
        rec.device,
        row.phase_name,
        fmt_seconds(p.median_s) if p else "-",
        ci,
        repeats_text(row),
        f"{p.tokens_per_s:,.0f}" if p and p.tokens_per_s else "-",
        f"{p.achieved_flops / 1e12:.3g}" if p and p.achieved_flops else "-",
        mfu_text(row),
        fmt_bytes(p.peak_memory_bytes) if p else "-",
        speedup_text(row),
        flag_labels(row) or "ok",
    ]


def flag_lines(report: Report) -> list[str]:
    """Every flag in full: `device @ machine, run R, phase: kind: text`."""
    lines = []
    for row in report.rows:
        for f in row.flags:
            lines.append(f"{row.record.series}, run {row.record.run_id}, {row.phase_name}: {f.kind}: {f.text}")
    return lines


def status_summary(report: Report) -> str:
    """Results per status, unverified apart from ok: `3 ok, 1 unverified, 1 invalid`."""
    return ", ".join(f"{n} {status}" for status, n in report.status_counts().items()) or "none"


def header_lines(report: Report) -> list[str]:
    return [
        f"{len(report.records)} result{'' if len(report.records) == 1 else 's'} ({status_summary(report)}) · "
        f"baseline: {report.baseline.describe()} · "
        f"generated {report.generated_at.isoformat(timespec='seconds')}",
        "speedup = baseline median / result median (above 1: faster); CI: bootstrap of the ratio of medians",
    ]


# The columns of `row_dict`, in order: the CSV header, written even when a report has no rows.
ROW_FIELDS = (
    "run_id", "job_id", "machine", "device", "torch_device", "model", "params", "batch", "seq", "dtype",
    "spec_hash", "phase", "status", "n", "median_s", "ci_low_s", "ci_high_s", "ci_coverage", "iqr_over_median",
    "tokens_per_s", "achieved_flops", "mfu", "peak_flops", "peak_source", "peak_memory_bytes", "baseline_job_id",
    "is_baseline", "speedup", "speedup_ci_low", "speedup_ci_high", "farm_version", "torch_version", "flags", "error",
    "peak_kind", "roofline_flops", "roofline_source", "mfu_roofline", "speedup_unverified", "outlier", "drift",
    "contended", "contended_reason", "lock_wait_s", "load_avg_1m", "repeats_stop", "fresh_process",
    "speedup_note", "speedup_ci_coverage",
)  # fmt: skip


def row_dict(row: Row) -> dict[str, Any]:
    """One job and phase as plain values (seconds, FLOP/s, bytes): the CSV and JSON row."""
    rec, p, s = row.record, row.phase, row.speedup
    return {
        "run_id": rec.run_id,
        "job_id": rec.job_id,
        "machine": rec.machine_tag,
        "device": rec.device,
        "torch_device": rec.torch_device,
        "model": rec.model_name,
        "params": rec.params,
        "batch": rec.batch,
        "seq": rec.seq,
        "dtype": rec.dtype,
        "spec_hash": rec.spec_hash,
        "phase": row.phase_name,
        "status": row.status,
        "n": p.n if p else 0,
        "median_s": p.median_s if p else None,
        "ci_low_s": p.ci_low_s if p else None,
        "ci_high_s": p.ci_high_s if p else None,
        "ci_coverage": p.ci_coverage if p else None,
        "iqr_over_median": p.iqr_ratio if p else None,
        "tokens_per_s": p.tokens_per_s if p else None,
        "achieved_flops": p.achieved_flops if p else None,
        "mfu": p.mfu if p else None,
        "peak_flops": p.peak_flops if p else None,
        "peak_source": p.peak_source if p else None,
        "peak_memory_bytes": p.peak_memory_bytes if p else None,
        "baseline_job_id": row.baseline.job_id if row.baseline else None,
        "is_baseline": row.is_baseline,
        "speedup": s.value if s else (1.0 if row.is_baseline else None),
        "speedup_ci_low": s.low if s else None,
        "speedup_ci_high": s.high if s else None,
        "farm_version": rec.farm_version,
        "torch_version": rec.torch_version,
        "flags": [f"{f.kind}: {f.text}" for f in row.flags],
        "error": rec.error,
        "peak_kind": peak_kind(p.peak_source) if p and p.peak_source else None,
        "roofline_flops": p.roofline_flops if p else None,
        "roofline_source": p.roofline_source if p else None,
        "mfu_roofline": roofline_fraction(row),
        "speedup_unverified": row.speedup_unverified,
        "outlier": p.outlier if p else False,
        "drift": p.drift if p else False,
        "contended": p.contended if p else False,
        "contended_reason": p.contended_reason if p else None,
        "lock_wait_s": p.lock_wait_s if p else None,
        "load_avg_1m": p.load_avg_1m if p else None,
        "repeats_stop": p.repeats_stop if p else None,
        "fresh_process": rec.fresh_process,
        "speedup_note": s.note if s else None,
        "speedup_ci_coverage": s.coverage if s else None,
    }


def md(text: str) -> str:
    """Text for a Markdown table cell or line: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def plain_text(renderable: RenderableType, width: int = 200) -> str:
    """A Rich renderable as plain text without colour codes (the terminal format written to a file)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(renderable)
    return console.export_text()
