"""Terminal rendering of job results (Rich tables) shared by run, submit and results."""

from __future__ import annotations

import json
from collections.abc import Iterable

from rich.table import Table

from farm.reports.cells import fmt_bytes, fmt_seconds
from farm.results.result import JobResult

STATUS_STYLE = {
    "ok": "green",
    "invalid": "bold magenta",
    "failed": "bold red",
    "oom": "bold red",
    "timeout": "bold yellow",
    "cancelled": "dim",
}


def fmt_flops(f: float | None) -> str:
    if not f:
        return "-"
    if f >= 1e12:
        return f"{f / 1e12:.2f} T"
    return f"{f / 1e9:.1f} G"


def results_table(results: Iterable[JobResult], title: str | None = None) -> Table:
    """One row per job and phase: median with its CI, FLOP/s, MFU, memory, status."""
    t = Table(title=title, header_style="bold", show_lines=False)
    for col, justify in [
        ("device", "left"),
        ("model", "left"),
        ("phase", "left"),
        ("median", "right"),
        ("CI (cov.)", "right"),
        ("n", "right"),
        ("FLOP/s", "right"),
        ("MFU", "right"),
        ("tokens/s", "right"),
        ("peak mem", "right"),
        ("status", "left"),
    ]:
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in results:
        where = f"{r.device} ({r.torch_device})" if r.torch_device and r.torch_device != r.device else r.device
        if not r.phases:
            st = STATUS_STYLE.get(r.status, "")
            t.add_row(
                where,
                r.model_name,
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                f"[{st}]{r.status}[/]: {(r.error or '').splitlines()[0][:80] if r.error else ''}",
            )
            continue
        for name, p in r.phases.items():
            s = p.stats
            ci = f"{fmt_seconds(s.ci_low_s)}–{fmt_seconds(s.ci_high_s)} ({s.ci_coverage:.0%})" if s and s.n > 1 else "-"
            flags = [p.status] if p.status != "ok" else []
            if s and s.noisy:
                flags.append("noisy")
            status = ", ".join(flags) or "ok"
            st = STATUS_STYLE.get(p.status, "")
            t.add_row(
                where,
                r.model_name,
                name,
                fmt_seconds(p.median_s),
                ci,
                str(s.n if s else 0),
                fmt_flops(p.achieved_flops),
                f"{p.mfu:.1%}" if p.mfu is not None else "-",
                f"{p.tokens_per_s:,.0f}" if p.tokens_per_s else "-",
                fmt_bytes(p.peak_memory_bytes),
                f"[{st}]{status}[/]",
            )
    return t


def breakdown_lines(results: Iterable[JobResult]) -> list[str]:
    """The parts timed apart from the phases (device set-up, transfers, compile), one line per job."""
    lines = []
    for r in results:
        parts = [
            f"{p}.{k}={fmt_seconds(v)}"
            for p, ph in r.phases.items()
            for k, v in ph.breakdown.items()
            if k.endswith("_s")
        ]
        if parts:
            lines.append(f"{r.device}: " + ", ".join(parts))
        for w in r.warnings:
            lines.append(f"{r.device}: warning: {w}")
    return lines


def results_json(results: Iterable[JobResult]) -> str:
    return json.dumps([r.model_dump(mode="json") for r in results], indent=2)
