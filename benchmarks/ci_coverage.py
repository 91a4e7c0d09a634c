"""Coverage of the 95% interval of a speedup, by simulation: within-run against pooled.

Each trial draws two true medians (baseline 0.5 to 2 s, result 0.01 to 0.5 s; the true speedup is
their ratio), then `runs` runs a side: a run's median is the true one times exp(N(0, spread))
(the run-to-run spread: nights, boots, machines of one model), and its `n` repeats are that times
exp(N(0, within)) (lognormal repeats, `within` = 2% by default). Two intervals are checked:

- **within-run**: the interval `farm compare` gives without `--pool`: the bootstrap of one run
  against one run (`farm.reports.compare`; computed here at every n, although farm shows none
  below n = 5);
- **pooled**: `farm compare --pool`'s hierarchical bootstrap over all runs of each side
  (`farm.reports.pool.hierarchical_ci`; computed at every size, although farm shows none below
  3 runs or 5 repeats a side).

Prints a Markdown table of the fraction of trials whose interval holds the true ratio; cells in
parentheses are cases where farm prints no interval. Seeded: the same arguments give the same table.

    .venv/bin/python benchmarks/ci_coverage.py [--trials 1000] [--within 0.02]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.reports.compare import LEVEL, MIN_CI_REPEATS, _group_ci
from farm.reports.pool import MIN_POOL_RUNS, hierarchical_ci

SPREADS = (0.0, 0.02, 0.05, 0.10)
REPEATS = (3, 5, 10)
RUNS = (2, 3, 4, 5, 10)


def coverage(
    spread: float, n: int, runs: int, trials: int, *, within: float = 0.02, seed: int = 5
) -> tuple[float, float | None]:
    """(within-run coverage, pooled coverage) over `trials` seeded trials; pooled None for 1 run a side."""
    rng = np.random.default_rng([seed, round(spread * 10_000), n, runs, round(within * 10_000)])
    truth = np.empty(trials)
    newest_a, newest_b = np.empty((trials, n)), np.empty((trials, n))
    pooled_hits = 0
    for t in range(trials):
        ma, mb = rng.uniform(0.5, 2.0), rng.uniform(0.01, 0.5)
        a = ma * np.exp(rng.normal(0, spread, (runs, 1)) + rng.normal(0, within, (runs, n)))
        b = mb * np.exp(rng.normal(0, spread, (runs, 1)) + rng.normal(0, within, (runs, n)))
        a.sort(axis=1)
        b.sort(axis=1)
        truth[t] = ma / mb
        newest_a[t], newest_b[t] = a[-1], b[-1]
        if runs > 1:
            lo, hi = hierarchical_ci(list(a), list(b), LEVEL)
            pooled_hits += lo <= truth[t] <= hi
    lows, highs = _group_ci(newest_a, newest_b, LEVEL)
    old = float(np.mean((lows <= truth) & (truth <= highs)))
    return old, (pooled_hits / trials if runs > 1 else None)


def shown(n: int, runs: int | None) -> bool:
    """Whether farm prints this interval (runs None: the within-run one)."""
    return n >= MIN_CI_REPEATS and (runs is None or runs >= MIN_POOL_RUNS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--within", type=float, default=0.02, help="within-run lognormal sigma of the repeats")
    args = ap.parse_args()
    t0 = time.perf_counter()
    head = ["run-to-run spread", "repeats n", "within-run (1 run a side)"] + [f"pooled, {r} runs a side" for r in RUNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spread in SPREADS:
        for n in REPEATS:
            cells = []
            old = 0.0
            for runs in RUNS:
                old, pooled = coverage(spread, n, runs, args.trials, within=args.within)
                assert pooled is not None
                cells.append(f"{pooled:.3f}" if shown(n, runs) else f"({pooled:.3f})")
            within_cell = f"{old:.3f}" if shown(n, None) else f"({old:.3f})"
            label = "i.i.d." if spread == 0 else f"{spread:.0%}"
            lines.append(f"| {label} | {n} | {within_cell} | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        names = [
            ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln
        ]
        cpu = names[0] if names else cpu
    print(
        f"{args.trials} seeded trials a cell; repeats lognormal, sigma {args.within:.0%} within a run; "
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{time.perf_counter() - t0:.0f} s; (x): farm prints no interval there\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
