"""Statistics derived from raw times: known values, CI order statistics and their coverage."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.results.stats import median_ci, quantile, summarize


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
