"""How long a report over 10,000 stored results takes: query + fetch + parse + build, and each format.

Stores 10,000 synthetic results (5,000 runs of a CPU and an H100 job; 3 phases; 5 repeats; 6
specs) in a private redis-server, then times, 3 times each: the index query, fetching and parsing
the records (`farm.records.load_records`), building the report (baselines, 10,000 bootstrap CIs,
flags), rendering each text format, and for reference the pydantic path (`ResultStore.query`,
which validates every `JobResult`). Prints a Markdown table (median of 3, seconds).

    .venv/bin/python benchmarks/report_10k.py [--results 10000]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm import synthetic
from farm.records import load_records
from farm.redisproc import RedisProcess
from farm.report import Selection, build_report, select
from farm.reportfmt import to_csv, to_json, to_markdown
from farm.spec import BenchSpec
from farm.store import ResultStore

SPECS = [BenchSpec(model=m, batch=b, seq=128) for m in ("gpt2-tiny", "gpt2", "gpt2-medium") for b in (1, 4)]


def fill(store: ResultStore, n: int, seed: int = 0) -> None:
    """n results: n/2 runs of one spec, each a CPU job and an H100 job."""
    rng = random.Random(seed)
    cpu_fp = synthetic.machine("cpu-box")
    gpu_fp = synthetic.machine("gpu-box", gpu="NVIDIA H100 80GB HBM3")

    def times(m: float, k: int = 5) -> list[float]:
        return [m * rng.lognormvariate(0, 0.03) for _ in range(k)]

    for i in range(n // 2):
        spec = SPECS[i % len(SPECS)]
        scale = spec.batch * (1 + 10 * (spec.model_name != "gpt2-tiny"))
        run = f"bench{i:05d}"
        cpu = {"init": [0.5 * scale**0.3], "forward": times(0.05 * scale), "train": times(0.15 * scale)}
        gpu = {"init": [1.5], "forward": times(0.002 * scale**0.5), "train": times(0.006 * scale**0.5)}
        store.put_result(synthetic.result(run, 0, "cpu", cpu, spec=spec, fingerprint=cpu_fp))
        store.put_result(synthetic.result(run, 1, "cuda", gpu, spec=spec, fingerprint=gpu_fp))


def timed(fn: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    out, ts = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc = RedisProcess(Path(tmp) / "redis").start()
        try:
            store = ResultStore.from_url(proc.url)
            t0 = time.perf_counter()
            fill(store, args.results)
            print(f"stored {args.results} results in {time.perf_counter() - t0:.1f} s (setup, not timed below)")
            sel = Selection()
            t_ids, ids = timed(lambda: sel.query_ids(store))
            t_load, records = timed(lambda: load_records(store, ids))  # type: ignore[arg-type]
            t_build, report = timed(lambda: build_report(records))  # type: ignore[arg-type]
            t_total, report = timed(lambda: select(store, sel))
            t_md, _ = timed(lambda: to_markdown(report))  # type: ignore[arg-type]
            t_csv, _ = timed(lambda: to_csv(report))  # type: ignore[arg-type]
            t_json, _ = timed(lambda: to_json(report))  # type: ignore[arg-type]
            t_pyd, _ = timed(lambda: store.query(), repeats=1)
        finally:
            proc.kill9()
    rows = len(report.rows)  # type: ignore[attr-defined]
    cis = sum(1 for r in report.rows if r.speedup and r.speedup.low is not None)  # type: ignore[attr-defined]
    print(f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}, median of 3 runs\n")
    print(f"| step ({len(records)} results, {rows} rows, {cis} bootstrap CIs) | seconds |")  # type: ignore[arg-type]
    print("|---|---|")
    for label, t in [
        ("query: index ids (ZRANGEBYSCORE)", t_ids),
        ("fetch + parse records (MGET + pydantic-core from_json)", t_load),
        ("build report (baselines, bootstrap CIs, flags)", t_build),
        ("**query + fetch + build (`farm.report.select`)**", t_total),
        ("render Markdown", t_md),
        ("render CSV", t_csv),
        ("render JSON", t_json),
        ("reference: `ResultStore.query` (pydantic-validated JobResults), 1 run", t_pyd),
    ]:
        print(f"| {label} | {t:.3f} |")


if __name__ == "__main__":
    main()
