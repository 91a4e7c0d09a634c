"""History view: a phase's time per night for a machine, with regressions and improvements marked.

One small plot per series (machine, device, spec hash, phase), the series of one spec's phase
sharing one y axis, time unit (s, ms, µs, from the data's magnitude) and x range fitted to their
dates (`farm.reports.plots.history_scale`): the median of each result with its
confidence interval of the median as an error bar, the points judged `regression` as red
triangles and `improvement` as green ones (`farm.nightly.regress`), points with a flag (unverified,
contended, outlier, drift: `point_flags`) circled in grey and counted in the caption. The view is an HTML fragment with
inline PNG images, for `farm report`'s HTML (`results_section` of `Report.history`, drawn by
`farm.reports.html.render_html`) or for a standalone page (`farm regressions --html FILE`).

A point whose `finished_at` lies outside `PLOTTED_DATES` (a year 9999 or 1900 typed into an import)
is left out of its plot and counted in the caption: one bad date never stops the plots of its
series or the report. Plots are drawn with mathtext off; data text is escaped (`farm.reports.cells`).
Never imports torch.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.nightly.regress import Point, SeriesKey, Verdict, build_series, detect
from farm.reports.cells import MATH_OFF, html_text, plot_label, write_text_atomic
from farm.results.result import JobResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from farm.reports.plots import HistoryScale

MAX_SERIES = 24
# The dates a history plot draws; a point outside is left out of the plot (the caption counts it).
PLOTTED_DATES = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
TITLE = "History: time per night, regressions marked"


def point_flags(p: Point) -> list[str]:
    """The flags of one history point's phase: unverified, contended, throttled, outlier, drift."""
    ph = p.result.phases[p.phase]
    flags = ["unverified"] if ph.status == "unverified" else []
    if ph.host is not None and ph.host.contended:
        flags.append("contended")
    if ph.telemetry is not None and ph.telemetry.throttled:
        flags.append("throttled")
    if ph.stats is not None:
        flags += [k for k, on in (("outlier", ph.stats.outlier), ("drift", ph.stats.drift)) if on]
    return flags


def plotted(p: Point) -> bool:
    """Whether a point's date is within `PLOTTED_DATES` (naive dates are taken as UTC)."""
    when = p.when if p.when.tzinfo is not None else p.when.replace(tzinfo=UTC)
    return PLOTTED_DATES[0] <= when < PLOTTED_DATES[1]


def _series_png(key: SeriesKey, points: Sequence[Point], marks: dict[str, str], scale: HistoryScale | None) -> str:
    """A base64 PNG of one series (points within `PLOTTED_DATES`), mathtext off."""
    from farm.reports.plots import png_bytes  # lazily: it imports matplotlib (a second at start-up)

    return base64.b64encode(png_bytes(series_figure(key, points, marks, scale))).decode()


def series_scale(points: Iterable[Sequence[Point]]) -> HistoryScale | None:
    """The axes shared by these series' plots (`farm.reports.plots.history_scale`): one unit, one y
    range, one x range fitted to their dates."""
    from farm.reports.plots import HistoryPoint, history_scale  # lazily: matplotlib costs a second at start-up

    return history_scale(
        [HistoryPoint(p.when, p.result.phases[p.phase].median_s or 0.0, None, _high(p)) for p in pts] for pts in points
    )


def _high(p: Point) -> float | None:
    st = p.result.phases[p.phase].stats
    return st.ci_high_s if st else None


def series_figure(key: SeriesKey, points: Sequence[Point], marks: dict[str, str], scale: HistoryScale | None) -> Figure:
    """One series' plot, its axes `scale` (shared with the series it is compared with; its own by
    default), mathtext off."""
    from matplotlib import rc_context  # lazily: matplotlib costs a second at start-up

    with rc_context(MATH_OFF):
        return _draw_series(key, points, marks, scale)


def _draw_series(key: SeriesKey, points: Sequence[Point], marks: dict[str, str], scale: HistoryScale | None) -> Figure:
    from matplotlib.figure import Figure  # lazily: matplotlib costs a second at start-up (see series_scale)

    from farm.reports.plots import apply_history_scale  # lazily: it imports matplotlib

    scale = scale or series_scale([points])
    xs: list[Any] = [p.when for p in points]  # datetimes: matplotlib plots them (its stubs say floats)
    f = scale.factor if scale else 1.0
    meds, lo, hi = [], [], []
    for p in points:
        st = p.result.phases[p.phase].stats
        med = p.result.phases[p.phase].median_s or 0.0
        meds.append(med * f)
        lo.append((med - st.ci_low_s) * f if st else 0.0)
        hi.append((st.ci_high_s - med) * f if st else 0.0)
    fig = Figure(figsize=(7.0, 2.6), dpi=90)
    ax = fig.subplots()
    ax.errorbar(xs, meds, yerr=[lo, hi], fmt="o-", ms=3, lw=1, color="#4060a0", ecolor="#9ab", capsize=2)
    flagged = [(x, m) for x, m, p in zip(xs, meds, points, strict=True) if point_flags(p)]
    if flagged:
        ax.scatter(
            [x for x, _ in flagged],
            [m for _, m in flagged],
            s=90,
            facecolors="none",
            edgecolors="#777",
            label="flagged",
        )
    for kind, marker, color in (("regression", "^", "#d02020"), ("improvement", "v", "#20a040")):
        sel = [(x, m) for x, m, p in zip(xs, meds, points, strict=True) if marks.get(p.result.job_id) == kind]
        if sel:
            ax.scatter([x for x, _ in sel], [m for _, m in sel], marker=marker, s=70, color=color, zorder=3, label=kind)
    machine, device, spec_hash, phase = key
    model = points[-1].result.model_name if points else "?"
    title = f"{plot_label(machine)} · {plot_label(device)} · {plot_label(model)} ({spec_hash}) · {plot_label(phase)}"
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if scale is not None:
        apply_history_scale(ax, scale)
    else:
        ax.set_ylabel("median time (s)", fontsize=8)
    if flagged or any(marks.get(p.result.job_id) in ("regression", "improvement") for p in points):
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def history_section(
    results: Iterable[JobResult],
    verdicts: Iterable[Verdict] | None = None,
    *,
    machine: str | None = None,
    phase: str | None = None,
    max_series: int = MAX_SERIES,
) -> tuple[str, str]:
    """(title, HTML fragment) of the history plots, series with a regression first."""
    results = list(results)
    series = build_series(results)
    if verdicts is None:
        verdicts = detect(results, since=min((p.when for pts in series.values() for p in pts), default=None))
    marks: dict[tuple[str, str], str] = {(v.job_id, v.phase): v.kind for v in verdicts}
    keys = [k for k in series if (machine is None or k[0] == machine) and (phase is None or k[3] == phase)]

    def rank(k: SeriesKey) -> tuple[int, SeriesKey]:
        kinds = {marks.get((p.result.job_id, k[3])) for p in series[k]}
        return (0 if "regression" in kinds else 1 if "improvement" in kinds else 2, k)

    keys.sort(key=rank)
    shown = keys[:max_series]
    plotted_pts = {k: [p for p in series[k] if plotted(p)] for k in shown}
    # The series of one spec's phase (every machine and device) share one y axis, unit and x range.
    scales = {(k[2], k[3]): series_scale([pts for kk, pts in plotted_pts.items() if kk[2:] == k[2:]]) for k in shown}
    parts = []
    for k in shown:
        pts = plotted_pts[k]
        left_out = len(series[k]) - len(pts)
        series_marks = {p.result.job_id: marks.get((p.result.job_id, k[3]), "") for p in pts}
        n_reg = sum(v == "regression" for v in series_marks.values())
        counts = Counter(f for p in pts for f in point_flags(p))
        flagged = "".join(f", {n} {f}" for f, n in sorted(counts.items()))
        if left_out:
            years = f"{PLOTTED_DATES[0].year}-{PLOTTED_DATES[1].year}"
            flagged += f", {left_out} left out of the plot (date outside {years})"
        alt = f"{k[0]} {k[1]} {k[2]} {k[3]}: {len(pts)} results, {n_reg} regressions{flagged}"
        png = _series_png(k, pts, series_marks, scales[(k[2], k[3])])
        img = f'<img alt="{html_text(alt)}" src="data:image/png;base64,{png}">'
        parts.append(f'<figure class="history">{img if pts else ""}<figcaption>{html_text(alt)}</figcaption></figure>')
    if not parts:
        parts.append("<p>No history yet: a series needs stored results with raw times.</p>")
    elif len(keys) > max_series:
        parts.append(f"<p>{len(keys) - max_series} more series not shown.</p>")
    return TITLE, "\n".join(parts)


def results_section(results: Sequence[JobResult], max_series: int = MAX_SERIES) -> tuple[str, str] | None:
    """The history section of a report's HTML from its loaded history (`Report.history`).

    None when no series has two or more results (nothing to plot over time).
    """
    if not any(len(pts) >= 2 for pts in build_series(results).values()):
        return None
    return history_section(results, max_series=max_series)


def write_page(path: str | Path, results: Iterable[JobResult], verdicts: Iterable[Verdict] | None = None) -> Path:
    """A standalone HTML page holding the history section."""
    title, body = history_section(results, verdicts)
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html_text(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}figure{margin:1em 0}"
        "figcaption{font-size:0.85em;color:#555}</style></head>"
        f"<body><h1>{html_text(title)}</h1>\n{body}\n</body></html>\n"
    )
    p = Path(path)
    write_text_atomic(p, doc)
    return p
