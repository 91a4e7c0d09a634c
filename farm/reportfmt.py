"""Report formats: terminal (Rich), Markdown, CSV (one row per job and phase) and JSON.

Every format carries the same flags: a short label in the table, the full text below it (CSV and
JSON: a `flags` field per row and `notes` for the report). HTML is `farm.htmlreport`.
This module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from farm.report import Report, Row

FORMATS = ("terminal", "markdown", "csv", "json", "html")
SEVERE = {"invalid", "failed", "oom", "timeout", "cancelled"}
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
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


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
        return f"{s.value:.3g}× (no CI: n<2)"
    return f"{s.value:.3g}× [{s.low:.3g}, {s.high:.3g}]"


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
        str(p.n) if p else "0",
        f"{p.tokens_per_s:,.0f}" if p and p.tokens_per_s else "-",
        f"{p.achieved_flops / 1e12:.3g}" if p and p.achieved_flops else "-",
        f"{p.mfu:.1%}" if p and p.mfu is not None else "-",
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


def header_lines(report: Report) -> list[str]:
    return [
        f"{len(report.records)} results · baseline: {report.baseline.describe()} · "
        f"generated {report.generated_at.isoformat(timespec='seconds')}",
        "speedup = baseline median / result median (above 1: faster); CI: bootstrap of the ratio of medians",
    ]


_STYLE = {"invalid": "bold magenta", "failed": "bold red", "oom": "bold red", "timeout": "bold yellow"}


def to_terminal(report: Report) -> Group:
    """Rich renderables: one table per spec, then notes and flags."""
    parts: list[Any] = [Text(report.title, style="bold"), *(Text(line, style="dim") for line in header_lines(report))]
    for g in report.groups:
        t = Table(title=g.title, header_style="bold", title_justify="left")
        for i, col in enumerate(COLUMNS):
            t.add_column(col, justify="right" if 4 <= i <= 11 else "left")
        for row in g.rows:
            style = next((_STYLE[f.kind] for f in row.flags if f.kind in _STYLE), None)
            t.add_row(*cells(row), style=style)
        parts.append(t)
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    for line in flag_lines(report):
        parts.append(Text(f"flag: {line}"))
    return Group(*parts)


def to_text(report: Report, width: int = 200) -> str:
    """The terminal format as plain text (for `-o report.txt`)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(to_terminal(report))
    return console.export_text()


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    out = [f"# {_md(report.title)}", "", *(f"{_md(line)}  " for line in header_lines(report)), ""]
    for g in report.groups:
        out += [f"## {_md(g.title)}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(_md(c) for c in cells(row)) + " |" for row in g.rows]
        out.append("")
    if report.notes:
        out += ["**Notes**", "", *(f"- {_md(n)}" for n in report.notes), ""]
    lines = flag_lines(report)
    if lines:
        out += ["**Flags**", "", *(f"- {_md(line)}" for line in lines), ""]
    return "\n".join(out)


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
    }


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    w: csv.DictWriter[str] | None = None
    for row in report.rows:
        d = row_dict(row)
        d["flags"] = "; ".join(d["flags"])
        if w is None:
            w = csv.DictWriter(buf, fieldnames=list(d), lineterminator="\n")
            w.writeheader()
        w.writerow(d)
    return buf.getvalue()


def to_json(report: Report) -> str:
    doc = {
        "title": report.title,
        "generated_at": report.generated_at.isoformat(),
        "selection": report.selection.describe(),
        "baseline": report.baseline.describe(),
        "notes": report.notes,
        "results": len(report.records),
        "rows": [{**row_dict(r), "times_s": r.phase.times if r.phase else []} for r in report.rows],
    }
    return json.dumps(doc, indent=1)


def render(report: Report, fmt: str) -> str:
    """The report as text in a format of `FORMATS` (terminal: plain text, no colour)."""
    if fmt == "terminal":
        return to_text(report)
    if fmt == "markdown":
        return to_markdown(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "html":
        from farm.htmlreport import render_html  # matplotlib is imported only for HTML

        return render_html(report)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
