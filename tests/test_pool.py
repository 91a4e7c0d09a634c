"""Pooled comparisons (`farm compare --pool`): the hierarchical bootstrap, its rows and baselines,
its coverage against the within-run interval, scipy cross-checks, and the real CLI on a real Redis."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import scipy.stats
from typer.testing import CliRunner

from farm.cli.main import app
from farm.reports.compare import Baseline, Ratio, ratio_ci
from farm.reports.listing import to_csv, to_markdown, to_text
from farm.reports.pool import PoolRow, hierarchical_ci, pool_listing, pool_rows, pooled_ratio
from farm.reports.report import Selection, build_report
from farm.results import synthetic as syn
from farm.results.host import HostLoad
from farm.results.records import Record, records_from_results
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
NIGHTS_B = (1.35, 1.40, 1.60)  # issue 12: three nights of machine B against A's steady 1.00 s


def _night(median: float, rng: random.Random, n: int = 5) -> list[float]:
    return [median * (1 + rng.uniform(-0.004, 0.004)) for _ in range(n)]


def _nights(a: tuple[float, ...] = (1.0, 1.0, 1.0), b: tuple[float, ...] = NIGHTS_B, n: int = 5) -> list[Record]:
    """One run a night; in each, machine A and machine B time the same CPU forward."""
    return records_from_results(_night_results(a, b, n))


def _night_results(a: tuple[float, ...], b: tuple[float, ...], n: int) -> list[JobResult]:
    """`_nights`' results: A's then B's each night (B's of night i at index 2i + 1)."""
    rng = random.Random(1)
    results = []
    for i, (ma, mb) in enumerate(zip(a, b, strict=False)):
        when = datetime(2026, 11, 1 + i, 3, tzinfo=UTC)
        run = f"night{i}"
        results.append(
            syn.result(run, 0, "cpu", {"forward": _night(ma, rng, n)}, fingerprint=syn.machine("A"), finished_at=when)
        )
        results.append(
            syn.result(
                run,
                1,
                "cpu",
                {"forward": _night(mb, rng, n)},
                fingerprint=syn.machine("B"),
                finished_at=when + timedelta(minutes=1),
            )
        )
    return results


def _value(r: Ratio | None) -> float:
    return r.value if r else 0.0


def _row(rows: list[PoolRow], machine: str) -> PoolRow:
    return next(r for r in rows if r.machine == machine)


def test_three_nights_give_one_wide_row_not_three_tight_ones() -> None:
    recs = _nights()
    # Without --pool: one row per night, each interval tight, none holding the others' ratio.
    report = build_report(recs, Baseline(machine="A"))
    per_night = sorted((r.speedup for r in report.rows if r.record.machine_tag == "B" and r.speedup), key=_value)
    assert len(per_night) == 3
    assert all(s.high is not None and s.low is not None and s.high - s.low < 0.02 for s in per_night)
    assert per_night[0].high < per_night[1].low  # type: ignore[operator]
    # With it: one row for B, 1 / 1.40 = 0.714, an interval as wide as the nights differ.
    rows = pool_rows(recs, Baseline(machine="A"))
    assert [(r.machine, r.is_baseline) for r in rows] == [("A", True), ("B", False)]
    b = _row(rows, "B")
    s = b.speedup
    assert s is not None and s.low is not None and s.high is not None
    assert b.results.runs == 3 and b.baseline is not None and b.baseline.runs == 3
    assert s.value == pytest.approx(1 / 1.40, rel=0.01)
    assert s.low < 1 / 1.55 and s.high > 1 / 1.37  # spans the nights' own ratios, 0.625 .. 0.741
    assert s.low < s.value < s.high
    assert s.coverage == 0.88 and s.note and "3 runs" in s.note  # labelled with its simulated coverage
    assert b.results.min_s == pytest.approx(1.35, rel=0.01) and b.results.max_s == pytest.approx(1.60, rel=0.01)
    assert b.results.cv == pytest.approx(np.std([1.35, 1.4, 1.6], ddof=1) / np.mean([1.35, 1.4, 1.6]), rel=0.02)


def test_pooled_intervals_are_seeded_and_ignore_the_order_of_results() -> None:
    recs = _nights()
    first = _row(pool_rows(recs, Baseline(machine="A")), "B").speedup
    shuffled = list(reversed(recs))
    again = _row(pool_rows(shuffled, Baseline(machine="A")), "B").speedup
    assert first == again


def test_the_baseline_side_pools_its_runs_too() -> None:
    steady = _row(pool_rows(_nights(), Baseline(machine="A")), "B").speedup
    wobbly = _row(pool_rows(_nights(a=(0.9, 1.0, 1.1)), Baseline(machine="A")), "B").speedup
    assert steady is not None and wobbly is not None and steady.low and steady.high and wobbly.low and wobbly.high
    assert wobbly.high - wobbly.low > steady.high - steady.low  # A's own nights widen it


def test_too_few_runs_or_repeats_give_a_ratio_without_interval() -> None:
    two = _row(pool_rows(_nights(a=(1.0, 1.0), b=(1.35, 1.40)), Baseline(machine="A")), "B").speedup
    assert two is not None and two.low is None and two.note == "no CI: 2 runs (<3)"
    assert two.value == pytest.approx(1 / 1.375, rel=0.01)  # the median of two nights is their mean
    few = _row(pool_rows(_nights(n=3), Baseline(machine="A")), "B").speedup
    assert few is not None and few.low is None and few.note == "no CI: n<5"
    assert pooled_ratio([], [[1.0]]) is None and pooled_ratio([[0.0]], [[1.0]]) is None


def test_five_runs_a_side_carry_no_coverage_label() -> None:
    rng = np.random.default_rng(4)
    base = [list(1.0 + rng.normal(0, 0.01, 5)) for _ in range(5)]
    cand = [list(0.5 + rng.normal(0, 0.01, 5)) for _ in range(6)]
    r = pooled_ratio(base, cand)
    assert r is not None and r.low is not None and r.high is not None
    assert r.coverage is None and r.note is None and r.low < 2.0 < r.high


def test_default_device_baseline_pools_the_cpu_result_of_each_run() -> None:
    rng = random.Random(2)
    gpu = syn.machine("gpu1", gpu="NVIDIA H100 80GB HBM3")
    results = []
    for i, speed in enumerate((100, 110, 95, 105)):
        when = datetime(2026, 11, 1 + i, tzinfo=UTC)
        results.append(syn.result(f"r{i}", 0, "cpu", {"forward": _night(0.5, rng)}, finished_at=when))
        results.append(
            syn.result(f"r{i}", 1, "cuda", {"forward": _night(0.5 / speed, rng)}, fingerprint=gpu, finished_at=when)
        )
    rows = pool_rows(records_from_results(results), Baseline(device="cpu"))
    cpu, cuda = (next(r for r in rows if r.device == d) for d in ("cpu", "cuda:h100"))
    assert cpu.is_baseline and not cuda.is_baseline
    assert cuda.results.runs == 4 and cuda.baseline is not None and cuda.baseline.runs == 4
    s = cuda.speedup
    assert s is not None and s.value == pytest.approx(np.median([100, 110, 95, 105]), rel=0.02)
    assert s.low is not None and s.high is not None and s.low < 100 < s.high and s.coverage == 0.91


def test_failed_phases_are_left_out_and_counted() -> None:
    recs = _nights(a=(1.0, 1.0, 1.0, 1.0), b=(1.35, 1.40, 1.60, 1.5))
    recs[-1].phases["forward"].status = "failed"
    b = _row(pool_rows(recs, Baseline(machine="A")), "B")
    assert b.results.runs == 3 and b.left_out == 1


def test_unverified_and_contended_runs_are_pooled_and_counted_in_the_flags() -> None:
    results = _night_results((1.0, 1.0, 1.0), NIGHTS_B, 5)
    busy = HostLoad(load_avg_1m=2.9, other_cpu_s=1.8, contended=True, reason="other processes used 1.8 CPU s")
    results[1] = syn.flagged(results[1], "forward", unverified="no ceiling for this CPU")
    results[3] = syn.flagged(results[3], "forward", host=busy)
    results[5] = syn.flagged(results[5], "forward", host=busy)
    assert results[1].status == "unverified" and results[3].phases["forward"].host == busy
    rows = pool_rows(records_from_results(results), Baseline(machine="A"))
    b, a = _row(rows, "B"), _row(rows, "A")
    assert b.results.runs == 3 and b.left_out == 0  # the unverified night is pooled, not left out
    assert b.flags == ["unverified 1/3", "contended 2/3"] and a.flags == []
    lst = pool_listing(rows, Baseline(machine="A"), Selection())
    assert "| unverified 1/3, contended 2/3 |" in to_markdown(lst)
    doc_b = next(r for r in lst.doc["rows"] if r["machine"] == "B")
    assert doc_b["flags"] == ["unverified 1/3", "contended 2/3"]


def test_listing_renders_in_every_format() -> None:
    rows = pool_rows(_nights(), Baseline(machine="A"))
    lst = pool_listing(rows, Baseline(machine="A"), Selection())
    text = to_text(lst)
    assert re.search(r"0\.71\d× \[0\.6", text) and "baseline" in text and "3 runs: ≥88% coverage" in text
    assert "| forward |" in to_markdown(lst)
    assert to_csv(lst).splitlines()[0].startswith("spec,phase,machine,device,runs (repeats)")
    doc = lst.doc
    b = next(r for r in doc["rows"] if r["machine"] == "B")
    assert {"speedup", "ci_low", "ci_high", "runs", "machine", "device", "phase", "spec_hash"} <= set(b)
    assert b["runs"] == 3 and b["ci_low"] < b["speedup"] < b["ci_high"]


# -- the bootstrap against scipy.stats.bootstrap --------------------------------------------------


def test_hierarchical_bootstrap_matches_scipy_when_runs_are_constant_inside() -> None:
    """Runs with identical repeats: the second stage does nothing, so the hierarchical bootstrap is a
    two-sample percentile bootstrap of the ratio of the per-run medians' medians."""
    rng = np.random.default_rng(8)
    meds_a, meds_b = np.exp(rng.normal(0, 0.05, 21)), 0.5 * np.exp(rng.normal(0, 0.05, 25))
    lo, hi = hierarchical_ci([np.full(5, m) for m in meds_a], [np.full(5, m) for m in meds_b])
    ref = scipy.stats.bootstrap(
        (meds_a, meds_b),
        lambda a, b, axis: np.median(a, axis=axis) / np.median(b, axis=axis),
        method="percentile",
        n_resamples=20_000,
        rng=np.random.default_rng(1),
    ).confidence_interval
    assert lo == pytest.approx(ref.low, rel=0.01) and hi == pytest.approx(ref.high, rel=0.01)


def test_one_run_a_side_is_the_within_run_bootstrap_and_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    a, b = np.sort(np.exp(rng.normal(0, 0.05, 15))), np.sort(0.25 * np.exp(rng.normal(0, 0.05, 15)))
    lo, hi = hierarchical_ci([a], [b])
    ref = scipy.stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.median(x, axis=axis) / np.median(y, axis=axis),
        method="percentile",
        n_resamples=20_000,
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert lo == pytest.approx(ref.low, rel=0.01) and hi == pytest.approx(ref.high, rel=0.01)
    within = ratio_ci(a.tolist(), b.tolist())
    assert (
        within is not None and within.low == pytest.approx(lo, rel=0.01) and within.high == pytest.approx(hi, rel=0.01)
    )


# -- coverage (benchmarks/ci_coverage.py, few trials) ---------------------------------------------


def _coverage_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_coverage", ROOT / "benchmarks" / "ci_coverage.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("spread", [0.02, 0.05])
def test_pooled_interval_covers_and_the_within_run_one_does_not(spread: float) -> None:
    within_run, pooled = _coverage_module().coverage(spread, 5, 5, trials=150, seed=3)
    assert pooled is not None and pooled >= 0.9
    assert within_run < 0.8  # one run against one: blind to how runs differ


# -- the real CLI against a real redis-server -----------------------------------------------------


@pytest.fixture()
def stored(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultStore]:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    rng = random.Random(5)
    for i, (ma, mb) in enumerate(zip((1.0, 1.0, 1.0), NIGHTS_B, strict=True)):
        when = datetime(2026, 11, 1 + i, 3, tzinfo=UTC)
        for k, (tag, m) in enumerate((("A", ma), ("B", mb))):
            res = syn.result(f"night{i}", k, "cpu", {"init": [0.5], "forward": _night(m, rng)}, finished_at=when)
            res = res.model_copy(update={"machine": syn.machine(tag)})
            assert store.put_result(res)
    yield store


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_cli_compare_pool_json_and_terminal(stored: ResultStore) -> None:
    code, text = _cli("compare", "--pool", "--baseline", "machine=A", "--format", "json")
    assert code == 0, text
    doc = json.loads(text)
    rows = {(r["machine"], r["phase"]): r for r in doc["rows"]}
    b = rows["B", "forward"]
    assert b["runs"] == 3 and b["baseline_runs"] == 3 and b["device"] == "cpu"
    assert b["speedup"] == pytest.approx(1 / 1.40, rel=0.01)
    assert b["ci_low"] < 1 / 1.55 and b["ci_high"] > 1 / 1.37
    assert rows["A", "forward"]["is_baseline"] and rows["A", "forward"]["speedup"] == 1.0
    assert rows["B", "init"]["ci_low"] is None and rows["B", "init"]["ci_note"] == "no CI: n<5"
    code, text = _cli("compare", "--pool", "--baseline", "machine=A")
    assert code == 0, text
    assert re.search(r"0\.71\d× \[0\.6", text) and "forward" in text and "runs" in text
    # Selecting B alone still pools A's nights as the baseline.
    code, text = _cli("compare", "--pool", "--machine", "B", "--baseline", "machine=A", "--json")
    assert code == 0, text
    only = json.loads(text)["rows"]
    assert {r["machine"] for r in only} == {"B"}
    assert next(r for r in only if r["phase"] == "forward")["baseline_runs"] == 3


def test_cli_compare_pool_errors(stored: ResultStore) -> None:
    assert _cli("compare", "--pool", "--machine", "nope")[0] == 4
    assert _cli("compare", "--pool", "--baseline", "gpu=x")[0] == 2
