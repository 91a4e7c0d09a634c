"""Statistics derived from raw times. Raw data is stored; everything here is recomputed from it.

The 95% confidence interval of the median uses order statistics (distribution-free): the
interval [x(k), x(n-k+1)] with the largest k whose binomial tail P(Bin(n, 1/2) < k) is at most
2.5%. With fewer than 6 samples no such k exists; the interval is then [min, max] and its real
coverage (1 - 2 * 0.5**n, 93.75% for 5 samples) is stored beside it, never rounded up to 95%.
The tail is summed term by term in exact integers and the search stops at the first k that fails
(the tail only grows), so the interval costs O(n) steps, not the O(n^3) of re-summing each tail.

Noise flags (each in every report format; docs/reports.md):

- `noisy`: IQR / median above 10% (`NOISY_IQR_RATIO`).
- `outlier`: with at least 3 repeats, the slowest is more than 25% above the median
  (`OUTLIER_RATIO`) *and* beyond Tukey's far-out fence of the other repeats (their Q3 + 3 x their
  IQR, `OUTLIER_FENCE`). The first alone would flag a merely spread-out run; the second alone a
  0.1% excursion on very quiet repeats. `[1, 1.02, 1.04, 1.06, 10]` is flagged (10 / 1.04 = 9.6;
  fence 1.135); `[1, 1.3, 1.6, 1.9, 2.2]` is not (fence 3.0): that is `noisy`, not an outlier.
- `drift`: with at least 5 repeats, in the order measured, Kendall's tau between repeat index and
  time is significant (two-sided p below 5%, `DRIFT_P`; the exact permutation distribution without
  ties up to n = 33, else the normal approximation with the tie correction, as scipy.stats.kendalltau
  computes it) *and* the median of the last half differs from that of the first half by more than 5%
  of the median (`DRIFT_MIN_CHANGE`), so a 0.1% creep on quiet repeats is not flagged. At n = 5 only
  a strictly monotone sequence reaches p < 5% (p = 1/60), e.g. 5.45, 5.41, 3.32, 1.81, 0.86 s.

This module never imports torch (nor scipy: it loads in every process; the tests cross-check
against scipy).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

NOISY_IQR_RATIO = 0.10  # IQR / median above this marks a measurement noisy
VERY_NOISY_IQR_RATIO = 0.25
OUTLIER_RATIO = 1.25  # the slowest repeat above this x the median ...
OUTLIER_FENCE = 3.0  # ... and above the others' Q3 + this x their IQR
OUTLIER_MIN_N = 3
DRIFT_P = 0.05  # Kendall's tau two-sided p-value below this ...
DRIFT_MIN_CHANGE = 0.05  # ... and |median(last half) - median(first half)| above this x the median
DRIFT_MIN_N = 5
KENDALL_EXACT_MAX_N = 33  # exact permutation p-value up to here (no ties), as scipy's method="auto"


class Stats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    n: int
    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    std_s: float
    q1_s: float
    q3_s: float
    iqr_s: float
    cv: float
    ci_low_s: float
    ci_high_s: float
    ci_coverage: float  # actual coverage of [ci_low_s, ci_high_s] as a median interval
    noisy: bool
    outlier: bool = False  # one repeat far above the median (see farm.results.stats rules)
    drift: bool = False  # the repeats trend up or down across the run


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if not sorted_xs:
        raise ValueError("no values")
    pos = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def median_ci(sorted_xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free CI of the median: (low, high, actual coverage). O(n) steps."""
    n = len(sorted_xs)
    alpha = (1 - level) / 2
    total = 2**n
    k = 0  # 1-based order statistic index of the lower bound; 0 means none qualifies
    tail = 0.0  # P(Bin(n, 1/2) <= k - 1) for the k found
    cum, term = 0, 1  # sum of C(n, i) for i < j, and C(n, j - 1)
    for j in range(1, n // 2 + 1):
        cum += term  # now sum_{i <= j-1} C(n, i)
        cdf = cum / total
        if cdf > alpha:
            break
        k, tail = j, cdf
        term = term * (n - j + 1) // j
    if k == 0:
        k, tail = 1, 1 / total
    return sorted_xs[k - 1], sorted_xs[n - k], 1 - 2 * tail


def _outlier(xs: Sequence[float], med: float) -> bool:
    """The slowest repeat far above the median and beyond the others' far-out fence (sorted xs)."""
    if len(xs) < OUTLIER_MIN_N or med <= 0:
        return False
    rest = xs[:-1]
    q1, q3 = quantile(rest, 0.25), quantile(rest, 0.75)
    return xs[-1] > OUTLIER_RATIO * med and xs[-1] > q3 + OUTLIER_FENCE * (q3 - q1)


@functools.lru_cache(maxsize=64)
def _inversion_cdf(n: int) -> tuple[float, ...]:
    """P(a random permutation of n has at most d inversions), d = 0 .. n(n-1)/2 (Mahonian numbers)."""
    counts = [1]
    for m in range(2, n + 1):  # insert element m: adds 0 .. m-1 inversions
        width = len(counts) + m - 1
        prefix = [0] * (len(counts) + 1)
        for i, c in enumerate(counts):
            prefix[i + 1] = prefix[i] + c
        counts = [prefix[min(d, len(counts) - 1) + 1] - prefix[max(0, d - m + 1)] for d in range(width)]
    total = math.factorial(n)
    out, run = [], 0
    for c in counts:
        run += c
        out.append(run / total)
    return tuple(out)


def kendall_trend(times: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b of time against repeat index, and its two-sided p-value.

    The same statistic and p-value as `scipy.stats.kendalltau(range(n), times)` (method "auto"):
    exact without ties up to `KENDALL_EXACT_MAX_N`, else the normal approximation with the tie
    correction. O(n log n): concordant minus discordant pairs counted with a Fenwick tree.
    """
    n = len(times)
    if n < 2:
        return 0.0, 1.0
    ranks = {v: i + 1 for i, v in enumerate(sorted(set(times)))}
    tree = [0] * (len(ranks) + 1)  # Fenwick tree: how many earlier times have each rank

    def earlier_at_most(r: int) -> int:
        found = 0
        while r > 0:
            found += tree[r]
            r -= r & -r
        return found

    s = 0  # concordant - discordant pairs (i < j: t_j above t_i is concordant)
    for seen, t in enumerate(times):
        r = ranks[t]
        below, upto = earlier_at_most(r - 1), earlier_at_most(r)
        s += below - (seen - upto)
        while r < len(tree):
            tree[r] += 1
            r += r & -r
    tot = n * (n - 1) // 2
    ties = [c for c in _counts(times) if c > 1]
    tied_pairs = sum(c * (c - 1) // 2 for c in ties)
    if tied_pairs == tot:
        return 0.0, 1.0  # every time equal: no trend
    tau = s / math.sqrt(tot * (tot - tied_pairs))
    if not ties and n <= KENDALL_EXACT_MAX_N:
        dis = (tot - s) // 2
        cdf = _inversion_cdf(n)
        return tau, min(1.0, 2 * cdf[min(dis, tot - dis)])
    var = (n * (n - 1) * (2 * n + 5) - sum(c * (c - 1) * (2 * c + 5) for c in ties)) / 18
    return tau, math.erfc(abs(s) / math.sqrt(2 * var))


def _counts(xs: Sequence[float]) -> list[int]:
    out: dict[float, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return list(out.values())


def _drift(times: Sequence[float], med: float) -> bool:
    """A significant monotone trend of more than `DRIFT_MIN_CHANGE` across the repeats, in measured order."""
    n = len(times)
    if n < DRIFT_MIN_N or med <= 0:
        return False
    h = n // 2
    change = (statistics.median(times[n - h :]) - statistics.median(times[:h])) / med
    return abs(change) > DRIFT_MIN_CHANGE and kendall_trend(times)[1] < DRIFT_P


def _stdev(xs: Sequence[float], mean: float) -> float:
    """The sample standard deviation in two float passes (`math.fsum`): within an ulp or two of
    `statistics.stdev`, whose exact fractions cost 16 µs for five times against under 1 µs here
    (every read of a stored result re-derives its statistics: farm.results.verify)."""
    n = len(xs)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0


def summarize(times: Sequence[float]) -> Stats:
    """Median, mean, min, max, standard deviation, IQR, CV, the median's CI and the noise flags.

    `times` in the order measured (the drift check reads the order; everything else sorts).
    """
    measured = [float(t) for t in times]
    xs = sorted(measured)
    if not xs:
        raise ValueError("summarize() needs at least one time")
    med = statistics.median(xs)
    mean = statistics.fmean(xs)
    std = _stdev(xs, mean)
    q1, q3 = quantile(xs, 0.25), quantile(xs, 0.75)
    lo, hi, cov = median_ci(xs)
    iqr = q3 - q1
    return Stats(
        n=len(xs),
        median_s=med,
        mean_s=mean,
        min_s=xs[0],
        max_s=xs[-1],
        std_s=std,
        q1_s=q1,
        q3_s=q3,
        iqr_s=iqr,
        cv=std / mean if mean > 0 else 0.0,
        ci_low_s=lo,
        ci_high_s=hi,
        ci_coverage=cov,
        noisy=med > 0 and iqr / med > NOISY_IQR_RATIO,
        outlier=_outlier(xs, med),
        drift=_drift(measured, med),
    )
