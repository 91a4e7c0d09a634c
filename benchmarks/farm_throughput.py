"""Farm-level figures on loopback: submit-to-start latency, and N tiny jobs through real workers.

    python benchmarks/farm_throughput.py                       # 30 latency samples, 1000 jobs, 2 workers
    python benchmarks/farm_throughput.py --jobs 200 --latency-samples 10

A private redis-server (farm.cluster.redisproc) on 127.0.0.1 and real `farm worker` processes (Celery,
prefork, concurrency 1), stopped at the end (only the processes this script started).
1. Latency: one tiny job at a time with idle workers; `submit()` is called at t0 and the worker
   writes `started_at` into the job's hash when the job body starts. Printed: submit-to-start
   (t0 -> started_at, includes submit()'s own bookkeeping), the duration of the submit() call, and
   start minus submit()'s return (negative: the job started before submit() had returned).
   Goal: median submit-to-start below 25 ms.
2. Throughput: one run of N tiny jobs (gpt2-tiny, 1 x 8, one forward, 1 thread), distinct seeds;
   waits until every job has a result: jobs/s, lost (no result), duplicates (more than one result).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.cluster.controller import submit
from farm.cluster.redisproc import RedisProcess
from farm.results.store import ResultStore
from farm.settings import Settings
from farm.spec import parse_spec

TINY = {"model": "gpt2-tiny", "batch": 1, "seq": 8, "repeats": 1, "warmup": 0, "phases": "forward", "threads": 1}


def start_worker(url: str, name: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "farm.cli.main", "worker", "--device", "cpu", "--name", name]
    cmd += ["--concurrency", "1", "--loglevel", "warning", "--queues", "cpu"]
    with open(log_dir / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "FARM_REDIS_URL": url},
            start_new_session=True,  # its own process group: stopped as one, nothing else touched
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    with contextlib.suppress(ProcessLookupError):  # pool children left in the group
        os.killpg(proc.pid, signal.SIGKILL)


def latency(store: ResultStore, settings: Settings, samples: int, timeout: float) -> dict[str, float]:
    spec = parse_spec(TINY)
    s2s, e2s = [], []
    for i in range(samples):
        t0 = time.time()
        sub = submit(spec.model_copy(update={"seed": 10_000 + i}), settings=settings)
        t1 = time.time()
        job_id = sub.jobs[0].job_id
        key = store.key("job", job_id)
        deadline = time.monotonic() + timeout
        started = None
        while started is None and time.monotonic() < deadline:
            started = store.r.hget(key, "started_at")
            if started is None:
                time.sleep(0.0005)
        if started is None:
            raise TimeoutError(f"job {job_id} did not start within {timeout} s")
        s2s.append(float(started) - t0)
        e2s.append(float(started) - t1)
        while not store.has_result(job_id) and time.monotonic() < deadline:  # idle workers for the next one
            time.sleep(0.005)
    return {
        "samples": samples,
        "submit_to_start_median_ms": 1e3 * statistics.median(s2s),
        "submit_to_start_min_ms": 1e3 * min(s2s),
        "submit_to_start_max_ms": 1e3 * max(s2s),
        "start_minus_submit_return_median_ms": 1e3 * statistics.median(e2s),
        "submit_call_median_ms": 1e3 * statistics.median([a - b for a, b in zip(s2s, e2s, strict=True)]),
    }


def throughput(store: ResultStore, settings: Settings, n: int, timeout: float) -> dict[str, object]:
    spec = parse_spec(TINY)
    specs = [spec.model_copy(update={"seed": i}) for i in range(n)]
    t0 = time.monotonic()
    sub = submit(specs, settings=settings)
    t_submit = time.monotonic() - t0
    job_ids = [j.job_id for j in sub.jobs]
    idx = store.key("idx", "run", sub.run_id)
    deadline = t0 + timeout
    while int(store.r.zcard(idx)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    results = store.get_results(job_ids)
    got = [r.job_id for r in results]
    result_keys = sum(1 for _ in store.r.scan_iter(match=store.key("result", sub.run_id) + "-*"))
    by_worker: dict[str, int] = {}
    for r in results:
        by_worker[r.worker or "?"] = by_worker.get(r.worker or "?", 0) + 1
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "jobs": n,
        "submit_s": round(t_submit, 2),
        "elapsed_s": round(elapsed, 1),
        "jobs_per_s": round(len(set(got)) / elapsed, 2),
        "results": len(set(got)),
        "lost": n - len(set(got)),
        "duplicate_result_keys": result_keys - len(set(got)),
        "statuses": statuses,
        "by_worker": by_worker,
        "timed_out": elapsed >= timeout,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency-samples", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for all jobs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="farm-throughput-"))
    env = {"FARM_HOME": str(tmp / "home"), "FARM_HEARTBEAT_INTERVAL": "1", "FARM_HEARTBEAT_TTL": "5"}
    os.environ.update(env)
    redis_proc = RedisProcess(tmp / "redis").start()
    workers: list[subprocess.Popen[bytes]] = []
    out: dict[str, object] = {"machine": "shared 2-core development machine (other engineers' tests running)"}
    try:
        settings = Settings(redis_url=redis_proc.url, home=tmp / "home")
        store = ResultStore.from_url(redis_proc.url)
        names = [f"bench-{i}-{os.getpid()}" for i in range(args.workers)]
        t0 = time.monotonic()
        workers = [start_worker(redis_proc.url, n, env, tmp) for n in names]
        while not all(store.r.exists(store.key("worker", n)) for n in names):
            if any(w.poll() is not None for w in workers) or time.monotonic() - t0 > 180:
                raise RuntimeError(f"workers did not start; logs in {tmp}")
            time.sleep(0.2)
        out["workers_ready_s"] = round(time.monotonic() - t0, 1)
        print(f"{args.workers} workers ready in {out['workers_ready_s']} s (redis {redis_proc.url})", flush=True)
        # One warm-up job (calibration, imports in the pool child) before any timing.
        latency(store, settings, 2, 120)
        lat = latency(store, settings, args.latency_samples, 120)
        out["latency"] = lat
        print("latency: " + json.dumps({k: round(v, 2) for k, v in lat.items()}), flush=True)
        thr = throughput(store, settings, args.jobs, args.timeout)
        out["throughput"] = thr
        print("throughput: " + json.dumps(thr), flush=True)
        goal = "met" if lat["submit_to_start_median_ms"] < 25 else "NOT met"
        print(
            f"\nsubmit-to-start median {lat['submit_to_start_median_ms']:.1f} ms (goal < 25 ms: {goal}); "
            f"submit() call median {lat['submit_call_median_ms']:.1f} ms; "
            f"{thr['jobs']} jobs through {args.workers} workers: {thr['jobs_per_s']} jobs/s, lost {thr['lost']}, "
            f"duplicates {thr['duplicate_result_keys']}"
        )
    finally:
        for w in workers:
            stop_worker(w)
        redis_proc.stop()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
