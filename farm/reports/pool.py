"""Pooled comparisons (`farm compare --pool`): one row per machine and device x spec x phase,
pooling every selected run, with an interval that accounts for how much runs differ.

**The estimate.** Each pooled result (one run of the spec on one device of one machine) is
summarised by its median; a side's figure is the *median of those per-run medians*, and the
speedup is `baseline figure / result figure`. The run is the unit that is replicated (a night, a
boot, a machine of one model), so each counts once, whatever its number of repeats, and one wild
night moves a median of nights less than a mean or a pooled median, which a run with many repeats
would dominate. Three nights at 1.35, 1.40 and 1.60 s against a steady 1.00 s give 1 / 1.40 = 0.714.

**The interval** is a seeded hierarchical percentile bootstrap: each replicate resamples the runs
of each side with replacement, then, for every run drawn, a bootstrap median of its repeats (the
seeded tables of `farm.reports.compare`, the within-run resampling of the non-pooled interval),
and takes the median of those; the 2.5% and 97.5% points of `POOL_RESAMPLES` ratios bound it.
Simulated coverage of the true ratio (benchmarks/ci_coverage.py, docs/reports.md; run-to-run
spread 0 to 10%) is at least 95% with 5 or more runs a side, 91% with 4 and 88% with 3 (those two carry
it in `Ratio.coverage` and `Ratio.note`); with 2 runs it falls to 69%. So an interval needs
`MIN_POOL_RUNS` (3) runs of at least `compare.MIN_CI_REPEATS` (5) repeats a side; with fewer, the
row shows the ratio and the between-run spread and says why it has no interval (`Ratio.note`).
The hierarchical bootstrap resamples within-run noise twice (once in the spread of the per-run
medians, once in the second stage), so it over-covers (99%) when runs do not differ: the price of
not under-covering when they do.

**Rows and baselines.** Rows are keyed by (spec hash, phase, machine, device tag). The baseline of
a row: with `machine=<tag>` (and no `run=`), every result of that machine for the spec and device kind (the same
tag where it has one), over all its runs; otherwise each pooled result's own baseline as
`BaselineMatcher` finds it (`device=cpu`: the CPU result of the same run; `run=<id>`: that run),
each counted once. The between-run spread shown is the range and the coefficient of variation of
the per-run medians. Only `ok` and `unverified` phases with raw times are pooled; the flags cell
counts the unverified and contended runs among them (`unverified k/n`, `contended k/n`), beside
noisy, outlier and drift. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from farm.reports.cells import fmt_seconds, ratio_text
from farm.reports.compare import (
    LEVEL,
    MIN_CI_REPEATS,
    SEED,
    Baseline,
    BaselineMatcher,
    Ratio,
    _replicate_ranks,
    device_matches,
)
from farm.reports.listing import Listing
from farm.reports.report import PHASE_ORDER, Selection, group_title, selected_records
from farm.results.records import PhaseRecord, Record, paused_gc
from farm.results.result import MEASURED_STATUSES
from farm.results.store import ResultStore

POOL_RESAMPLES = 2000  # hierarchical bootstrap replicates per row
WITHIN_DRAWS = 1000  # bootstrap medians tabulated per run (from compare's seeded rank tables)
MIN_POOL_RUNS = 3  # fewer runs on either side: no interval (see benchmarks/ci_coverage.py)
# The lowest coverage measured (benchmarks/ci_coverage.py, 1,000 trials a cell, run-to-run spread
# 0 to 10%, n = 5 and 10) where it falls short of 95%, by the fewer runs of the two sides.
POOL_COVERAGE = {3: 0.88, 4: 0.91}


class _Side:
    """One side's runs, grouped by their number of repeats: sorted (k_n, n) arrays, in input order."""

    def __init__(self, runs: Sequence[Sequence[float]]) -> None:
        by_n: dict[int, list[Sequence[float]]] = {}
        for r in runs:
            if len(r):
                by_n.setdefault(len(r), []).append(r)
        self.groups = [np.sort(np.asarray(rs, dtype=float), axis=1) for rs in by_n.values()]
        self.medians = np.concatenate(
            [(x[:, (x.shape[1] - 1) // 2] + x[:, x.shape[1] // 2]) / 2 for x in self.groups] or [np.empty(0)]
        )

    @property
    def runs(self) -> int:
        return len(self.medians)

    @property
    def min_repeats(self) -> int:
        return min(x.shape[1] for x in self.groups)

    def figure(self) -> float:
        """The median of the per-run medians."""
        return float(np.median(self.medians))

    def replicates(self, side: int, rng: np.random.Generator) -> np.ndarray:
        """`POOL_RESAMPLES` bootstrap medians of per-run medians: runs, then repeats, resampled."""
        table = np.concatenate(
            [(x[:, r[:, 0]] + x[:, r[:, 1]]) / 2 for x in self.groups for r in [_within(x.shape[1], side)]]
        ).ravel()  # (runs, WITHIN_DRAWS): per run, bootstrap medians of its repeats
        k = self.runs
        # One uniform index into the flattened (run, draw) table is a uniform run and, independently,
        # a uniform draw within it: one generator call and one gather instead of two of each.
        flat = rng.integers(0, k * WITHIN_DRAWS, size=(POOL_RESAMPLES, k), dtype=np.int64)
        return np.median(table[flat], axis=1)


def _within(n: int, side: int) -> np.ndarray:
    """The middle ranks of `WITHIN_DRAWS` seeded resamples of n repeats (compare's tables)."""
    return _replicate_ranks(n, side)[:WITHIN_DRAWS]


def pooled_ratio(
    baseline_runs: Sequence[Sequence[float]], result_runs: Sequence[Sequence[float]], level: float = LEVEL
) -> Ratio | None:
    """The speedup of the result runs over the baseline runs and its hierarchical bootstrap CI.

    Each argument is a list of runs, each run its raw times. None when a side has no times or a
    non-positive figure. Seeded: the same runs in the same order give the same interval.
    """
    base, cand = _Side(baseline_runs), _Side(result_runs)
    if not base.runs or not cand.runs:
        return None
    fa, fb = base.figure(), cand.figure()
    if fa <= 0 or fb <= 0:
        return None
    value = fa / fb
    runs, repeats = min(base.runs, cand.runs), min(base.min_repeats, cand.min_repeats)
    if runs < MIN_POOL_RUNS:
        return Ratio(value, None, None, f"no CI: {runs} run{'s' if runs != 1 else ''} (<{MIN_POOL_RUNS})")
    if repeats < MIN_CI_REPEATS:
        return Ratio(value, None, None, f"no CI: n<{MIN_CI_REPEATS}")
    low, high = _interval(base, cand, level)
    coverage = POOL_COVERAGE.get(runs)
    note = f"{runs} runs: ≥{coverage:.0%} coverage" if coverage else None
    return Ratio(value, low, high, note, coverage)


def hierarchical_ci(
    base: Sequence[Sequence[float]], cand: Sequence[Sequence[float]], level: float = LEVEL
) -> tuple[float, float]:
    """The hierarchical bootstrap interval of the ratio of medians of per-run medians (runs of raw times).

    No minimum of runs or repeats here (`pooled_ratio` applies them; benchmarks/ci_coverage.py
    measures every case).
    """
    return _interval(_Side(base), _Side(cand), level)


def _interval(base: _Side, cand: _Side, level: float) -> tuple[float, float]:
    rng = np.random.default_rng([SEED, 2, base.runs, cand.runs])
    ratios = base.replicates(0, rng) / cand.replicates(1, rng)
    alpha = (1 - level) / 2
    k_lo = int(np.ceil(alpha * POOL_RESAMPLES)) - 1  # inverted-CDF percentiles, as compare's
    k_hi = int(np.ceil((1 - alpha) * POOL_RESAMPLES)) - 1
    part = np.partition(ratios, [k_lo, k_hi])
    return float(part[k_lo]), float(part[k_hi])


# -- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spread:
    """The per-run medians of one side of a pooled row."""

    runs: int
    repeats: int  # all repeats pooled
    median_s: float  # median of the per-run medians
    min_s: float
    max_s: float
    cv: float | None  # sample standard deviation / mean of the per-run medians; None for one run


def spread(runs: Sequence[Sequence[float]]) -> Spread:
    """The per-run medians' median, range and coefficient of variation."""
    meds = _Side(runs).medians
    cv = float(np.std(meds, ddof=1) / np.mean(meds)) if len(meds) > 1 and np.mean(meds) > 0 else None
    return Spread(
        len(meds), sum(len(r) for r in runs), float(np.median(meds)), float(meds.min()), float(meds.max()), cv
    )


@dataclass(slots=True)
class PoolRow:
    spec_hash: str
    title: str  # the spec, as report groups name it
    label: str  # the spec, short (`spec_label`)
    phase: str
    machine: str | None
    device: str
    results: Spread
    baseline: Spread | None
    baseline_series: list[str]  # `device @ machine` of the baseline results
    is_baseline: bool
    speedup: Ratio | None
    left_out: int  # results of the row whose phase was neither ok nor unverified (or had no times)
    flags: list[str]  # unverified, contended, noisy, outlier, drift: how many pooled runs carry each


def _usable(ph: PhaseRecord | None) -> bool:
    return ph is not None and ph.status in MEASURED_STATUSES and bool(ph.times)


def _order(r: Record) -> tuple[str, str]:
    return (r.finished_at, r.job_id)


def _machine_base(pool: Sequence[Record], rec: Record, b: Baseline) -> list[Record]:
    """With `machine=<tag>`: every result of that machine for the spec and device kind (same tag if any)."""
    cands = [
        c
        for c in pool
        if c.spec_hash == rec.spec_hash
        and c.machine_tag == b.machine
        and (device_matches(c.device, b.device) if b.device else c.device.split(":")[0] == rec.device.split(":")[0])
    ]
    if b.device:
        exact = [c for c in cands if c.device == b.device]
        return exact or [c for c in cands if c.device == min((x.device for x in cands), default="")]
    return [c for c in cands if c.device == rec.device] or cands


def _flag_counts(recs: Iterable[Record], phase: str) -> list[str]:
    """How many pooled runs carry each flag, `kind k/n`: unverified (no ceiling checked it),
    contended (other processes used the CPU), noisy, outlier, drift."""
    phs = [r.phases[phase] for r in recs]
    counts = {
        "unverified": sum(p.status == "unverified" for p in phs),
        "contended": sum(p.contended for p in phs),
        "noisy": sum(p.noisy for p in phs),
        "outlier": sum(p.outlier for p in phs),
        "drift": sum(p.drift for p in phs),
    }
    return [f"{k} {v}/{len(phs)}" for k, v in counts.items() if v]


def pool_rows(records: Sequence[Record], baseline: Baseline, pool: Iterable[Record] = ()) -> list[PoolRow]:
    """Pooled rows for `records` (the selection); baselines come from records + pool."""
    seen = {r.job_id for r in records}
    everything = [*records, *(p for p in pool if p.job_id not in seen)]
    matcher = BaselineMatcher(everything, baseline)
    groups: dict[tuple[str, str, str, str], list[Record]] = {}
    left_out: dict[tuple[str, str, str, str], int] = {}
    for rec in records:
        for name, ph in rec.phases.items():
            key = (rec.spec_hash, name, rec.machine_tag or "", rec.device)
            if _usable(ph):
                groups.setdefault(key, []).append(rec)
            else:
                left_out[key] = left_out.get(key, 0) + 1
    rows: list[PoolRow] = []
    for key, recs in groups.items():
        spec_hash, phase, machine, device = key
        recs.sort(key=_order)
        if baseline.machine and not baseline.run:
            base = _machine_base(everything, recs[0], baseline)
        else:
            found = {b.job_id: b for b in (matcher.find(r) for r in recs) if b is not None}
            base = list(found.values())
        base = sorted((b for b in base if _usable(b.phases.get(phase))), key=_order)
        own = {r.job_id for r in recs}
        is_base = bool(base) and {b.job_id for b in base} <= own
        times = [r.phases[phase].times for r in recs]
        base_times = [b.phases[phase].times for b in base]
        ratio = None if is_base or not base else pooled_ratio(base_times, times)
        rows.append(
            PoolRow(
                spec_hash=spec_hash,
                title=group_title(recs[0]),
                label=spec_label(recs[0]),
                phase=phase,
                machine=machine or None,
                device=device,
                results=spread(times),
                baseline=spread(base_times) if base else None,
                baseline_series=sorted({b.series for b in base}),
                is_baseline=is_base,
                speedup=ratio,
                left_out=left_out.pop(key, 0),
                flags=_flag_counts(recs, phase),
            )
        )
    first = {r.spec_hash: (r.params, r.tokens) for r in records}
    rows.sort(
        key=lambda r: (
            first[r.spec_hash],
            r.spec_hash,
            PHASE_ORDER.get(r.phase, 9),
            not r.is_baseline,
            r.machine or "",
            r.device,
        )
    )
    return rows


# -- selection and the listing --------------------------------------------------------------------


def select_pooled(store: ResultStore, selection: Selection, baseline: Baseline) -> list[PoolRow]:
    """Query the store (and the baselines the selection left out) and pool the rows."""
    with paused_gc():
        records, pool = selected_records(store, selection, baseline)
        return pool_rows(records, baseline, pool)


COLUMNS = [
    "spec",
    "phase",
    "machine",
    "device",
    "runs (repeats)",
    "run medians: median (min – max)",
    "run CV",
    "speedup [95% CI]",
    "baseline (runs)",
    "flags",
]


def spec_label(rec: Record) -> str:
    """A short name of the spec for a table cell: `gpt2 1×128 float32 (3f2a9c1d)`."""
    return f"{rec.model_name} {rec.batch}×{rec.seq} {rec.dtype} ({rec.spec_hash[:8]})"


def _speedup_text(row: PoolRow) -> str:
    return ratio_text(row.speedup, row.is_baseline)


def _row_doc(row: PoolRow) -> dict[str, object]:
    s, res, base = row.speedup, row.results, row.baseline
    return {
        "spec_hash": row.spec_hash,
        "spec": row.title,
        "phase": row.phase,
        "machine": row.machine,
        "device": row.device,
        "runs": res.runs,
        "repeats": res.repeats,
        "median_s": res.median_s,
        "run_median_min_s": res.min_s,
        "run_median_max_s": res.max_s,
        "between_run_cv": res.cv,
        "is_baseline": row.is_baseline,
        "speedup": 1.0 if row.is_baseline else (s.value if s else None),
        "ci_low": s.low if s else None,
        "ci_high": s.high if s else None,
        "ci_note": s.note if s else None,
        "ci_coverage": s.coverage if s else None,
        "baseline_series": row.baseline_series,
        "baseline_runs": base.runs if base else 0,
        "baseline_median_s": base.median_s if base else None,
        "baseline_between_run_cv": base.cv if base else None,
        "left_out": row.left_out,
        "flags": row.flags,
    }


def pool_listing(rows: Sequence[PoolRow], baseline: Baseline, selection: Selection) -> Listing:
    """The pooled rows as a listing (every format); JSON rows carry speedup, ci_low, ci_high, runs."""
    title = f"farm compare --pool: {selection.describe()} · baseline: {baseline.describe()}"
    notes = [
        "speedup = median of the baseline's per-run medians / median of the result's per-run medians",
        "CI: hierarchical bootstrap (runs, then repeats within them, resampled); "
        f"none with fewer than {MIN_POOL_RUNS} runs or {MIN_CI_REPEATS} repeats a side",
    ]
    left = sum(r.left_out for r in rows)
    if left:
        notes.append(
            f"{left} results whose phase was neither ok nor unverified (or had no times) were left out of the pools"
        )
    missing = sum(1 for r in rows if r.baseline is None)
    if missing:
        notes.append(f"{missing} of {len(rows)} rows have no baseline ({baseline.describe()})")
    lst = Listing(title, COLUMNS, notes=notes)
    for row in rows:
        res = row.results
        lst.add(
            row.label,
            row.phase,
            row.machine,
            row.device,
            f"{res.runs} ({res.repeats})",
            f"{fmt_seconds(res.median_s)} ({fmt_seconds(res.min_s)} – {fmt_seconds(res.max_s)})",
            f"{res.cv:.1%}" if res.cv is not None else None,
            _speedup_text(row),
            f"{', '.join(row.baseline_series)} ({row.baseline.runs})" if row.baseline else None,
            ", ".join(row.flags) or "ok",
            status="ok" if row.is_baseline or row.speedup else None,
        )
    lst.doc = {
        "title": title,
        "baseline": baseline.describe(),
        "selection": selection.describe(),
        "rows": [_row_doc(r) for r in rows],
        "notes": notes,
    }
    return lst
