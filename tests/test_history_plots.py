"""History plots as a user compares them: the series of one spec's phase (box7 and a vm) on one y
axis, the time unit chosen from the data's magnitude and named in the label, the x range fitted to
the points' dates (minutes apart: minutes, not the four years matplotlib gives a lone date)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import num2date
from matplotlib.figure import Figure
from test_regress import night_result

from farm.reports import history, plots, publish
from farm.reports.plots import HistoryPoint, history_figure, history_scale, time_unit
from farm.results.result import JobResult

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("values", "unit"),
    [([2.5, 0.3], "s"), ([1.0], "s"), ([0.4, 0.002], "ms"), ([2e-4], "µs"), ([3e-8], "µs"), ([], "s"), ([0.0], "s")],
)
def test_the_unit_follows_the_largest_time(values: list[float], unit: str) -> None:
    assert time_unit(values)[0] == unit


def _points(level_s: float, n: int = 5, step: timedelta = timedelta(minutes=3)) -> list[HistoryPoint]:
    return [HistoryPoint(T0 + i * step, level_s * (1 + 0.01 * i), level_s * 0.98, level_s * 1.05) for i in range(n)]


def _xlim(ax: Axes) -> tuple[datetime, datetime]:
    lo, hi = ax.get_xlim()
    return num2date(lo), num2date(hi)


def _ticks(fig: Figure, ax: Axes) -> list[str]:
    FigureCanvasAgg(fig).draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def test_compared_series_share_one_y_axis_in_ms_and_x_fits_minutes() -> None:
    box7, vm = _points(0.040), _points(0.120, n=3)
    scale = history_scale([box7, vm])
    assert scale is not None and scale.unit == "ms"
    figs = [history_figure(t, pts, scale) for t, pts in (("box7 · cpu · forward", box7), ("vm · cpu · forward", vm))]
    axes = [f.axes[0] for f in figs if f is not None]
    assert len(axes) == 2
    assert axes[0].get_ylim() == axes[1].get_ylim()
    lo, hi = axes[0].get_ylim()
    assert lo == 0 and max(p.high_s or 0 for p in vm) * 1000 < hi < 0.2 * 1000  # ms, the vm's top with room
    assert all(ax.get_ylabel() == "median time (ms)" for ax in axes)
    # the values are drawn in the unit: box7's first median at 40 ms
    ys = [y for line in axes[0].get_lines() for y in line.get_ydata()]  # type: ignore[union-attr]
    assert any(abs(y - 40.0) < 1e-6 for y in ys)
    # x: the 12 minutes the points span, plus a small margin, the same on both plots
    first, last = T0, T0 + timedelta(minutes=12)
    for ax in axes:
        xlo, xhi = _xlim(ax)
        assert first - timedelta(minutes=3) <= xlo < first and last < xhi <= last + timedelta(minutes=3)
    assert _xlim(axes[0]) == _xlim(axes[1])
    assert figs[0] is not None
    labels = _ticks(figs[0], axes[0])
    assert labels and all(":" in t for t in labels), labels  # hours and minutes, not years


def test_a_lone_point_gets_minutes_not_four_years() -> None:
    fig = history_figure("vm · cpu · forward", [HistoryPoint(T0, 2e-4, None, None)])
    assert fig is not None
    ax = fig.axes[0]
    xlo, xhi = _xlim(ax)
    assert xlo < T0 < xhi and xhi - xlo <= timedelta(minutes=10)
    assert ax.get_ylabel() == "median time (µs)" and ax.get_ylim()[1] == pytest.approx(216.0)


def test_nights_days_apart_are_labelled_by_day() -> None:
    pts = _points(2.0, n=6, step=timedelta(days=1))
    fig = history_figure("box7 · cpu · train", pts)
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_ylabel() == "median time (s)"
    xlo, xhi = _xlim(ax)
    span = timedelta(days=5)
    assert T0 - 0.1 * span <= xlo < T0 and T0 + span < xhi <= T0 + 1.1 * span
    assert not any(":" in t for t in _ticks(fig, ax))  # days, not hours


def _stored(tag: str, level: float, minutes: int) -> list[JobResult]:
    out = []
    for i in range(4):
        r = night_result(i, [level * 0.99, level, level * 1.01], tag=tag)
        out.append(r.model_copy(update={"finished_at": T0 + timedelta(minutes=minutes * i)}))
    return out


def test_the_report_history_draws_box7_and_the_vm_on_one_axis(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[Figure] = []
    real = history.series_figure

    def keep(*args: Any) -> Figure:
        drawn.append(real(*args))
        return drawn[-1]

    monkeypatch.setattr(history, "series_figure", keep)
    _, html = history.history_section([*_stored("box7", 0.05, 5), *_stored("vm", 0.3, 7)], verdicts=[])
    assert html.count("<img") == 2 and len(drawn) == 2
    a, b = (f.axes[0] for f in drawn)
    assert a.get_ylim() == b.get_ylim() and a.get_ylim()[1] > 300  # ms: the vm's 0.3 s fits both
    assert a.get_ylabel() == b.get_ylabel() == "median time (ms)"
    xlo, xhi = _xlim(a)
    assert _xlim(b) == (xlo, xhi) and T0 - timedelta(minutes=3) <= xlo and xhi <= T0 + timedelta(minutes=24)


def test_the_published_spec_page_draws_every_machine_on_one_axis(monkeypatch: pytest.MonkeyPatch) -> None:
    scales: list[plots.HistoryScale | None] = []
    real = plots.history_png

    def keep(title: str, points: Any, scale: plots.HistoryScale | None = None) -> bytes | None:
        scales.append(scale)
        return real(title, points, scale)

    monkeypatch.setattr(plots, "history_png", keep)
    html = publish._history("forward", [*_stored("box7", 0.05, 5), *_stored("vm", 0.3, 7)], {})
    assert html.count("<figure") == 2 and len(scales) == 2
    assert scales[0] is not None and scales[0] == scales[1] and scales[0].unit == "ms"
    assert scales[0].x_hi - scales[0].x_lo < timedelta(hours=1)
