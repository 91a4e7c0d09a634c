"""Report plots with matplotlib's Agg canvas (no pyplot, no display), returned as PNG bytes.

- `time_bars_png`: per phase, the median time of each result on a log scale, with its 95% CI
  as error bars; invalid results hatched (//), unverified ones dotted, each labelled with its
  flags (`flag_tags`); failed ones named without a bar.
- `speedup_png`: speedups against the baseline with their bootstrap CIs (log scale, 1 marked),
  labelled with their flags (an unverified side too).
- `scaling_png`: median time against model size (or tokens per step) when the results vary it
  (measured results: ok and unverified, the latter labelled).

Every figure is drawn with mathtext and LaTeX off (`cells.MATH_OFF`: a `$` in a machine or model
name is a dollar sign) and data text in labels goes through `cells.plot_label`. This module never
imports torch.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from farm.reports.cells import MATH_OFF, plot_label
from farm.reports.report import MEASURED, Group, Report, Row

KIND_COLOURS = {"cpu": "#4C72B0", "cuda": "#55A868", "mps": "#8172B2"}
INVALID_COLOUR = "#C44E9B"
MAX_BARS = 40
HATCH = {"invalid": "//", "unverified": ".."}
# The flags a plot label names, in this order (the severe ones in capitals, as in the tables).
TAGGED = ("invalid", "above-peak", "unverified", "noisy", "outlier", "drift", "contended", "throttled")


P = ParamSpec("P")
R = TypeVar("R")


def text_only(draw: Callable[P, R]) -> Callable[P, R]:
    """Run a drawing function under `MATH_OFF`: its labels, made and drawn inside, are plain text."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with rc_context(MATH_OFF):
            return draw(*args, **kwargs)

    return wrapper


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def row_label(row: Row, with_run: bool) -> str:
    label = plot_label(row.record.series)
    return f"{label} [{row.record.run_id}]" if with_run else label


def flag_tags(row: Row) -> str:
    """The row's flags as a plot label suffix: ` INVALID`, ` unverified noisy`, ` outlier drift contended`."""
    kinds = {f.kind for f in row.flags}
    if row.speedup_unverified:
        kinds.add("unverified")
    tags = [k.upper() if k in ("invalid", "above-peak") else k for k in TAGGED if k in kinds]
    return "".join(f" {t}" for t in tags)


def _colour(row: Row) -> str:
    if row.status == "invalid":
        return INVALID_COLOUR
    return KIND_COLOURS.get(row.record.device.split(":", 1)[0], "#777777")


def _log_x(ax: Axes, values: Sequence[float]) -> None:
    """Log x axis spanning the values with room for labels: bars start at the left edge."""
    ax.set_xscale("log")
    if values:
        lo, hi = min(values), max(values)
        ax.set_xlim(lo / 4, hi * 12)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _phases(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r.phase_name for r in rows if r.phase is not None))


@text_only
def time_bars_png(group: Group) -> bytes | None:
    """Horizontal bars of median time per result, one panel per phase, log x with CI whiskers."""
    phases = _phases(group.rows)
    if not phases:
        return None
    with_run = len({r.record.run_id for r in group.rows}) > 1
    per_phase = {p: [r for r in group.rows if r.phase_name == p][:MAX_BARS] for p in phases}
    height = max(len(v) for v in per_phase.values())
    fig = Figure(figsize=(4.2 * len(phases), 1.2 + 0.42 * height), layout="constrained")
    axes = fig.subplots(1, len(phases), squeeze=False)[0]
    for ax, phase in zip(axes, phases, strict=True):
        rows = per_phase[phase]
        ys = list(range(len(rows)))[::-1]
        for y, row in zip(ys, rows, strict=True):
            p = row.phase
            assert p is not None
            if p.median_s is None or p.median_s <= 0:
                ax.text(0.02, y, f"{row.status}: no time", va="center", transform=ax.get_yaxis_transform(), color="red")
                continue
            err = None
            if p.n > 1 and p.ci_low_s is not None and p.ci_high_s is not None:
                err = [[p.median_s - p.ci_low_s], [p.ci_high_s - p.median_s]]
            ax.barh(y, p.median_s, color=_colour(row), hatch=HATCH.get(row.status), edgecolor="black", lw=0.4)
            if err:
                ax.errorbar(p.median_s, y, xerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
            ax.annotate(
                f" {p.median_s:.3g} s{flag_tags(row)}",
                (max(p.median_s, p.ci_high_s or 0.0) if err else p.median_s, y),  # right of the whisker
                va="center",
                fontsize=7,
                xytext=(2, 0),
                textcoords="offset points",
            )
        _log_x(ax, [r.phase.median_s for r in rows if r.phase and r.phase.median_s])
        ax.set_yticks(ys, [row_label(r, with_run) for r in rows], fontsize=7)
        ax.set_title(phase, fontsize=10)
        ax.set_xlabel("median time, s (log; bars: 95% CI)", fontsize=8)
    fig.suptitle(plot_label(group.title, 120), fontsize=9)
    return _png(fig)


@text_only
def speedup_png(group: Group) -> bytes | None:
    """Speedup of each result over its baseline per phase, log x, bootstrap 95% CI whiskers."""
    rows = [r for r in group.rows if r.speedup is not None][:MAX_BARS]
    if not rows:
        return None
    with_run = len({r.record.run_id for r in rows}) > 1
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(rows)), layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    for y, row in zip(ys, rows, strict=True):
        s = row.speedup
        assert s is not None
        hatch = ".." if row.speedup_unverified else None
        ax.barh(y, s.value - 1.0, left=1.0, color=_colour(row), hatch=hatch, edgecolor="black", lw=0.4)  # from 1
        if s.low is not None and s.high is not None:
            ax.errorbar(s.value, y, xerr=[[s.value - s.low], [s.high - s.value]], fmt="none", ecolor="black", capsize=3)
        ax.annotate(
            f" {s.value:.3g}×{flag_tags(row)}",
            (max(s.value, s.high or 0.0), y),
            va="center",
            fontsize=7,
            xytext=(2, 0),
            textcoords="offset points",
        )
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    _log_x(ax, [v for r in rows if r.speedup for v in (r.speedup.value, r.speedup.low, r.speedup.high, 1.0) if v])
    ax.set_yticks(ys, [f"{r.phase_name}: {row_label(r, with_run)}" for r in rows], fontsize=7)
    base = plot_label(rows[0].baseline.series) if rows[0].baseline else "baseline"
    ax.set_xlabel(f"speedup vs {base} (log; bars: bootstrap 95% CI)", fontsize=8)
    ax.set_title(plot_label(group.title, 120), fontsize=9)
    return _png(fig)


def scaling_axis(report: Report) -> str | None:
    """`params` when the results vary the model, `tokens` when they vary batch x seq, else None."""
    ok = [r for r in report.records if r.status in MEASURED]
    if len({r.params for r in ok}) > 1:
        return "params"
    if len({r.tokens for r in ok}) > 1:
        return "tokens"
    return None


@text_only
def scaling_png(report: Report) -> bytes | None:
    """Median time against model parameters (or batch x seq tokens), log-log, a line per device."""
    axis = scaling_axis(report)
    if axis is None:
        return None
    rows = [r for r in report.rows if r.phase is not None and r.status in MEASURED and r.phase.median_s]
    phases = _phases(rows)
    fig = Figure(figsize=(4.2 * len(phases), 3.8), layout="constrained")
    axes = fig.subplots(1, len(phases), squeeze=False)[0]
    for ax, phase in zip(axes, phases, strict=True):
        lines: dict[str, list[Row]] = {}
        for r in rows:
            if r.phase_name == phase:
                other = f"{r.record.batch}×{r.record.seq}" if axis == "params" else plot_label(r.record.model_name)
                unchecked = " unverified" if r.status == "unverified" else ""
                lines.setdefault(f"{plot_label(r.record.series)} ({other}){unchecked}", []).append(r)
        for label, pts in list(lines.items())[:12]:
            pts.sort(key=lambda r: getattr(r.record, axis))
            xs = [getattr(r.record, axis) for r in pts]
            ys = [r.phase.median_s for r in pts if r.phase]
            lo = [(r.phase.median_s or 0) - (r.phase.ci_low_s or r.phase.median_s or 0) for r in pts if r.phase]
            hi = [(r.phase.ci_high_s or r.phase.median_s or 0) - (r.phase.median_s or 0) for r in pts if r.phase]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(phase, fontsize=10)
        ax.set_xlabel("parameters" if axis == "params" else "tokens per step (batch × seq)", fontsize=8)
        ax.set_ylabel("median time, s", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("scaling (measured results: ok and unverified; invalid and failed left out)", fontsize=9)
    return _png(fig)
