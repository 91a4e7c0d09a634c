"""Regression detection: is the newest result of a series slower (or faster) than its history?

A series is one (machine, device, spec hash, phase); its points are stored results in finish
order. Each point is compared with the points before it. This module never imports torch.

How others do it, and the choice made here
------------------------------------------
* asv (airspeed velocity) fits a piecewise-constant function to the whole history of a
  benchmark (`asv.step_detect`: an L1 "Potts" fit with a penalty per step, the penalty scaled by
  a robust noise estimate) and reports a step as a regression when the new level is worse than
  the best earlier level by more than a relative threshold (`regressions_thresholds`, 5% by
  default). Good for finding *where* a step happened in a long history, after the fact.
* conbench ("lookback z-score") compares each new result with the distribution of the results
  of the last N baseline commits on the same hardware: z = (new - mean) / stdev, flagged when
  |z| exceeds a threshold (5 by default); with too few baseline results it gives no verdict.

The farm runs nightly and must answer "did tonight get slower?" without flooding anyone with
noise, on histories that contain outliers (a noisy neighbour, a thermal event). So it takes
conbench's rolling-window shape with robust statistics, asv's minimum relative change, and a
rank test on the raw times:

1. history = the medians of the last `window` (10) earlier points of the series;
   no verdict with fewer than `min_history` (5) of them;
2. baseline = median of those medians; spread = 1.4826 x MAD (a standard deviation estimate
   that one outlier night cannot inflate, unlike conbench's stdev);
3. flagged when |new - baseline| > max(k x spread, min_rel x baseline) (k = 4, min_rel = 5%),
4. and, when the newest point has at least 3 raw times, a two-sided Mann-Whitney U test of its
   raw times against the pooled raw times of the window is significant (p < alpha = 0.01).
   scipy's `mannwhitneyu` gives the exact p-value for small samples without ties and the
   tie-corrected normal approximation otherwise; with fewer raw times the rank test cannot
   reach significance and is skipped (noted).

A flagged slower point is a `regression`, a faster one an `improvement`; otherwise `unchanged`,
or `no-verdict` (with the reason). Each verdict carries the relative change, the robust z and
the p-value; `confidence` is 1 - p (or, with the rank test skipped, the normal tail of the
robust z, capped at 0.999).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict
from scipy.stats import mannwhitneyu, norm

from farm.results.result import MEASURED_STATUSES, JobResult

Kind = Literal["regression", "improvement", "unchanged", "no-verdict"]
MAD_TO_SD = 1.4826  # MAD x this estimates the standard deviation of normal noise


@dataclass(frozen=True)
class RegressConfig:
    """Knobs of the detector (defaults documented in the module docstring)."""

    window: int = 10
    min_history: int = 5
    k: float = 4.0
    min_rel: float = 0.05
    alpha: float = 0.01
    min_raw: int = 3  # raw times of the newest point needed for the rank test


class Assessment(BaseModel):
    """The statistics of one comparison, before it is attached to a result."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    new_s: float
    baseline_s: float | None = None
    change: float | None = None  # (new - baseline) / baseline; positive is slower
    spread_s: float | None = None
    threshold_s: float | None = None
    robust_z: float | None = None
    p_value: float | None = None
    confidence: float | None = None
    n_history: int = 0
    reason: str = ""


class Verdict(Assessment):
    """One point of one series judged against its history: an Assessment and where it belongs."""

    machine: str
    device: str
    spec_hash: str
    model: str
    phase: str
    run_id: str
    job_id: str
    finished_at: datetime

    @property
    def series(self) -> tuple[str, str, str, str]:
        return (self.machine, self.device, self.spec_hash, self.phase)


def mann_whitney_p(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (scipy.stats.mannwhitneyu).

    scipy's `method="auto"` gives the exact distribution of U for small samples without ties
    (n <= 8 on a side: 5 new repeats against a short history, where a normal approximation is
    off by a factor of about 1.5), and the tie-corrected normal approximation otherwise.
    """
    if not xs or not ys:
        return 1.0
    if len(set(xs) | set(ys)) == 1:
        return 1.0  # every value equal: no evidence of a shift (scipy would divide by a zero variance)
    p = float(mannwhitneyu(xs, ys, alternative="two-sided", method="auto").pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)


def assess(
    new_times: Sequence[float], history: Sequence[Sequence[float]], cfg: RegressConfig | None = None
) -> Assessment:
    """Judge the newest point's raw times against earlier points' raw times (oldest first)."""
    cfg = cfg or RegressConfig()
    if not new_times:
        raise ValueError("assess() needs the newest point's raw times")
    new = statistics.median(new_times)
    window = [h for h in history if h][-cfg.window :]
    if len(window) < cfg.min_history:
        return Assessment(
            kind="no-verdict",
            new_s=new,
            n_history=len(window),
            reason=f"{len(window)} earlier results, {cfg.min_history} needed",
        )
    medians = [statistics.median(h) for h in window]
    baseline = statistics.median(medians)
    spread = MAD_TO_SD * statistics.median(abs(m - baseline) for m in medians)
    threshold = max(cfg.k * spread, cfg.min_rel * baseline)
    delta = new - baseline
    change = delta / baseline if baseline > 0 else math.inf
    robust_z = delta / spread if spread > 0 else math.copysign(math.inf, delta) if delta else 0.0
    notes = []
    if len(new_times) >= cfg.min_raw:
        p = mann_whitney_p(list(new_times), [t for h in window for t in h])
        significant = p < cfg.alpha
        confidence = 1 - p
    else:
        p = None
        significant = True
        confidence = min(0.999, 1 - 2 * float(norm.sf(abs(robust_z)))) if math.isfinite(robust_z) else 0.999
        notes.append(f"rank test skipped: {len(new_times)} raw times (<{cfg.min_raw})")
    big = abs(delta) > threshold
    if big and significant:
        kind: Kind = "regression" if delta > 0 else "improvement"
    else:
        kind = "unchanged"
        if big:
            notes.append(f"change above threshold but rank test p={p:.3g} >= {cfg.alpha}")
    return Assessment(
        kind=kind,
        new_s=new,
        baseline_s=baseline,
        change=change,
        spread_s=spread,
        threshold_s=threshold,
        robust_z=robust_z if math.isfinite(robust_z) else None,
        p_value=p,
        confidence=confidence,
        n_history=len(window),
        reason="; ".join(notes),
    )


# -- series from stored results --------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One stored phase measurement: what a series is made of."""

    result: JobResult
    phase: str
    times_s: tuple[float, ...]

    @property
    def when(self) -> datetime:
        return self.result.finished_at or self.result.started_at


SeriesKey = tuple[str, str, str, str]  # machine, device, spec hash, phase


def series_key(res: JobResult, phase: str) -> SeriesKey:
    machine = res.machine.machine_tag if res.machine is not None else "unknown"
    return (machine, res.device, res.spec_hash, phase)


def build_series(results: Iterable[JobResult]) -> dict[SeriesKey, list[Point]]:
    """Usable points (job and phase measured: `ok` or `unverified`, with raw times) by series, oldest first.

    An `unverified` phase (no ceiling known for its device) is a real measurement: its series still
    tells whether tonight is slower than last week.
    """
    series: dict[SeriesKey, list[Point]] = defaultdict(list)
    for res in results:
        if res.status not in MEASURED_STATUSES:
            continue
        for name, ph in res.phases.items():
            if ph.status in MEASURED_STATUSES and ph.times_s:
                series[series_key(res, name)].append(Point(res, name, tuple(ph.times_s)))
    for pts in series.values():
        pts.sort(key=lambda p: (p.when, p.result.job_id))
    return dict(series)


def judge(points: Sequence[Point], index: int, cfg: RegressConfig | None = None) -> Verdict:
    """The verdict on `points[index]` against the points before it."""
    pt = points[index]
    a = assess(pt.times_s, [p.times_s for p in points[:index]], cfg)
    machine, device, spec_hash, phase = series_key(pt.result, pt.phase)
    return Verdict(
        **a.model_dump(),
        machine=machine,
        device=device,
        spec_hash=spec_hash,
        model=pt.result.model_name,
        phase=phase,
        run_id=pt.result.run_id,
        job_id=pt.result.job_id,
        finished_at=pt.when,
    )


def detect(
    results: Iterable[JobResult], *, since: datetime | None = None, cfg: RegressConfig | None = None
) -> list[Verdict]:
    """Verdicts for every series: its newest point, or with `since` every point finished since then."""
    out: list[Verdict] = []
    for pts in build_series(results).values():
        if since is None:
            idxs: Iterable[int] = [len(pts) - 1]
        else:
            idxs = [i for i, p in enumerate(pts) if p.when >= since]
        out.extend(judge(pts, i, cfg) for i in idxs)
    return sorted(out, key=lambda v: (v.finished_at, v.series))


def check_run(results: Iterable[JobResult], run_id: str, cfg: RegressConfig | None = None) -> list[Verdict]:
    """Verdicts for every phase of every job of `run_id`, each against the history before it."""
    out: list[Verdict] = []
    for pts in build_series(results).values():
        out.extend(judge(pts, i, cfg) for i, p in enumerate(pts) if p.result.run_id == run_id)
    return sorted(out, key=lambda v: v.series)


def changes(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Only the regressions and improvements."""
    return [v for v in verdicts if v.kind in ("regression", "improvement")]
