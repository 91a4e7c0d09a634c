"""Speedups against a baseline, with a 95% bootstrap confidence interval from the raw times.

**The ratio.** The speedup of a result over its baseline, per phase, is
`median(baseline times) / median(result times)`: above 1 means the result is faster.

**The interval** is a percentile bootstrap of that ratio of medians. Each side is resampled
with replacement, independently (the two devices were timed independently). For a resample of
size n from sorted times x, the resample's median is `(x[lo] + x[hi]) / 2` where lo and hi are
the middle ranks of the sorted resampled *indices*; so the median's bootstrap distribution
depends only on n. For each n we draw `RESAMPLES` (4000) index resamples from a generator seeded
with `(SEED, n)`, tally how often each (lo, hi) pair occurs, and get each side's bootstrap
distribution of the median as a few values with weights. The ratio's bootstrap distribution is
their product (every pairing of the two sides' resamples), and the interval is its 2.5% and
97.5% weighted percentiles. The same seed gives the same interval on every run and machine, and
10,000 intervals cost a few array operations (results are grouped by their pair of sizes).

Limits: with fewer than 2 times on either side there is no interval (init runs once). The
percentile bootstrap of a median is discrete and under-covers for small n: measured on lognormal
times (sigma 0.1, 400 seeded trials) its coverage is about 0.80 at n = 5 and 0.90 at n = 10; see
docs/reports.md. Report the repeat count beside the interval, as every format does.

**Baselines** (`--baseline`, comma-separated `key=value`): `device=cpu` (default: the CPU result
of the same run and spec hash, the seed's question), `run=<id>` (the same device and spec in
another run), `machine=<tag>` (the same device kind and spec on another machine), or combined.
This module never imports torch.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from farm.errors import SpecError

if TYPE_CHECKING:
    from farm.records import Record

RESAMPLES = 4000
SEED = 20240601
LEVEL = 0.95


@functools.lru_cache(maxsize=256)
def _median_ranks(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """For resamples of size n: the distinct (lo, hi) middle ranks, (k, 2), and their weights (k,)."""
    rng = np.random.default_rng([seed, n])
    idx = np.sort(rng.integers(0, n, size=(resamples, n)), axis=1)
    ranks = np.stack([idx[:, (n - 1) // 2], idx[:, n // 2]], axis=1)
    pairs, counts = np.unique(ranks, axis=0, return_counts=True)
    return pairs, counts / resamples


def _group_ci(base: np.ndarray, cand: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted-percentile CI of median ratios for P pairs of sorted samples: base (P, na), cand (P, nb)."""
    pa, wa = _median_ranks(base.shape[1])
    pb, wb = _median_ranks(cand.shape[1])
    ma = (base[:, pa[:, 0]] + base[:, pa[:, 1]]) / 2  # (P, ka) bootstrap medians of the baseline
    mb = (cand[:, pb[:, 0]] + cand[:, pb[:, 1]]) / 2  # (P, kb) of the result
    ratios = (ma[:, :, None] / mb[:, None, :]).reshape(len(base), -1)  # (P, ka * kb)
    weights = np.outer(wa, wb).ravel()
    order = np.argsort(ratios, axis=1)
    sorted_r = np.take_along_axis(ratios, order, axis=1)
    cum = np.cumsum(weights[order], axis=1)
    alpha = (1 - level) / 2
    last = ratios.shape[1] - 1
    lo_i = np.minimum((cum < alpha - 1e-12).sum(axis=1), last)
    hi_i = np.minimum((cum < 1 - alpha - 1e-12).sum(axis=1), last)
    rows = np.arange(len(base))
    return sorted_r[rows, lo_i], sorted_r[rows, hi_i]


@dataclass(frozen=True, slots=True)
class Ratio:
    """A speedup (baseline median / result median) and its bootstrap CI (None without one)."""

    value: float
    low: float | None
    high: float | None


def ratio_cis(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], level: float = LEVEL) -> list[Ratio | None]:
    """Speedups with bootstrap CIs for many (baseline times, result times) pairs at once.

    None where either side has no times or a non-positive median.
    """
    out: list[Ratio | None] = [None] * len(pairs)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (a, b) in enumerate(pairs):
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        if ma <= 0 or mb <= 0:
            continue
        out[i] = Ratio(ma / mb, None, None)
        if len(a) >= 2 and len(b) >= 2:
            groups.setdefault((len(a), len(b)), []).append(i)
    chunk = 2000  # bounds the (P, ka * kb) arrays
    for members in groups.values():
        for s in range(0, len(members), chunk):
            part = members[s : s + chunk]
            base = np.sort(np.array([pairs[i][0] for i in part], dtype=float), axis=1)
            cand = np.sort(np.array([pairs[i][1] for i in part], dtype=float), axis=1)
            lows, highs = _group_ci(base, cand, level)
            for i, lo, hi in zip(part, lows.tolist(), highs.tolist(), strict=True):
                r = out[i]
                assert r is not None
                out[i] = Ratio(r.value, lo, hi)
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
        # Prefer a measurement that succeeded, then the same narrowed tag, then the newest.
        return max(good, key=lambda c: (c.status in ("ok",), c.device == rec.device, c.finished_at, c.job_id))

    def find(self, rec: Record) -> Record | None:
        """The record's baseline (itself when it satisfies the baseline), or None."""
        b = self.b
        if b.run or not b.machine:
            run = b.run or rec.run_id
            key = (rec.spec_hash, "run", run, rec.device)
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
