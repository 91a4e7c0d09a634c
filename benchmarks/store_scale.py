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
results under 1 s. Sizes above `--report-max` get no report (its time is extrapolated from the
measured sizes, labelled so). Prints a Markdown table with goals and verdicts, and the machine.

    .venv/bin/python benchmarks/store_scale.py [--sizes 10000,100000] [--write-sample 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic_core

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_10k import fill, results

from farm.cluster.redisproc import RedisProcess
from farm.reports.report import Selection, build_report, select
from farm.results.records import record_from_dict, summary_json
from farm.results.result import JobResult
from farm.results.store import ResultStore

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
                first, _ = timed(store, lambda: select(store, sel))
                calls = [timed(store, lambda: select(store, sel))[0] for _ in range(3)]
                later = (statistics.median(c[0] for c in calls), statistics.median(c[1] for c in calls))
                ids = sel.query_ids(store)
                load, records = timed(store, lambda: store.load_records(ids))
                build, _ = timed(store, lambda: build_report(records))
                del records
            return Row(n, w_old, w_new, spent / n * 1e6, old_rs + parts["idx"], sum(parts.values()), parts, first,
                       later, load, build)  # fmt: skip
        finally:
            proc.kill9()


def fmt(t: tuple[float, float]) -> str:
    return f"{t[0]:.2f} ({t[1]:.2f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated result counts")
    ap.add_argument("--write-sample", type=int, default=2000, help="results written both ways for the write cost")
    ap.add_argument("--report-max", type=int, default=100_000, help="no report above this size (extrapolated)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
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


if __name__ == "__main__":
    main()
