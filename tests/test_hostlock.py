"""One timed job per host: the host lock between real processes, its deadline, and the contention flag."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from farm.engine.hardware import cpu_peak
from farm.engine.hostlock import (
    CONTENDED_SHARE,
    CpuSnapshot,
    host_load,
    host_lock,
    judge_contention,
    lock_path,
    timed_region,
)
from farm.engine.runner import run_job
from farm.results.result import JobResult
from farm.spec import parse_spec

SPEC = {"model": "gpt2-tiny", "batch": 2, "seq": 128, "repeats": 15, "warmup": 1, "threads": 1}


def _child(start: Any, out: Any, run_id: str) -> None:
    """One farm job in its own process, started with the other at a barrier; sends its progress times."""
    from farm.engine.hardware import fingerprint

    fingerprint()  # warm what both would do at once before the barrier
    job = parse_spec({**SPEC, "phases": ["init", "forward", "train"]}).expand(run_id=run_id)[0]
    events: list[tuple[float, str]] = []
    start.wait()
    result = run_job(job, on_progress=lambda phase, done, total: events.append((time.time(), phase)))
    out.put((run_id, events, result.model_dump_json()))


def _spans(events: list[tuple[float, str]]) -> list[tuple[float, float, str]]:
    """(first, last, phase): the progress calls of each phase, all made inside its timed region."""
    spans: dict[str, list[float]] = {}
    for t, phase in events:
        if "waiting for the host lock" not in phase:
            spans.setdefault(phase, []).append(t)
    return [(min(ts), max(ts), phase) for phase, ts in spans.items()]


def test_two_processes_never_time_at_once() -> None:
    """Two jobs started together: their phases' timed regions never overlap, and one waited."""
    cpu_peak("float32", "highest", 1)  # the calibration is cached for both children
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(start, out, f"lock{i}")) for i in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    results = {run_id: JobResult.model_validate_json(doc) for run_id, _, doc in got}
    for r in results.values():
        assert r.status == "ok", r.error
        assert all(p.host is not None and p.host.locked for p in r.phases.values())
    (a_id, a_events, _), (b_id, b_events, _) = got
    for a0, a1, pa in _spans(a_events):
        for b0, b1, pb in _spans(b_events):
            assert a1 < b0 or b1 < a0, f"{a_id} {pa} [{a0}, {a1}] overlaps {b_id} {pb} [{b0}, {b1}]"
    waits = {run_id: sum(p.host.lock_wait_s for p in r.phases.values() if p.host) for run_id, r in results.items()}
    assert max(waits.values()) > 0, waits  # the second one waited (0.0 exactly when the lock was free)


def test_waiting_for_the_lock_keeps_the_deadline_and_says_so(tmp_path: Path) -> None:
    """A job whose host lock is held elsewhere times out at its limit, reporting the wait as it goes."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'pid %d: a test' % os.getpid())\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        job = parse_spec({**SPEC, "phases": ["forward"], "time_limit_s": 1.5}).expand(run_id="wait1")[0]
        progress: list[str] = []
        result = run_job(job, on_progress=lambda phase, done, total: progress.append(phase))
    finally:
        holder.kill()
        holder.wait()
    assert result.status == "timeout", result.error
    assert "waiting for the host lock" in (result.error or "") and "a test" in (result.error or "")
    assert "setup: waiting for the host lock" in progress
    assert result.phases == {}


def test_lock_off_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_HOST_LOCK", "off")
    job = parse_spec({**SPEC, "repeats": 2, "phases": ["forward"]}).expand(run_id="off1")[0]
    result = run_job(job)
    assert result.status == "ok", result.error
    host = result.phases["forward"].host
    assert host is not None and host.locked is False and host.lock_wait_s == 0.0
    assert any("host lock off" in w for w in result.warnings)


def test_nested_use_holds_the_lock_once() -> None:
    with host_lock("outer") as outer, host_lock("inner") as inner:
        assert outer == 0.0 and inner == 0.0  # a second flock on a new descriptor would deadlock here


def test_a_phase_beside_a_busy_loop_is_contended() -> None:
    """A subprocess burning a core while a region runs: others' CPU time is recorded and flagged."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        with timed_region("burn", cores=1) as region:
            time.sleep(1.0)  # the job itself idles: whatever ran, ran elsewhere
    finally:
        burner.kill()
        burner.wait()
    load = region.load
    assert load is not None and load.wall_s and load.other_cpu_s is not None
    assert load.other_cpu_s > CONTENDED_SHARE * load.wall_s  # the recorded numbers, against the threshold
    assert load.contended and load.reason and "other processes used" in load.reason
    assert load.load_avg_1m is not None and load.own_cpu_s is not None and load.own_cpu_s < load.other_cpu_s


def test_contention_rule_on_recorded_numbers() -> None:
    quiet = host_load(CpuSnapshot(10.0, 5.0, 0.0), CpuSnapshot(12.1, 7.0, 1.0), cores=2)
    assert quiet.other_cpu_s == pytest.approx(0.1) and quiet.own_cpu_s == pytest.approx(2.0)
    assert not quiet.contended and quiet.reason is None  # 0.1 CPU s of 2 cores x 1 s: under 10%
    busy = host_load(CpuSnapshot(10.0, 5.0, 0.0), CpuSnapshot(13.0, 7.0, 1.0), cores=2)
    assert busy.contended and "1.00 CPU s" in (busy.reason or "")
    assert judge_contention(0.04, 0.1, 1) == (False, None)  # under the accounting-tick floor
    assert judge_contention(0.5, 1.0, 1)[0]


def test_a_job_on_a_quiet_lock_records_its_load() -> None:
    job = parse_spec({**SPEC, "repeats": 2, "phases": ["init", "forward"]}).expand(run_id="load1")[0]
    result = run_job(job)
    assert result.status == "ok", result.error
    for p in result.phases.values():
        assert p.host is not None and p.host.locked
        assert p.host.wall_s is not None and p.host.wall_s > 0 and p.host.own_cpu_s is not None
        assert p.host.other_cpu_s is not None and p.host.load_avg_1m is not None
