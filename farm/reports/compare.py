"""Speedups against a baseline, with a 95% bootstrap confidence interval from the raw times.

**The ratio.** The speedup of a result over its baseline, per phase, is
`median(baseline times) / median(result times)`: above 1 means the result is faster.

**The interval** is a percentile bootstrap of that ratio of medians. Each side is resampled
with replacement, independently (the two devices were timed independently). For a resample of
size n from sorted times x, the resample's median is `(x[lo] + x[hi]) / 2` where lo and hi are
the middle ranks of the sorted resampled *indices*, so which ranks come up depends only on n.
For each n and side we draw `RESAMPLES` (4000) index resamples from a generator seeded with
`(SEED, n, side)` and tally the (lo, hi) pairs: each side's bootstrap distribution of the median
is then a few values with weights (at most n of them for odd n). When the two tables are small
(odd n up to 15, or n <= 4), the ratio's bootstrap distribution is their exact product (every
pairing of the two sides' resamples) and the interval its 2.5% and 97.5% weighted percentiles.
Otherwise (even n >= 6 has dozens of rank pairs) the first 2000 resamples of each side are paired
one to one and the interval is the 2.5% / 97.5% percentiles of those 2000 ratios. The same seed
gives the same interval on every run and machine; pairs of equal sizes are computed together
with array operations (on the 2-core dev VM: about 10 µs a pair for the default 5 repeats, 0.4 ms for even n = 10).

Limits: with fewer than 5 repeats on either side (`MIN_CI_REPEATS`) there is a ratio but no
interval (`Ratio.note` says so): with i.i.d. repeats the "95%" interval covered the true ratio only
67% of the time at n = 2 and 90% at n = 3. Measured coverage on i.i.d. lognormal times (400 seeded
trials, tests/test_compare.py and docs/reports.md): 0.96 at n = 5, 0.965 at n = 10, 0.95 at n = 20.
This interval is *within one run*: it does not know how much runs (nights, machines of one model)
differ, and covers far less than 95% when they do (benchmarks/ci_coverage.py: 2% run-to-run spread
already halves it). `farm.reports.pool` pools several runs and resamples the runs too.

**Baselines** (`--baseline`, comma-separated `key=value`): `device=cpu` (default: the CPU result
of the same run and spec hash, the seed's question), `run=<id>` (the same device and spec in
another run), `machine=<tag>` (the same device kind and spec on another machine), or combined.
This module never imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from farm.errors import SpecError
from farm.spec import device_selector

if TYPE_CHECKING:
    from farm.results.records import Record

RESAMPLES = 4000
SEED = 20240601
LEVEL = 0.95
PAIRED_RESAMPLES = 2000
MAX_PRODUCT = 256  # above this many support points, pair the resamples instead (see _group_ci)
MIN_CI_REPEATS = 5  # fewer repeats on either side: a ratio without an interval (see the docstring)


@functools.lru_cache(maxsize=256)
def _replicate_ranks(n: int, side: int) -> np.ndarray:
    """Middle ranks (lo, hi) of `RESAMPLES` seeded index resamples of size n: (RESAMPLES, 2).

    `side` (0 baseline, 1 result) gives each side its own draws, so the two stay independent.
    """
    rng = np.random.default_rng([SEED, n, side])
    idx = np.sort(rng.integers(0, n, size=(RESAMPLES, n)), axis=1)
    return np.stack([idx[:, (n - 1) // 2], idx[:, n // 2]], axis=1)


@functools.lru_cache(maxsize=256)
def _median_ranks(n: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (lo, hi) middle ranks of those resamples, (k, 2), and their weights (k,)."""
    pairs, counts = np.unique(_replicate_ranks(n, side), axis=0, return_counts=True)
    return pairs, counts / RESAMPLES


def _medians(x: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Bootstrap medians of sorted samples x (P, n) for rank pairs (k, 2): (P, k)."""
    return (x[:, ranks[:, 0]] + x[:, ranks[:, 1]]) / 2


def _group_ci(base: np.ndarray, cand: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """CI of median ratios for P pairs of sorted samples: base (P, na), cand (P, nb).

    Small tables (odd n, or few distinct rank pairs): the exact weighted percentiles of the product
    of the two tallied distributions. Larger ones (even n above 4): the same resamples paired one to
    one (`PAIRED_RESAMPLES` ratios per pair), O(P x PAIRED_RESAMPLES) instead of O(P x ka x kb).
    """
    alpha = (1 - level) / 2
    pa, wa = _median_ranks(base.shape[1], 0)
    pb, wb = _median_ranks(cand.shape[1], 1)
    if len(pa) * len(pb) > MAX_PRODUCT:
        ra = _replicate_ranks(base.shape[1], 0)[:PAIRED_RESAMPLES]
        rb = _replicate_ranks(cand.shape[1], 1)[:PAIRED_RESAMPLES]
        ratios = _medians(base, ra) / _medians(cand, rb)  # (P, PAIRED_RESAMPLES)
        k_lo = int(np.ceil(alpha * PAIRED_RESAMPLES)) - 1  # inverted-CDF percentiles
        k_hi = int(np.ceil((1 - alpha) * PAIRED_RESAMPLES)) - 1
        part = np.partition(ratios, [k_lo, k_hi], axis=1)
        return part[:, k_lo], part[:, k_hi]
    ratios = (_medians(base, pa)[:, :, None] / _medians(cand, pb)[:, None, :]).reshape(len(base), -1)
    weights = np.outer(wa, wb).ravel()
    order = np.argsort(ratios, axis=1)
    sorted_r = np.take_along_axis(ratios, order, axis=1)
    cum = np.cumsum(weights[order], axis=1)
    last = ratios.shape[1] - 1
    lo_i = np.minimum((cum < alpha - 1e-12).sum(axis=1), last)
    hi_i = np.minimum((cum < 1 - alpha - 1e-12).sum(axis=1), last)
    rows = np.arange(len(base))
    return sorted_r[rows, lo_i], sorted_r[rows, hi_i]


@dataclass(frozen=True, slots=True)
class Ratio:
    """A speedup (baseline median / result median) and its bootstrap CI (None without one).

    `note` says, for the display, why there is no interval (`no CI: n<5`) or what it rests on;
    `coverage` is the interval's coverage where it is known to differ from the nominal 95%.
    """

    value: float
    low: float | None
    high: float | None
    note: str | None = None
    coverage: float | None = None


def ratio_cis(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], level: float = LEVEL) -> list[Ratio | None]:
    """Speedups with bootstrap CIs for many (baseline times, result times) pairs at once.

    None where either side has no times or a non-positive median.
    """
    out: list[Ratio | None] = [None] * len(pairs)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (a, b) in enumerate(pairs):
        if a and b:
            groups.setdefault((len(a), len(b)), []).append(i)
    chunk = 500  # bounds the (P, ka * kb) and (P, PAIRED_RESAMPLES) arrays
    for (na, nb), members in groups.items():
        for s in range(0, len(members), chunk):
            part = members[s : s + chunk]
            base = np.sort(np.array([pairs[i][0] for i in part], dtype=float), axis=1)
            cand = np.sort(np.array([pairs[i][1] for i in part], dtype=float), axis=1)
            ma, mb = np.median(base, axis=1), np.median(cand, axis=1)
            ok = (ma > 0) & (mb > 0)
            if not ok.all():
                part = [i for i, good in zip(part, ok.tolist(), strict=True) if good]
                base, cand, ma, mb = base[ok], cand[ok], ma[ok], mb[ok]
            values = (ma / mb).tolist()
            if min(na, nb) >= MIN_CI_REPEATS and part:
                lows, highs = _group_ci(base, cand, level)
                for i, v, lo, hi in zip(part, values, lows.tolist(), highs.tolist(), strict=True):
                    out[i] = Ratio(v, lo, hi)
            else:
                note = f"no CI: n<{MIN_CI_REPEATS}"
                for i, v in zip(part, values, strict=True):
                    out[i] = Ratio(v, None, None, note)
    return out


def ratio_ci(baseline: Sequence[float], result: Sequence[float], level: float = LEVEL) -> Ratio | None:
    """The speedup of `result` over `baseline` with its bootstrap CI (see the module docstring)."""
    return ratio_cis([(baseline, result)], level)[0]


# -- baselines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What speedups are relative to: unset fields follow the result (same run, same device kind)."""

    device: str | None = None
    run: str | None = None
    machine: str | None = None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in (("device", self.device), ("run", self.run), ("machine", self.machine)) if v]
        same = []
        if not self.run and not self.machine:
            same.append("same run")
        if not self.device:
            same.append("same device kind")
        return ", ".join(parts + same + ["same spec hash"])


DEFAULT_BASELINE = Baseline(device="cpu")


def parse_baseline(text: str | None) -> Baseline:
    """`device=cpu`, `run=<id>`, `machine=<tag>` or a comma list of them; SpecError otherwise."""
    if not text:
        return DEFAULT_BASELINE
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in ("device", "run", "machine") or not value:
            raise SpecError(
                "baseline", f"{part.strip()!r} must be KEY=VALUE with KEY one of device, run, machine (e.g. device=cpu)"
            )
        fields[key] = value.strip()
    if "device" in fields:
        # `device=cpu:vm` is the series device `cpu` on machine vm (records carry the series device).
        device, machine = device_selector(fields["device"])
        fields["device"] = device
        if machine is not None:
            fields.setdefault("machine", machine)
    return Baseline(**fields)


def device_matches(tag: str, want: str) -> bool:
    """`cpu` matches `cpu` and every narrowed `cpu:<x>`; a narrowed tag matches only itself."""
    return tag == want or (":" not in want and tag.split(":", 1)[0] == want)


def _kind(tag: str) -> str:
    return tag.split(":", 1)[0]


class BaselineMatcher:
    """Finds each record's baseline in a pool of records (indexed once: 10,000 records are cheap)."""

    def __init__(self, pool: Iterable[Record], baseline: Baseline) -> None:
        self.b = baseline
        self.by_run: dict[tuple[str, str], list[Record]] = {}
        self.by_machine: dict[tuple[str, str], list[Record]] = {}
        for r in pool:
            self.by_run.setdefault((r.spec_hash, r.run_id), []).append(r)
            self.by_machine.setdefault((r.spec_hash, r.machine_tag or ""), []).append(r)
        self._cache: dict[tuple[str, ...], Record | None] = {}

    def _ok(self, rec: Record, cand: Record) -> bool:
        b = self.b
        if b.device is not None:
            if not device_matches(cand.device, b.device):
                return False
        elif _kind(cand.device) != _kind(rec.device):
            return False
        return not (b.machine is not None and cand.machine_tag != b.machine)

    def _pick(self, rec: Record, cands: list[Record]) -> Record | None:
        good = [c for c in cands if self._ok(rec, c)]
        if not good:
            return None
        # a measurement that succeeded first: checked against a ceiling, then unverified, then the rest
        ok = [c for c in good if c.status == "ok"] or [c for c in good if c.status == "unverified"] or good
        if self.b.device is not None:
            # One baseline for all: the tag named exactly (`cpu` before `cpu:box7`), else the first tag.
            exact = [c for c in ok if c.device == self.b.device]
            ok = exact or [c for c in ok if c.device == min(x.device for x in ok)]
        else:
            ok = [c for c in ok if c.device == rec.device] or ok  # like with like: the same narrowed tag
        return max(ok, key=lambda c: (c.finished_at, c.job_id))  # the newest

    def find(self, rec: Record) -> Record | None:
        """The record's baseline (itself when it satisfies the baseline), or None."""
        b = self.b
        if b.run or not b.machine:
            run = b.run or rec.run_id
            # With device= the pick does not depend on the result: one lookup per spec and run.
            key = (rec.spec_hash, "run", run, "" if b.device else rec.device)
            if key not in self._cache:
                self._cache[key] = self._pick(rec, self.by_run.get((rec.spec_hash, run), []))
            return self._cache[key]
        # machine=<tag> without run=: the same run when that machine took part in it, else its newest.
        same_run = [c for c in self.by_run.get((rec.spec_hash, rec.run_id), []) if c.machine_tag == b.machine]
        if same_run:
            return self._pick(rec, same_run)
        key = (rec.spec_hash, "machine", b.machine, rec.device)
        if key not in self._cache:
            self._cache[key] = self._pick(rec, self.by_machine.get((rec.spec_hash, b.machine), []))
        return self._cache[key]
