"""Statistics derived from raw times. Raw data is stored; everything here is recomputed from it.

The 95% confidence interval of the median uses order statistics (distribution-free): the
interval [x(k), x(n-k+1)] with the largest k whose binomial tail P(Bin(n, 1/2) < k) is at most
2.5%. With fewer than 6 samples no such k exists; the interval is then [min, max] and its real
coverage (1 - 2 * 0.5**n, 93.75% for 5 samples) is stored beside it, never rounded up to 95%.
This module never imports torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

NOISY_IQR_RATIO = 0.10  # IQR / median above this marks a measurement noisy
VERY_NOISY_IQR_RATIO = 0.25


class Stats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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


def _binom_cdf_half(k: int, n: int) -> float:
    """P(Bin(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ci(sorted_xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free CI of the median: (low, high, actual coverage)."""
    n = len(sorted_xs)
    alpha = (1 - level) / 2
    k = 0  # 1-based order statistic index of the lower bound; 0 means none qualifies
    for j in range(1, n // 2 + 1):
        if _binom_cdf_half(j - 1, n) <= alpha:
            k = j
    if k == 0:
        k = 1
    coverage = 1 - 2 * _binom_cdf_half(k - 1, n)
    return sorted_xs[k - 1], sorted_xs[n - k], coverage


def summarize(times: Sequence[float]) -> Stats:
    """Median, mean, min, max, standard deviation, IQR, CV and the median's CI of raw times."""
    xs = sorted(float(t) for t in times)
    if not xs:
        raise ValueError("summarize() needs at least one time")
    med = statistics.median(xs)
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
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
    )
