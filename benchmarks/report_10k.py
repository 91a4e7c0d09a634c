"""How long a report over 10,000 stored results takes: query + fetch + parse + build, and each format.

Stores 10,000 synthetic results (5,000 runs of a CPU and an H100 job; 3 phases; 5 repeats; 6
specs) in a private redis-server, then times, 3 times each: the index query, fetching and parsing
the records (`ResultStore.load_records`), building the report (baselines, 10,000 bootstrap CIs,
flags), rendering each text format, and for reference the pydantic path (`ResultStore.query`,
which validates every `JobResult`). `ResultStore.put_result` writes a compact summary beside each
result (farm/results/records.py), so every report, the first included, reads summaries; the "no cache" row
times the fallback that parses full results. Prints a Markdown table (seconds).

    .venv/bin/python benchmarks/report_10k.py [--results 10000]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.cluster.redisproc import RedisProcess
from farm.reports.formats import to_csv, to_json, to_markdown
from farm.reports.report import Selection, build_report, select
from farm.results import synthetic
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.spec import BenchSpec

SPECS = [BenchSpec(model=m, batch=b, seq=128) for m in ("gpt2-tiny", "gpt2", "gpt2-medium") for b in (1, 4)]


def fill(
    store: ResultStore, n: int, seed: int = 0, variants: int = 20, put: Callable[[JobResult], object] | None = None
) -> float:
    """n results: n/2 runs of one spec, each a CPU job and an H100 job; returns the seconds spent in
    `put` (default `store.put_result`), the copying of templates left out.

    Each spec has `variants` sets of random times per device (built with `measured_phase`);
    runs reuse them under their own run and job ids, which keeps the set-up short.
    """
    put = put or store.put_result
    spent = 0.0
    for res in results(n, seed, variants):
        t0 = time.perf_counter()
        put(res)
        spent += time.perf_counter() - t0
    return spent


def results(n: int, seed: int = 0, variants: int = 20) -> Iterator[JobResult]:
    """The results `fill` stores, in order (built lazily: a million need not be held at once)."""
    rng = random.Random(seed)
    cpu_fp = synthetic.machine("cpu-box")
    gpu_fp = synthetic.machine("gpu-box", gpu="NVIDIA H100 80GB HBM3")

    def times(m: float, k: int = 5) -> list[float]:
        return [m * rng.lognormvariate(0, 0.03) for _ in range(k)]

    templates = []
    for spec in SPECS:
        scale = spec.batch * (1 + 10 * (spec.model_name != "gpt2-tiny"))
        for _ in range(variants):
            cpu = {"init": [0.5 * scale**0.3], "forward": times(0.05 * scale), "train": times(0.15 * scale)}
            gpu = {"init": [1.5], "forward": times(0.002 * scale**0.5), "train": times(0.006 * scale**0.5)}
            templates.append(
                (
                    synthetic.result("t", 0, "cpu", cpu, spec=spec, fingerprint=cpu_fp),
                    synthetic.result("t", 1, "cuda", gpu, spec=spec, fingerprint=gpu_fp),
                )
            )
    for i in range(n // 2):
        run = f"bench{i:05d}"
        for k, res in enumerate(templates[i % len(templates)]):
            when = res.finished_at + timedelta(seconds=i)  # type: ignore[operator]
            yield res.model_copy(update={"run_id": run, "job_id": f"{run}-{k:03d}", "finished_at": when})


def redis_cpu(store: ResultStore) -> float:
    info = store.r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(store: ResultStore, fn: Callable[[], object], repeats: int = 3) -> tuple[float, float, object]:
    """Median wall seconds and median CPU seconds (this process + redis-server) of `repeats` calls."""
    out, walls, cpus = None, [], []
    for _ in range(repeats):
        c0, r0, t0 = time.process_time(), redis_cpu(store), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0 + redis_cpu(store) - r0)
    return statistics.median(walls), statistics.median(cpus), out


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
            steps: list[tuple[str, float, float]] = []
            wall, cpu, report = timed(store, lambda: select(store, sel), repeats=1)
            steps.append(("**first report: `reports.report.select` (summaries written at store time)**", wall, cpu))
            wall, cpu, report = timed(store, lambda: select(store, sel))
            steps.append(("**later reports: `farm.reports.report.select` (query + fetch + build)**", wall, cpu))
            wall, cpu, ids = timed(store, lambda: sel.query_ids(store))
            steps.append(("  of which: query index ids (ZRANGEBYSCORE)", wall, cpu))
            wall, cpu, records = timed(store, lambda: store.load_records(ids))
            steps.append(("  of which: fetch + parse cached summaries", wall, cpu))
            wall, cpu, report = timed(store, lambda: build_report(records))  # type: ignore[arg-type]
            steps.append(("  of which: build report (baselines, bootstrap CIs, flags)", wall, cpu))
            wall, cpu, _ = timed(store, lambda: store.load_records(ids, cache=False))
            steps.append(("fetch + parse full results (MGET + pydantic-core from_json), no cache", wall, cpu))
            for label, fn in (("Markdown", to_markdown), ("CSV", to_csv), ("JSON", to_json)):
                wall, cpu, _ = timed(store, lambda fn=fn: fn(report))  # type: ignore[misc]
                steps.append((f"render {label}", wall, cpu))
            wall, cpu, _ = timed(store, lambda: store.query(), repeats=1)
            steps.append(("reference: `ResultStore.query` (pydantic-validated JobResults), 1 call", wall, cpu))
        finally:
            proc.kill9()
    rows = len(report.rows)  # type: ignore[attr-defined]
    cis = sum(1 for r in report.rows if r.speedup and r.speedup.low is not None)  # type: ignore[attr-defined]
    load = os.getloadavg()[0]
    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load:.1f}")
    print(f"{len(records)} results, {rows} rows, {cis} bootstrap CIs; median of 3 calls (first report: 1)")  # type: ignore[arg-type]
    print("(CPU = this process + redis-server: what the step costs when the machine is not shared)\n")
    print("| step | wall s | CPU s |")
    print("|---|---|---|")
    for label, wall, cpu in steps:
        print(f"| {label} | {wall:.3f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
