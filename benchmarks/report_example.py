"""The README's report example: real measurements on this machine, reported by `farm report`.

What runs: gpt2-tiny and gpt2 (124M), batch 1 x seq 128, float32, all phases (init, forward,
train), 5 repeats after 1 warm-up, on this machine's CPU twice: as device tag `cpu:t1` with torch
limited to 1 thread and as `cpu:t2` with 2 threads (the spec leaves `threads` unset, so both jobs
share one spec hash and compare; each result records the threads it used). One run, 4 jobs, run
in this process by `farm.engine.runner.run_job`, stored in a private redis-server; then the real CLI:

    farm report RUN --baseline device=cpu:t1 --format markdown -o docs/report-example.md
    farm report RUN --baseline device=cpu:t1 --format csv -o docs/img/report-example.csv
    farm report RUN --baseline device=cpu:t1 -o docs/img/report-example.html

and the time-by-device plot of gpt2 is saved as docs/img/report-example.png. The CPU's ceiling
(theoretical peak) and GEMM roofline are measured fresh, in a private FARM_HOME.

With `--runs N` (default 3) the whole run is repeated N times (as N nights would be), the report
shows the newest, and the pooled comparison over all N, whose interval accounts for how much runs
differ (hierarchical bootstrap), is written by

    farm compare RUN1 RUN2 RUN3 --pool --baseline device=cpu:t1 --format markdown -o docs/report-example-pool.md

    .venv/bin/python benchmarks/report_example.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs to make and pool (default 3)")
    args = ap.parse_args()
    # A fresh CPU ceiling and roofline (1 and 2 threads) measured in this run, not an old cached one.
    os.environ["FARM_HOME"] = tempfile.mkdtemp(prefix="farm-example-")
    import torch

    from farm.cluster.redisproc import RedisProcess
    from farm.engine.runner import run_job
    from farm.reports.compare import Baseline
    from farm.reports.plots import time_bars_png
    from farm.reports.report import build_report
    from farm.results.records import records_from_results
    from farm.results.store import ResultStore
    from farm.spec import BenchSpec, new_run_id

    runs: dict[str, list] = {}
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    for _ in range(args.runs):
        run_id = new_run_id()
        results = runs[run_id] = []
        for m, model in enumerate(("gpt2-tiny", "gpt2")):
            spec = BenchSpec(model=model, batch=1, seq=128, repeats=5, warmup=1, devices=("cpu:t1", "cpu:t2"))
            for k, (job, threads) in enumerate(zip(spec.expand(run_id), (1, 2), strict=True)):
                job = job.model_copy(update={"job_id": f"{run_id}-{2 * m + k:03d}"})  # one run, unique job ids
                torch.set_num_threads(threads)
                res = run_job(job)
                print(f"{run_id} {model} {job.device} ({threads} threads): {res.status}", file=sys.stderr)
                results.append(res)
    docs, img = ROOT / "docs", ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = RedisProcess(Path(tmp) / "redis").start()
        try:
            store = ResultStore.from_url(proc.url)
            for rid, rs in runs.items():
                store.create_run(rid, [], [], name="report example")
                for r in rs:
                    store.put_result(r)
            env = {**os.environ, "FARM_REDIS_URL": proc.url}
            farm = [sys.executable, "-m", "farm.cli.main", "report", run_id, "--baseline", "device=cpu:t1"]
            for fmt, out in (
                ("markdown", docs / "report-example.md"),
                ("csv", img / "report-example.csv"),
                ("html", img / "report-example.html"),
            ):
                subprocess.run([*farm, "--format", fmt, "-o", str(out)], env=env, check=True)
            pooled = [sys.executable, "-m", "farm.cli.main", "compare", *runs, "--pool", "--baseline", "device=cpu:t1"]
            subprocess.run([*pooled, "--format", "markdown", "-o", str(docs / "report-example-pool.md")], env=env,
                           check=True)  # fmt: skip
        finally:
            proc.kill9()
    report = build_report(records_from_results(results), baseline=Baseline(device="cpu:t1"))
    gpt2 = next(g for g in report.groups if g.title.startswith("gpt2 "))
    png = time_bars_png(gpt2)
    assert png is not None
    (img / "report-example.png").write_bytes(png)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print(f"runs {', '.join(runs)}: wrote docs/report-example.md (the newest run), docs/report-example-pool.md "
          "(all pooled), docs/img/report-example.{png,csv,html}", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
