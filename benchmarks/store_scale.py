"""The store at scale: write cost, Redis memory per result and report time, from 10k to 100k (to 1M) results.

For each size N, a private redis-server is filled with N synthetic results (`report_10k.fill`: runs of
a CPU and an H100 job, 3 phases, 6 specs) through `ResultStore.put_result`, then:

- write µs/result, old against new, in the same run: `--write-sample` results written both ways,
  interleaved in batches of 100 so that the machine's load falls on both alike. "Old" is the write
  path before packing (plain JSON set by the old Lua script, then the summary in a second call; the
  summary is today's encoder, which costs what the old one did);
- Redis memory per result (MEMORY USAGE over every result, summary and index key, divided by N):
  new at N; old = the old format's result + summary bytes measured on the sample, plus the same
  index bytes (both formats file a result under the same index entries);
- the report: `farm.reports.report.select` over every result (query + fetch + build), the first
  call and the median of 3, and its parts (fetch + parse the records; build the report).

Goals (issue 17): write no slower than old; memory at most half of old; a report over 100,000
results under 1 s. The report of this table is today's one row per result (`every_result`); sizes
above `--report-max` get none (its time is extrapolated from the measured sizes, labelled so).

The series report (`--series-sizes`): a private redis-server filled with a lab's year (`lab`: 10
machines x 30 specs, one CPU result each a night, 3 phases: 900 series) up to N results, then
`select` over all of them, which is the series report above `SERIES_THRESHOLD` results: the first
call (in a fresh store object) and the median of 3, wall and CPU, its parts (`series_points`;
the latest records and the report over them), its rows, and Redis memory per result with the
series points. Prints Markdown tables with goals and verdicts, and the machine.

    .venv/bin/python benchmarks/store_scale.py [--sizes 10000,100000] [--write-sample 2000]
        [--series-sizes 10000,100000]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic_core

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from datetime import UTC, datetime, timedelta

from report_10k import fill, results

from farm.cluster.redisproc import RedisProcess
from farm.reports.compare import DEFAULT_BASELINE
from farm.reports.report import Selection, build_report, select, series_report
from farm.results import synthetic
from farm.results.records import record_from_dict, summary_json
from farm.results.result import JobResult
from farm.results.store import POINT, ResultStore
from farm.spec import BenchSpec

REPORT_GOAL_S = 1.0  # at 100,000 results
MEMORY_GOAL = 0.5  # of the old bytes per result

# The Lua script `put_result` ran before results were packed (plain JSON; the summary set apart).
_OLD_PUT = """
local written = redis.call('SET', KEYS[1], ARGV[1], 'NX') and 1 or 0
if written == 1 then
  for i = 2, #KEYS do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3]) end
end
return written
"""


class OldWriter:
    """`put_result` as it was before packing: plain JSON + index entries in one script, then the summary."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.script = store.r.register_script(_OLD_PUT)

    def __call__(self, res: JobResult) -> bool:
        s = self.store
        when = (res.finished_at or res.started_at).timestamp()
        doc = res.model_dump_json()
        written = bool(
            self.script(keys=[s.key("result", res.job_id), *s._index_keys(res)], args=[doc, when, res.job_id])
        )
        if written:
            rec = record_from_dict(pydantic_core.from_json(doc))
            s.r.set(s.key("summary", res.job_id), summary_json(rec, len(doc.encode())))
        return written


@dataclass
class Row:
    n: int
    write_old_us: float
    write_new_us: float
    fill_us: float  # put_result over the whole fill of N
    mem_old: float  # bytes per result
    mem_new: float
    mem_parts: dict[str, float]
    report_first_s: tuple[float, float] | None  # (wall, CPU)
    report_s: tuple[float, float] | None  # median of 3 calls
    load_s: tuple[float, float] | None
    build_s: tuple[float, float] | None


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def redis_cpu(store: ResultStore) -> float:
    info = store.r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(store: ResultStore, fn: Callable[[], Any]) -> tuple[tuple[float, float], Any]:
    """(wall s, CPU s of this process + redis-server) of one call, and what it returned."""
    c0, r0, t0 = time.process_time(), redis_cpu(store), time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0, time.process_time() - c0 + redis_cpu(store) - r0), out


def write_compare(url: str, sample: int) -> tuple[float, float, float]:
    """µs/result old and new over `sample` results each (interleaved batches); old result+summary bytes."""
    old, new = ResultStore.from_url(url, prefix="wold"), ResultStore.from_url(url, prefix="wnew")
    writers: dict[str, Callable[[JobResult], object]] = {"old": OldWriter(old), "new": new.put_result}
    spent = {"old": 0.0, "new": 0.0}
    todo = list(results(sample, seed=1))
    n = (len(todo) // 100) * 100
    for b in range(0, n, 100):
        for kind in ("old", "new") if b % 200 == 0 else ("new", "old"):  # who goes first alternates
            t0 = time.perf_counter()
            for r in todo[b : b + 100]:
                writers[kind](r)
            spent[kind] += time.perf_counter() - t0
    mem = old.result_memory()
    for s in (old, new):
        keys = list(s.r.scan_iter(match=s.key("*"), count=1000))
        for i in range(0, len(keys), 1000):
            s.r.delete(*keys[i : i + 1000])
    return spent["old"] / n * 1e6, spent["new"] / n * 1e6, (mem["result"] + mem["summary"]) / n


def measure(n: int, sample: int, report: bool) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        proc = RedisProcess(Path(tmp) / "redis").start()
        try:
            w_old, w_new, old_rs = write_compare(proc.url, sample)
            store = ResultStore.from_url(proc.url)
            t0 = time.perf_counter()
            spent = fill(store, n)
            print(f"  N={n}: filled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            mem = store.result_memory()
            parts = {k: v / n for k, v in mem.items()}
            first = later = load = build = None
            if report:
                sel = Selection()
                first, _ = timed(store, lambda: select(store, sel, every_result=True))
                calls = [timed(store, lambda: select(store, sel, every_result=True))[0] for _ in range(3)]
                later = (statistics.median(c[0] for c in calls), statistics.median(c[1] for c in calls))
                ids = sel.query_ids(store)
                load, records = timed(store, lambda: store.load_records(ids))
                build, _ = timed(store, lambda: build_report(records))
                del records
            return Row(n, w_old, w_new, spent / n * 1e6, old_rs + parts["idx"], sum(parts.values()), parts, first,
                       later, load, build)  # fmt: skip
        finally:
            proc.kill9()


# A lab's year: 10 machines x 30 specs, one CPU result of each a night (3 phases: 900 series).
LAB_MACHINES = 10
LAB_SPECS = [
    BenchSpec(model=m, batch=b, seq=q, repeats=5)
    for m in ("gpt2-tiny", "gpt2", "gpt2-medium")
    for b in (1, 2, 4, 8, 16)
    for q in (64, 128)
]
LAB_START = datetime(2026, 1, 1, tzinfo=UTC)


def lab(n: int, seed: int = 0, variants: int = 3, start: int = 0) -> Iterator[JobResult]:
    """Results `start`..n-1 of the lab, night after night (run `n<night>-<machine>`, one job per spec)."""
    rng = random.Random(seed)
    templates = []
    for m in range(LAB_MACHINES):
        fp = synthetic.machine(f"lab{m:02d}")
        for spec in LAB_SPECS:
            scale = spec.batch * spec.seq / 128 * (1 + 10 * (spec.model_name != "gpt2-tiny"))
            for _ in range(variants):
                ts = {
                    "init": [0.5 * scale**0.3],
                    "forward": [0.05 * scale * rng.lognormvariate(0, 0.03) for _ in range(5)],
                    "train": [0.15 * scale * rng.lognormvariate(0, 0.03) for _ in range(5)],
                }
                templates.append(synthetic.result("t", 0, "cpu", ts, spec=spec, fingerprint=fp))
    per_night = LAB_MACHINES * len(LAB_SPECS)
    for i in range(start, n):
        night, k = divmod(i, per_night)
        m, s = divmod(k, len(LAB_SPECS))
        res = templates[(m * len(LAB_SPECS) + s) * variants + night % variants]
        run = f"n{night:04d}-{m:02d}"
        when = LAB_START + timedelta(days=night, seconds=k)
        yield res.model_copy(update={"run_id": run, "job_id": f"{run}-{s:03d}", "finished_at": when})


@dataclass
class SeriesRow:
    n: int
    series: int
    rows: int
    mem: float  # bytes per result, every kind
    mem_series: float  # of which the series points and meta
    first_s: tuple[float, float]
    report_s: tuple[float, float]
    points_s: tuple[float, float]
    build_s: tuple[float, float]


def measure_series(n: int) -> SeriesRow:
    with tempfile.TemporaryDirectory() as tmp:
        proc = RedisProcess(Path(tmp) / "redis").start()
        try:
            store = ResultStore.from_url(proc.url)
            t0 = time.perf_counter()
            for res in lab(n):
                store.put_result(res)
            print(f"  lab N={n}: filled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            mem = store.result_memory()
            sel = Selection()
            fresh = ResultStore.from_url(proc.url)
            first, rep = timed(fresh, lambda: select(fresh, sel))
            assert rep.series is not None, "not a series report"
            calls = [timed(store, lambda: select(store, sel))[0] for _ in range(3)]
            later = (statistics.median(c[0] for c in calls), statistics.median(c[1] for c in calls))
            points, _ = timed(store, lambda: store.series_points())
            build, _ = timed(store, lambda: series_report(store, sel, rep.baseline))
            return SeriesRow(n, rep.series.series, len(rep.rows), sum(mem.values()) / n, mem["series"] / n, first,
                             later, points, build)  # fmt: skip
        finally:
            proc.kill9()


def measure_series_simulated(n: int) -> tuple[tuple[float, float], tuple[float, float], int]:
    """The series report over n results' points, simulated: the last night's 300 results stored
    with `put_result`, every earlier night's points written straight into the series blobs (the
    bytes `put_result` would have appended). `series_report` timed (median of 3) and `series_points`."""
    per_night = LAB_MACHINES * len(LAB_SPECS)
    with tempfile.TemporaryDirectory() as tmp:
        proc = RedisProcess(Path(tmp) / "redis").start()
        try:
            store = ResultStore.from_url(proc.url)
            for res in lab(n, start=n - per_night):
                store.put_result(res)
            nights = n // per_night - 1
            rng = np.random.default_rng(0)
            pipe = store.rb.pipeline(transaction=False)
            for sid in store.r.hkeys(store.key("series-meta")):
                last = store.rb.get(store.series_key(sid))
                pts = np.zeros(nights, dtype=POINT)
                pts["at"] = LAB_START.timestamp() + 86400.0 * np.arange(nights)
                pts["median_s"] = np.frombuffer(last, dtype=POINT)["median_s"][0] * rng.lognormal(0, 0.03, nights)
                pts["mfu"], pts["tokens_per_s"], pts["status"] = 0.1, 1000.0, 0.0
                pipe.set(store.series_key(sid), pts.tobytes() + last)
            pipe.execute()
            sel = Selection()
            calls = [timed(store, lambda: series_report(store, sel, DEFAULT_BASELINE, n))[0] for _ in range(3)]
            points, series = timed(store, lambda: store.series_points())
            report = (statistics.median(c[0] for c in calls), statistics.median(c[1] for c in calls))
            return report, points, sum(len(x.points) for x in series)
        finally:
            proc.kill9()


def fmt(t: tuple[float, float]) -> str:
    return f"{t[0]:.2f} ({t[1]:.2f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def print_series(srows: list[SeriesRow]) -> None:
    print(f"\nSeries report: `select` over every result of the lab fill ({LAB_MACHINES} machines x {len(LAB_SPECS)} ")
    print("specs, one CPU result each a night, 3 phases), one row per series with its history. First: a fresh")
    print("store object; parts: `series_points` (HGETALL + MGET + numpy) and `series_report` (the whole report).\n")
    print(
        "| results N | series | rows | report s wall (CPU): first / median of 3 (goal < 1 s at 100k) | "
        "series_points s wall (CPU) | series_report s wall (CPU) | MEMORY USAGE bytes/result (of which series) |"
    )
    print("|---|---|---|---|---|---|---|")
    for sr in srows:
        rep = f"{fmt(sr.first_s)} / {fmt(sr.report_s)}"
        if sr.n >= 100_000:
            rep += f": {verdict(sr.report_s[0] < REPORT_GOAL_S and sr.report_s[1] < REPORT_GOAL_S)} (wall and CPU)"
        print(f"| {sr.n} | {sr.series} | {sr.rows} | {rep} | {fmt(sr.points_s)} | {fmt(sr.build_s)} | "
              f"{sr.mem:.0f} ({sr.mem_series:.0f}) |")  # fmt: skip
    b = srows[-1]
    # What grows with N is reading the points (the rest is the ~300 latest results and 900 rows).
    per = b.points_s[1] / b.n
    print(f"\n1,000,000 results, extrapolated (series_points linear from N={b.n}: {per * 1e6:.2f} µs/result CPU; "
          f"the rest as at N={b.n}): ~{b.report_s[1] + per * (1_000_000 - b.n):.2f} s CPU")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated result counts")
    ap.add_argument("--write-sample", type=int, default=2000, help="results written both ways for the write cost")
    ap.add_argument("--report-max", type=int, default=100_000, help="no report above this size (extrapolated)")
    ap.add_argument("--series-sizes", default="10000,100000", help="lab fills for the series report ('' none)")
    ap.add_argument("--series-simulated", type=int, default=0, help="also the series report over N results' points, "
                    "simulated (the last night stored, earlier points written into the blobs); 0: none")  # fmt: skip
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    rows = []
    for n in sizes:
        print(f"measuring N={n} ...", file=sys.stderr, flush=True)
        rows.append(measure(n, args.write_sample, n <= args.report_max))
    measured = [r for r in rows if r.report_s is not None]
    per_result = measured[-1].report_s[1] / measured[-1].n if measured and measured[-1].report_s else None
    print(f"\nMachine: {machine()}")
    print(f"Synthetic results (benchmarks/report_10k.py fill); write cost over {args.write_sample} results each way.")
    print("CPU = this process + redis-server (what a step costs on an unshared machine). The first report")
    print("includes the one-off check of every stored result's spec hash (`migrate_spec_hashes`).\n")
    head = [
        "results N",
        "write µs/result old → new (goal: new ≤ old)",
        "MEMORY USAGE bytes/result old → new (goal ≤ 50%)",
    ]
    head += [
        "report s wall (CPU), first / median of 3 (goal < 1 s at 100k)",
        "of which fetch+parse / build, s wall (CPU)",
    ]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|")
    for r in rows:
        w = f"{r.write_old_us:.0f} → {r.write_new_us:.0f} ({r.write_new_us / r.write_old_us:.0%}): "
        w += verdict(r.write_new_us <= r.write_old_us)
        m = f"{r.mem_old:.0f} → {r.mem_new:.0f} ({r.mem_new / r.mem_old:.0%}): "
        m += verdict(r.mem_new <= MEMORY_GOAL * r.mem_old)
        if r.report_s is not None and r.report_first_s is not None and r.load_s and r.build_s:
            rep = f"{fmt(r.report_first_s)} / {fmt(r.report_s)}"
            if r.n >= 100_000:
                rep += f": {verdict(r.report_s[1] < REPORT_GOAL_S)} (CPU)"
            parts = f"{fmt(r.load_s)} / {fmt(r.build_s)}"
        else:
            guess = f"~{per_result * r.n:.0f} CPU (extrapolated, linear)" if per_result else "not run"
            rep, parts = guess + (f": {verdict(False)}" if per_result and per_result * r.n >= 1 else ""), "-"
        print(f"| {r.n} | {w} | {m} | {rep} | {parts} |")
    print("\nMemory per result, new, by key kind (bytes):")
    for r in rows:
        print(f"  N={r.n}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.mem_parts.items()) + f"; put_result over the "
              f"fill {r.fill_us:.0f} µs/result")  # fmt: skip
    series_sizes = [int(x) for x in args.series_sizes.split(",") if x]
    srows = []
    for n in series_sizes:
        print(f"measuring the series report, N={n} ...", file=sys.stderr, flush=True)
        srows.append(measure_series(n))
    if srows:
        print_series(srows)
    if args.series_simulated:
        n = args.series_simulated
        print(f"measuring the simulated series report, N={n} ...", file=sys.stderr, flush=True)
        report, points, npts = measure_series_simulated(n)
        print(f"\nSimulated N={n} ({npts} points in the blobs; the last night's results stored): series_report "
              f"{fmt(report)} s wall (CPU), median of 3; of which series_points {fmt(points)}: "
              f"{verdict(report[1] < REPORT_GOAL_S)} (< 1 s, CPU)")  # fmt: skip


if __name__ == "__main__":
    main()
