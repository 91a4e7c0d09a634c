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

1. history = the medians of the last `window` (10) earlier clean points of the series (rule 5);
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
robust z, capped at 0.999), given only beside a change found (a regression, an improvement or a
suspect one): beside `unchanged` it would read as trust in a verdict that found nothing.

Two rules keep noise from paging anyone (docs/sweeps.md, "Disturbed nights and noisy series"):

5. A disturbed point, one whose phase is flagged `contended` (other processes used the host's
   CPU), `outlier` or `drift` (`farm.results.stats`), or `throttled` on a GPU (NVML reported a
   power cap or thermal slowdown), never raises a change on its own: what would be a regression
   or an improvement is `suspect` instead, counted apart and never sent to the webhook. A
   disturbed point never joins a later point's history either (the history is the last `window`
   clean points). The next clean point of the series decides: when it is the same change, the
   suspect is `confirmed` (that clean night is the regression, judged on its own); when it is
   `unchanged` or the opposite change, `cleared`; until then, or when that night gives no verdict
   or is too noisy, `pending`.
6. Every verdict with a baseline states the change it needed, `needed` = threshold / baseline
   ("needs +/-12.3% at this spread"). When that is above `max_threshold` (10%) the series is too
   noisy to gate: what would be `unchanged` is `too-noisy` (a change beyond even that threshold
   is still a regression or an improvement). `farm check --require-verdict` counts `suspect`
   and `too-noisy` as no verdict (exit 6).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict
from scipy.stats import mannwhitneyu, norm

from farm.results.result import MEASURED_STATUSES, JobResult

Kind = Literal["regression", "improvement", "suspect", "unchanged", "too-noisy", "no-verdict"]
Change = Literal["regression", "improvement"]
Resolution = Literal["confirmed", "cleared", "pending"]
MAD_TO_SD = 1.4826  # MAD x this estimates the standard deviation of normal noise
# The phase flags that make a point disturbed (rule 5); `throttled` counts on a GPU only.
DISTURBING = ("contended", "outlier", "drift", "throttled")
# Verdicts that do not judge the result: `check --require-verdict` exits 6 on any of them.
UNDECIDED: tuple[Kind, ...] = ("no-verdict", "suspect", "too-noisy")


@dataclass(frozen=True)
class RegressConfig:
    """Knobs of the detector (defaults documented in the module docstring)."""

    window: int = 10
    min_history: int = 5
    k: float = 4.0
    min_rel: float = 0.05
    alpha: float = 0.01
    min_raw: int = 3  # raw times of the newest point needed for the rank test
    max_threshold: float = 0.10  # a relative threshold above this: too noisy to gate (rule 6)


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
    confidence: float | None = None  # only beside a change found: regression, improvement, suspect
    needed: float | None = None  # threshold_s / baseline_s: the relative change a verdict needs at this spread
    flags: list[str] = []  # the judged point's disturbing flags (DISTURBING)
    would_be: Change | None = None  # a suspect's verdict had its point been clean
    n_history: int = 0
    reason: str = ""  # why, in words: the change needed, the rank test, the flags, the resolution


class Verdict(Assessment):
    """One point of one series judged against its history: an Assessment and where it belongs.

    A suspect carries its `resolution` by the series' next clean point (`resolved_by`, its run id);
    a clean point right after suspects names them in `resolves`."""

    machine: str
    device: str
    spec_hash: str
    model: str
    phase: str
    run_id: str
    job_id: str
    finished_at: datetime
    left_out: int = 0  # disturbed earlier points kept out of the history
    resolution: Resolution | None = None  # suspects only
    resolved_by: str | None = None  # the run of the clean point that confirmed or cleared it
    resolves: list[str] = []  # the runs of the suspects just before this clean point that it decides

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


def fmt_needed(needed: float) -> str:
    """ "±12.3%": the relative change a verdict needs."""
    return f"\u00b1{needed:.1%}"


def assess(
    new_times: Sequence[float],
    history: Sequence[Sequence[float]],
    cfg: RegressConfig | None = None,
    *,
    disturbed: Sequence[str] = (),
) -> Assessment:
    """Judge the newest point's raw times against earlier points' raw times (oldest first).

    `disturbed`: the newest point's disturbing flags (rule 5); the history holds clean points only."""
    cfg = cfg or RegressConfig()
    if not new_times:
        raise ValueError("assess() needs the newest point's raw times")
    new = statistics.median(new_times)
    window = [h for h in history if h][-cfg.window :]
    if len(window) < cfg.min_history:
        return Assessment(
            kind="no-verdict",
            new_s=new,
            flags=list(dict.fromkeys(disturbed)),
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
    needed = threshold / baseline if baseline > 0 else math.inf
    floor = cfg.min_rel * baseline >= cfg.k * spread  # a quiet history: the minimum change decides
    needs = f"needs {fmt_needed(needed)} {'(the minimum change)' if floor else 'at this spread'}"
    flags = list(dict.fromkeys(disturbed))
    would_be: Change | None = None
    if big and significant:
        change_kind: Change = "regression" if delta > 0 else "improvement"
        if flags:
            kind: Kind = "suspect"
            would_be = change_kind
            what = "a regression" if delta > 0 else "an improvement"
            why = f"{', '.join(flags)}: {change:+.1%} would be {what}, {needs}"
        else:
            kind = change_kind
            why = needs
    else:
        kind = "unchanged"
        why = needs
        if big:
            notes.insert(0, f"change above threshold but rank test p={p:.3g} >= {cfg.alpha}")
        if needed > cfg.max_threshold:
            kind = "too-noisy"
            why = f"too noisy to gate: {needs}, above the {cfg.max_threshold:.1%} bound"
        if flags:
            notes.append(f"{', '.join(flags)}: kept out of later histories")
    return Assessment(
        kind=kind,
        new_s=new,
        baseline_s=baseline,
        change=change,
        spread_s=spread,
        threshold_s=threshold,
        robust_z=robust_z if math.isfinite(robust_z) else None,
        p_value=p,
        confidence=confidence if kind in ("regression", "improvement", "suspect") else None,
        needed=needed if math.isfinite(needed) else None,
        flags=flags,
        would_be=would_be,
        n_history=len(window),
        reason="; ".join([why, *notes]),
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

    @cached_property
    def disturbed(self) -> tuple[str, ...]:
        """The phase's disturbing flags (rule 5): contended, outlier, drift, and throttled on a GPU."""
        return disturbance(self.result, self.phase)


SeriesKey = tuple[str, str, str, str]  # machine, device, spec hash, phase


def on_gpu(res: JobResult) -> bool:
    """Whether a result ran on a GPU (its device or the torch device it ran on is CUDA)."""
    return res.device.startswith("cuda") or (res.torch_device or "").startswith("cuda")


def disturbance(res: JobResult, phase: str) -> tuple[str, ...]:
    """The disturbing flags of one phase of a result, in `DISTURBING` order (empty: a clean point).

    `throttled` counts on a GPU only: that is where NVML reports power caps and thermal slowdowns,
    and where a held-down clock changes the time without the code changing."""
    ph = res.phases[phase]
    flags = []
    if ph.host is not None and ph.host.contended:
        flags.append("contended")
    if ph.stats is not None and ph.stats.outlier:
        flags.append("outlier")
    if ph.stats is not None and ph.stats.drift:
        flags.append("drift")
    if ph.telemetry is not None and ph.telemetry.throttled and on_gpu(res):
        flags.append("throttled")
    return tuple(flags)


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


def _judge_alone(points: Sequence[Point], index: int, cfg: RegressConfig | None) -> Verdict:
    """`points[index]` against the clean points before it, without looking at its neighbours."""
    pt = points[index]
    clean = [p.times_s for p in points[:index] if not p.disturbed]
    a = assess(pt.times_s, clean, cfg, disturbed=pt.disturbed)
    left_out = index - len(clean)
    if left_out:
        a.reason += f"; {left_out} disturbed earlier result{'s' if left_out > 1 else ''} left out of the history"
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
        left_out=left_out,
    )


def _decides(clean: Verdict, would_be: Change | None) -> Resolution:
    """What a clean verdict says of a suspect that would be `would_be`."""
    if clean.kind == would_be:
        return "confirmed"
    if clean.kind in ("unchanged", "regression", "improvement"):
        return "cleared"  # back within the threshold, or the opposite change
    return "pending"  # the clean night gave no verdict, or is too noisy to say


def judge(points: Sequence[Point], index: int, cfg: RegressConfig | None = None) -> Verdict:
    """The verdict on `points[index]` against the clean points before it (rules 1-6).

    A suspect is resolved by the series' next clean point; a clean point names the suspects just
    before it (at most `window` of them) and whether it confirms or clears each."""
    cfg = cfg or RegressConfig()
    v = _judge_alone(points, index, cfg)
    if v.kind == "suspect":
        nxt = next((j for j in range(index + 1, len(points)) if not points[j].disturbed), None)
        if nxt is None:
            v.resolution = "pending"
            v.reason += "; awaiting a clean night, which confirms or clears it"
        else:
            clean = _judge_alone(points, nxt, cfg)
            v.resolution, v.resolved_by = _decides(clean, v.would_be), clean.run_id
            v.reason += (
                f"; {v.resolution} by run {clean.run_id}"
                if v.resolution != "pending"
                else f"; pending: the next clean night (run {clean.run_id}) is {clean.kind}"
            )
    elif not points[index].disturbed:
        decided: list[tuple[str, Resolution]] = []
        for j in range(index - 1, max(index - 1 - cfg.window, -1), -1):
            if not points[j].disturbed:
                break
            earlier = _judge_alone(points, j, cfg)
            if earlier.kind == "suspect":
                decided.append((earlier.run_id, _decides(v, earlier.would_be)))
        decided.reverse()
        v.resolves = [run for run, r in decided if r != "pending"]
        for word, res in (("confirms", "confirmed"), ("clears", "cleared")):
            runs = [run for run, r in decided if r == res]
            if runs:
                v.reason += f"; {word} suspect run{'s' if len(runs) > 1 else ''} {', '.join(runs)}"
    return v


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
    """Verdicts for every phase of every job of `run_id`, each against the clean history before it."""
    out: list[Verdict] = []
    for pts in build_series(results).values():
        out.extend(judge(pts, i, cfg) for i, p in enumerate(pts) if p.result.run_id == run_id)
    return sorted(out, key=lambda v: v.series)


def changes(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Only the regressions and improvements."""
    return [v for v in verdicts if v.kind in ("regression", "improvement")]


def counts(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """How many verdicts of each kind, every kind present (in `Kind` order)."""
    n = dict.fromkeys(("regression", "improvement", "suspect", "unchanged", "too-noisy", "no-verdict"), 0)
    for v in verdicts:
        n[v.kind] += 1
    return n
