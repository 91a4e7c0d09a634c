"""The series report's history: one series (spec hash x machine x device x phase) over a selection.

A report whose selection spans more than `SERIES_THRESHOLD` results shows one row per series (its
latest result, built as any report row) with a `SeriesHistory` beside it, computed from the
series' points (`ResultStore.series_points`: five float64s per result, decoded with numpy) instead
of from 100,000 records. `farm report --every-result` shows every result instead. Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from farm.results.store import STATUS_CODES, Series

# Above this many selected results a report shows one row per series (2,000: a report over that many
# records builds in about 0.2 s here; past it rows stop being read one by one).
SERIES_THRESHOLD = 2000
WEEK_S = 7 * 86400.0
_MEASURED_CODES = (float(STATUS_CODES.index("ok")), float(STATUS_CODES.index("unverified")))


@dataclass(frozen=True, slots=True)
class SeriesHistory:
    """A series over the selection: its results, and the medians of those that measured a time."""

    n: int  # results (points) in the selection, whatever their status
    n_measured: int  # of which measured a time (ok, unverified)
    median_s: float | None  # median of the medians
    min_s: float | None
    max_s: float | None
    # last window's median of medians / first window's - 1 (positive: slower); None below 2 measured points
    change: float | None
    window: str  # "week" (first and last 7 days) or "quarter" (first and last quarter of the points)
    first: datetime  # the first and the latest result's finish time
    last: datetime


def history_of(series: Series) -> SeriesHistory:
    """A series' history from its points (oldest first, as `series_points` returns them)."""
    pts = series.points
    at = pts["at"]
    measured = np.isin(pts["status"], _MEASURED_CODES) & np.isfinite(pts["median_s"])
    med, when = pts["median_s"][measured], at[measured]
    change: float | None = None
    window = "week"
    if len(med) >= 2:
        if when[-1] - when[0] >= 2 * WEEK_S:
            first, last = med[when < when[0] + WEEK_S], med[when > when[-1] - WEEK_S]
        else:
            window = "quarter"
            k = max(1, len(med) // 4)
            first, last = med[:k], med[-k:]
        base = float(np.median(first))
        change = float(np.median(last)) / base - 1.0 if base > 0 else None
    return SeriesHistory(
        n=len(pts),
        n_measured=len(med),
        median_s=float(np.median(med)) if len(med) else None,
        min_s=float(med.min()) if len(med) else None,
        max_s=float(med.max()) if len(med) else None,
        change=change,
        window=window,
        first=datetime.fromtimestamp(float(at[0]), UTC),
        last=datetime.fromtimestamp(float(at[-1]), UTC),
    )


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """What a series report stands for: how many results, in how many series."""

    results: int
    series: int

    def text(self) -> str:
        return (
            f"{self.results:,} results in {self.series:,} series: one row per series (latest result), "
            "history over the selection; --every-result for all rows"
        )
