"""Report plots with matplotlib's Agg canvas (no pyplot, no display), returned as PNG bytes.

- `time_bars_png`: per phase, the median time of each result on a log scale, with its 95% CI
  as error bars; invalid results hatched (//), unverified ones dotted, each labelled with its
  flags (`flag_tags`); failed ones named without a bar.
- `speedup_png`: speedups against the baseline with their bootstrap CIs (log scale, 1 marked),
  labelled with their flags (an unverified side too).
- `scaling_png`: median time against model size (or tokens per step) when the results vary it
  (measured results: ok and unverified, the latter labelled).
- `history_png` (`history_figure`): a series' median per night; the series that are compared (one
  spec's phase on every machine and device) share one y axis and one x range (`history_scale`):
  the time unit chosen from the data's magnitude (s, ms, µs, named in the label), the x range the
  points' dates with a small margin, date ticks that fit the span.

Every figure is drawn with mathtext and LaTeX off (`cells.MATH_OFF`: a `$` in a machine or model
name is a dollar sign) and data text in labels goes through `cells.plot_label`. This module never
imports torch.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from farm.reports.cells import MATH_OFF, plot_label
from farm.reports.report import MEASURED, Group, Report, Row, phase_rank

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


def png_bytes(fig: Figure) -> bytes:
    """A figure as PNG bytes (Agg canvas, 100 dpi, tight bounding box)."""
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


def plain_log_ticks(axis: Axis) -> None:
    """A log axis labelled `0.01`, `1`, `100`: matplotlib's default labels are mathtext (`10^{-2}`),
    which `MATH_OFF` would show as its source text."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_x(ax: Axes, values: Sequence[float]) -> None:
    """Log x axis spanning the values with room for labels: bars start at the left edge."""
    ax.set_xscale("log")
    if values:
        lo, hi = min(values), max(values)
        ax.set_xlim(lo / 4, hi * 12)
    plain_log_ticks(ax.xaxis)


def _phases(rows: Sequence[Row]) -> list[str]:
    return sorted(dict.fromkeys(r.phase_name for r in rows if r.phase is not None), key=phase_rank)  # as they run


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
    return png_bytes(fig)


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
    return png_bytes(fig)


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
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
        ax.set_title(phase, fontsize=10)
        ax.set_xlabel("parameters" if axis == "params" else "tokens per step (batch × seq)", fontsize=8)
        ax.set_ylabel("median time, s", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("scaling (measured results: ok and unverified; invalid and failed left out)", fontsize=9)
    return png_bytes(fig)


# The flags that mark a result as measured in a disturbed state: drawn apart from the clean ones.
DISTURBED = ("contended", "noisy", "outlier", "drift", "throttled")
DISTURBED_COLOUR = "#E08020"
_DEVICE_COLOURS = ("#55A868", "#C44E52", "#8172B2", "#CCB974", "#64B5CD", "#937860", "#DA8BC3", "#8C8C8C")


def _device_order(rows: Sequence[Row]) -> list[str]:
    """The series (`device @ machine`) of the rows: the CPU (the baseline) first, then by name."""
    series = dict.fromkeys(r.record.series for r in rows)
    base = {r.record.series for r in rows if r.is_baseline}
    return sorted(series, key=lambda s: (s not in base, not s.startswith("cpu"), s))


@text_only
def devices_png(rows: Sequence[Row], title: str) -> bytes | None:
    """Device against device for one spec: per phase (in the order they run), each device's median
    time (log y) with its 95% CI as error bars, the CPU (the baseline) first and each other bar
    labelled with its speedup over it; a flagged bar (disturbed, unverified, invalid) hatched, its
    flags named under the speedup. None when no row has a time."""
    rows = [r for r in rows if r.phase is not None and r.phase.median_s and r.phase.median_s > 0]
    if not rows:
        return None
    phases = _phases(rows)
    series = _device_order(rows)[:MAX_BARS]
    colour = {
        s: KIND_COLOURS["cpu"] if s.startswith("cpu") else _DEVICE_COLOURS[i % len(_DEVICE_COLOURS)]
        for i, s in enumerate(series)
    }
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.5, 1.4 + 0.6 * len(series) * len(phases)), 3.4), layout="constrained")
    ax = fig.subplots()
    times: list[float] = []
    labelled: set[str] = set()
    for j, s in enumerate(series):
        for x, phase in enumerate(phases):
            row = next((r for r in rows if r.record.series == s and r.phase_name == phase), None)
            if row is None or row.phase is None or row.phase.median_s is None:
                continue
            p = row.phase
            med = float(p.median_s or 0.0)
            pos = x - 0.4 + width * (j + 0.5)
            tags = flag_tags(row)
            hatch = "//" if tags else None
            label = None if s in labelled else plot_label(s)  # one legend entry per device
            labelled.add(s)
            ax.bar(pos, med, width * 0.9, color=colour[s], hatch=hatch, edgecolor="black", lw=0.4, label=label)
            top = med
            if p.n > 1 and p.ci_low_s is not None and p.ci_high_s is not None:
                ax.errorbar(pos, med, yerr=[[med - p.ci_low_s], [p.ci_high_s - med]], fmt="none", ecolor="black",
                            capsize=3, lw=1)  # fmt: skip
                top = max(med, p.ci_high_s)
            times += [med, top]
            text = "baseline" if row.is_baseline else f"{row.speedup.value:.3g}×" if row.speedup else ""
            text += "".join(f"\n{t}" for t in tags.split())
            ax.annotate(text, (pos, top), ha="center", va="bottom", fontsize=6, xytext=(0, 2),
                        textcoords="offset points")  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylim(min(times) / 3, max(times) * 12)  # room above the bars for the labels
    plain_log_ticks(ax.yaxis)
    ax.set_xticks(range(len(phases)), phases, fontsize=9)
    ax.set_ylabel("median time, s (log; bars: 95% CI)", fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="upper left", ncols=min(4, len(series)))
    ax.set_title(f"{plot_label(title, 100)}: device against device, speedup over the CPU", fontsize=9)
    return png_bytes(fig)


@dataclass(frozen=True)
class HistoryPoint:
    """One night of a series, as the history plot draws it."""

    when: datetime
    median_s: float
    low_s: float | None  # the median's 95% CI
    high_s: float | None
    disturbed: tuple[str, ...] = ()  # of DISTURBED: drawn apart from the clean line
    mark: str | None = None  # the night's verdict: regression, improvement, suspect


_MARKS = {"regression": ("^", "#d02020"), "improvement": ("v", "#20a040"), "suspect": ("D", "#b06000")}


# Time units for a y axis, largest first: the first whose factor puts the largest value at 1 or more.
_UNITS = (("s", 1.0), ("ms", 1e3), ("µs", 1e6))
# A history plot's x range: the points' span and this share of it either side, at least `_X_PAD`.
_X_MARGIN = 0.05
_X_PAD = timedelta(minutes=2)


def time_unit(values_s: Iterable[float]) -> tuple[str, float]:
    """The unit (`s`, `ms`, `µs`) and its factor for times of this magnitude: the largest value
    reads 1 or more (0.4 s is 400 ms, 2e-4 s is 200 µs); `s` when there is no positive value."""
    top = max((v for v in values_s if v > 0), default=0.0)
    for name, factor in _UNITS:
        if top * factor >= 1.0:
            return name, factor
    return _UNITS[-1] if top > 0 else _UNITS[0]


@dataclass(frozen=True)
class HistoryScale:
    """The axes shared by the history plots of series that are compared (one spec's phase, on every
    machine and device): one time unit, one y range, one x range fitted to the points' dates."""

    unit: str
    factor: float  # seconds to `unit`
    y_top_s: float  # the y range is [0, y_top_s], in seconds
    x_lo: datetime
    x_hi: datetime


def _top_s(p: HistoryPoint) -> float:
    return max(p.median_s, p.high_s if p.high_s is not None else p.median_s)


def history_scale(series: Iterable[Sequence[HistoryPoint]]) -> HistoryScale | None:
    """The shared axes of these series: unit from the largest time, y from 0 to 8% above it, x the
    first to the last date with `_X_MARGIN` of the span (at least `_X_PAD`) either side. None when
    there are no points."""
    points = [p for pts in series for p in pts]
    if not points:
        return None
    top = max(_top_s(p) for p in points)
    unit, factor = time_unit([top])
    lo, hi = min(p.when for p in points), max(p.when for p in points)
    pad = max((hi - lo) * _X_MARGIN, _X_PAD)
    return HistoryScale(unit, factor, top * 1.08 if top > 0 else 1.0, lo - pad, hi + pad)


def apply_history_scale(ax: Axes, scale: HistoryScale) -> None:
    """Set a history plot's axes to `scale` (values already drawn in its unit): the y label naming
    the unit, the y and x ranges, date ticks that fit the span (minutes, hours, days, months)."""
    ax.set_ylabel(f"median time ({scale.unit})", fontsize=8)
    ax.set_ylim(0.0, scale.y_top_s * scale.factor)
    lo: Any = scale.x_lo  # datetimes: matplotlib takes them (its stubs say floats)
    hi: Any = scale.x_hi
    ax.set_xlim(lo, hi)
    locator = AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.xaxis.get_offset_text().set_fontsize(7)  # the date the ticks' times are on


@text_only
def history_figure(title: str, points: Sequence[HistoryPoint], scale: HistoryScale | None = None) -> Figure | None:
    """A series' median per night with its 95% CI: the clean nights joined by a line, the disturbed
    ones (`DISTURBED` flags) drawn apart, hollow and unjoined, so that a contended night neither
    bends the line nor reads as a step; regressions, improvements and suspects marked. `scale`: the
    axes shared with the series it is compared with (`history_scale`; this series' own by default)."""
    if not points:
        return None
    scale = scale or history_scale([points])
    assert scale is not None
    f = scale.factor
    fig = Figure(figsize=(7.0, 2.8), layout="constrained")
    ax = fig.subplots()
    for disturbed in (False, True):
        pts = [p for p in points if bool(p.disturbed) == disturbed]
        if not pts:
            continue
        xs: list[Any] = [p.when for p in pts]  # datetimes: matplotlib plots them (its stubs say floats)
        ys = [p.median_s * f for p in pts]
        err = [[f * max(0.0, p.median_s - (p.low_s if p.low_s is not None else p.median_s)) for p in pts],
               [f * max(0.0, (p.high_s if p.high_s is not None else p.median_s) - p.median_s)
                for p in pts]]  # fmt: skip
        if disturbed:
            kinds = sorted({k for p in pts for k in p.disturbed}, key=DISTURBED.index)
            ax.errorbar(xs, ys, yerr=err, fmt="s", ms=6, mfc="none", mec=DISTURBED_COLOUR, ecolor="#f0c090",
                        capsize=2, lw=0, elinewidth=1, label=f"disturbed ({', '.join(kinds)}): apart")  # fmt: skip
        else:
            ax.errorbar(xs, ys, yerr=err, fmt="o-", ms=3, lw=1, color="#4060a0", ecolor="#9ab", capsize=2,
                        label="clean nights")  # fmt: skip
    for kind, (marker, colour) in _MARKS.items():
        sel = [p for p in points if p.mark == kind]
        if sel:
            when: list[Any] = [p.when for p in sel]
            ax.scatter(when, [p.median_s * f for p in sel], marker=marker, s=70, color=colour, zorder=3, label=kind)
    ax.set_title(plot_label(title, 120), fontsize=9)
    ax.tick_params(labelsize=7)
    apply_history_scale(ax, scale)
    ax.legend(fontsize=7, loc="lower left")
    return fig


@text_only
def history_png(title: str, points: Sequence[HistoryPoint], scale: HistoryScale | None = None) -> bytes | None:
    """`history_figure` as PNG bytes; None when there are no points."""
    fig = history_figure(title, points, scale)
    return png_bytes(fig) if fig is not None else None
