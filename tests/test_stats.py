"""Statistics derived from raw times: known values, CI order statistics and their coverage, and the
noise flags (outlier, drift), cross-checked against scipy."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.results.stats import kendall_trend, median_ci, quantile, summarize


def test_known_five_times() -> None:
    s = summarize([3.0, 1.0, 5.0, 2.0, 4.0])  # unsorted on purpose
    assert s.n == 5
    assert s.median_s == 3.0
    assert s.mean_s == 3.0
    assert (s.min_s, s.max_s) == (1.0, 5.0)
    assert s.std_s == pytest.approx(math.sqrt(2.5))  # sample standard deviation
    assert (s.q1_s, s.q3_s, s.iqr_s) == (2.0, 4.0, 2.0)
    assert s.cv == pytest.approx(math.sqrt(2.5) / 3.0)
    # Five samples: no order-statistic interval reaches 95%; [min, max] and its true coverage.
    assert (s.ci_low_s, s.ci_high_s) == (1.0, 5.0)
    assert s.ci_coverage == pytest.approx(1 - 2 * 0.5**5) == 0.9375
    assert s.noisy  # IQR / median = 2/3


def test_quiet_measurement_is_not_noisy() -> None:
    s = summarize([1.00, 1.01, 1.02, 1.03, 1.04])
    assert s.median_s == pytest.approx(1.02)
    assert s.iqr_s == pytest.approx(0.02)
    assert not s.noisy  # 0.02 / 1.02 < 10%


def test_noise_threshold_is_ten_percent_of_the_median() -> None:
    # q1 = 1.1875, q3 = 1.3125 (exact in binary): IQR / median = 0.125 / 1.25 = 0.10, not above.
    assert not summarize([1.0, 1.1875, 1.25, 1.3125, 1.5]).noisy
    assert summarize([0.85, 0.94, 1.0, 1.06, 1.15]).noisy  # IQR 0.12


def test_even_count_median_and_quantiles() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert s.median_s == 2.5
    assert s.q1_s == pytest.approx(1.75)  # numpy's linear interpolation
    assert s.q3_s == pytest.approx(3.25)
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0


def test_one_time() -> None:
    s = summarize([0.5])
    assert (s.n, s.median_s, s.std_s, s.iqr_s, s.cv) == (1, 0.5, 0.0, 0.0, 0.0)
    assert not s.noisy
    assert (s.ci_low_s, s.ci_high_s) == (0.5, 0.5)
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize(
    ("n", "k"),
    # The standard distribution-free 95% intervals of the median: [x(k), x(n-k+1)].
    [(6, 1), (8, 1), (9, 2), (10, 2), (11, 2), (12, 3), (20, 6), (30, 10)],
)
def test_median_ci_order_statistics(n: int, k: int) -> None:
    xs = [float(i) for i in range(1, n + 1)]  # x(i) == i
    low, high, coverage = median_ci(xs)
    assert (low, high) == (k, n - k + 1)
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n  # P(Bin(n, 1/2) < k)
    assert coverage == pytest.approx(1 - 2 * tail)
    assert coverage >= 0.95
    # And it is the tightest such interval: one order statistic further in falls below 95%.
    tighter_tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    assert 1 - 2 * tighter_tail < 0.95


@pytest.mark.parametrize(("n", "stated"), [(5, 1 - 2 / 32), (11, 1 - 2 * 12 / 2048)])
def test_median_ci_coverage_by_simulation(n: int, stated: float) -> None:
    """Over many samples of a known distribution, the interval holds the true median as often as it says.

    n = 5: [min, max], 93.75% (not rounded up to 95%); n = 11: [x(2), x(10)], 98.8%.
    """
    rng = random.Random(1234)
    trials = 4000  # binomial sd of the hit rate: at most 0.004
    hits = 0
    for _ in range(trials):
        xs = sorted(rng.expovariate(1.0) for _ in range(n))  # true median ln 2
        low, high, coverage = median_ci(xs)
        assert coverage == pytest.approx(stated)
        hits += low <= math.log(2) <= high
    assert abs(hits / trials - stated) < 0.015


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1e3, allow_nan=False), min_size=1, max_size=40))
def test_summary_is_ordered(times: list[float]) -> None:
    s = summarize(times)
    eps = 1e-9 * s.max_s
    assert s.min_s <= s.ci_low_s <= s.median_s + eps
    assert s.median_s - eps <= s.ci_high_s <= s.max_s
    assert s.min_s - eps <= s.q1_s <= s.median_s + eps <= s.q3_s + 2 * eps <= s.max_s + 3 * eps
    assert s.min_s - eps <= s.mean_s <= s.max_s + eps
    assert 0.0 <= s.ci_coverage < 1.0
    assert s.noisy == (s.iqr_s / s.median_s > 0.10)
    assert not s.outlier or s.max_s > 1.25 * s.median_s


# -- the O(n) median CI against the old cubic formula ----------------------------------------------


def _old_median_ci(sorted_xs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """The formula as it was (a full binomial tail re-summed for every candidate k)."""

    def cdf(k: int, n: int) -> float:
        return sum(math.comb(n, i) for i in range(k + 1)) / 2**n

    n = len(sorted_xs)
    alpha = (1 - level) / 2
    k = 0
    for j in range(1, n // 2 + 1):
        if cdf(j - 1, n) <= alpha:
            k = j
    k = k or 1
    return sorted_xs[k - 1], sorted_xs[n - k], 1 - 2 * cdf(k - 1, n)


@pytest.mark.parametrize("level", [0.95, 0.90, 0.99])
def test_median_ci_equals_the_old_formula_up_to_60(level: float) -> None:
    rng = random.Random(7)
    for n in range(1, 61):
        xs = sorted(rng.lognormvariate(0, 0.3) for _ in range(n))
        assert median_ci(xs, level) == _old_median_ci(xs, level), n


@pytest.mark.parametrize("n", [101, 1000, 10_000])
def test_median_ci_of_many_times_matches_scipy_binomial(n: int) -> None:
    xs = [float(i) for i in range(1, n + 1)]
    low, high, coverage = median_ci(xs)
    k = int(low)
    assert high == n - k + 1
    assert scipy.stats.binom.cdf(k - 1, n, 0.5) <= 0.025 < scipy.stats.binom.cdf(k, n, 0.5)
    assert coverage == pytest.approx(1 - 2 * scipy.stats.binom.cdf(k - 1, n, 0.5), rel=1e-9)


# -- outlier ------------------------------------------------------------------------------------


def test_one_wild_repeat_is_an_outlier_the_iqr_misses() -> None:
    s = summarize([1, 1.02, 1.04, 1.06, 10])
    assert not s.noisy  # the IQR rule alone ignores it (issue 12)
    assert s.outlier


@pytest.mark.parametrize(
    "times",
    [
        [1.00, 1.01, 1.02, 1.03, 1.04],  # quiet
        [1.0, 1.3, 1.6, 1.9, 2.2],  # spread out (noisy), but no repeat stands apart
        [1.0, 1.0, 1.0, 1.0, 1.2],  # 20% above identical repeats: under the 25% ratio
        [1.0, 1.001, 1.002, 1.003, 1.02],  # far outside the others, but only 2% above the median
        [1.0, 10.0],  # two repeats: no "rest" to stand apart from
    ],
)
def test_not_outliers(times: list[float]) -> None:
    assert not summarize(times).outlier


def test_outlier_in_any_position_and_at_three_repeats() -> None:
    assert summarize([10, 1, 1.02, 1.04, 1.06]).outlier  # a slow first repeat (a cold cache)
    assert summarize([1.0, 1.01, 2.0]).outlier


# -- drift --------------------------------------------------------------------------------------


def test_a_monotone_trend_is_drift_in_measured_order_only() -> None:
    trend = [5.45, 5.41, 3.32, 1.81, 0.86]
    s = summarize(trend)
    assert s.drift
    assert summarize(trend[::-1]).drift  # rising too
    assert not summarize([3.32, 5.45, 0.86, 5.41, 1.81]).drift  # the same times, no trend


def test_a_tiny_creep_on_quiet_repeats_is_not_drift() -> None:
    creep = [1.000, 1.0002, 1.0004, 1.0006, 1.0008, 1.001]  # 0.1% over the run, strictly monotone
    assert kendall_trend(creep)[1] < 0.05  # significant as a rank test ...
    assert not summarize(creep).drift  # ... but too small to matter


def test_drift_needs_five_repeats_and_a_significant_trend() -> None:
    assert not summarize([4.0, 3.0, 2.0, 1.0]).drift  # n = 4: p = 1/12 at best
    assert not summarize([5.0, 4.0, 4.5, 2.0, 1.0]).drift  # one step back: p = 0.083
    assert summarize([5.0, 4.8, 4.5, 4.4, 4.1, 4.3, 4.0, 3.9, 3.7, 3.6]).drift


def test_kendall_trend_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    for n in [*range(2, 40), 60, 200]:
        for trial in range(6):
            x = rng.normal(size=n) + (0.2 * np.arange(n) if trial % 2 else 0.0)
            if trial >= 4:
                x = np.round(x, 1)  # ties: the normal approximation with the tie correction
            tau, p = kendall_trend(x.tolist())
            ref = scipy.stats.kendalltau(np.arange(n), x)
            if math.isnan(ref.statistic):  # every time equal
                assert (tau, p) == (0.0, 1.0)
                continue
            assert tau == pytest.approx(ref.statistic, abs=1e-12), (n, trial)
            assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15), (n, trial)


def test_constant_times_have_no_trend() -> None:
    assert kendall_trend([2.0] * 8) == (0.0, 1.0)
    assert not summarize([2.0] * 8).drift and not summarize([2.0] * 8).outlier


def test_quiet_iid_repeats_are_rarely_flagged() -> None:
    rng = np.random.default_rng(11)
    flagged = 0
    for _ in range(300):
        s = summarize(np.exp(rng.normal(0, 0.02, 10)).tolist())
        flagged += s.outlier or s.drift
    assert flagged <= 6  # measured: 0.9% of quiet runs at n = 5 and 10 (docs/reports.md)


def test_standard_deviation_agrees_with_statistics_stdev() -> None:
    """`summarize` computes the sample standard deviation in floats (the read check re-derives it on
    every read): within 1e-12 of `statistics.stdev`'s exact arithmetic, and 0 for equal times."""
    rng = random.Random(0)
    for _ in range(2000):
        xs = [rng.lognormvariate(-3, rng.random()) for _ in range(rng.randint(2, 40))]
        assert summarize(xs).std_s == pytest.approx(statistics.stdev(xs), rel=1e-12)
    assert summarize([0.1] * 7).std_s == 0.0
