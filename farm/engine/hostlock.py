"""One timed job per host: a host-wide lock around every timed region, and the load beside it.

The embedded farm runs a CPU worker and one worker per GPU on one host, and a CPU worker may run
`--concurrency N` jobs: without a lock they would time each other. Every timed region (each phase,
and a job's device set-up with the CPU peak calibration) holds an exclusive `flock` on one file,
`<data dir>/host.lock` (`farm.paths.data_dir`; `FARM_HOST_LOCK_FILE` names another, e.g. one under
/var/lock shared by several users). The wait is reported apart (`HostLoad.lock_wait_s`), never
timed; while waiting, the job's deadline still holds (`JobTimeout`) and progress says "waiting
for the host lock". `FARM_HOST_LOCK=off` turns it off for hosts whose operator wants parallel
jobs; every phase then records `locked: false`.

Beside the lock, each region records what else the host did (`HostLoad`): the 1-minute load
average and the CPU time other processes used, from the kernel's counters (psutil): system-wide
busy time minus this process's own user + system time (all its threads), over the region. A
region is `contended` when others used more than `CONTENDED_SHARE` of the cores the job used
over its wall time, and more than `MIN_OTHER_CPU_S` (below that the kernel's 10 ms accounting
ticks make the figure noise). No torch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from farm.errors import JobTimeout
from farm.paths import data_dir
from farm.results.host import HostLoad

CONTENDED_SHARE = 0.10  # others' CPU time above this share of the job's cores x wall time: contended
MIN_OTHER_CPU_S = 0.05  # ... and above this many CPU seconds (accounting-tick resolution)
_OFF = ("0", "off", "false", "no")


def lock_enabled() -> bool:
    """The host lock is on unless `FARM_HOST_LOCK` is 0, off, false or no."""
    return os.environ.get("FARM_HOST_LOCK", "on").strip().lower() not in _OFF


def lock_path() -> Path:
    """`$FARM_HOST_LOCK_FILE`, else `<data dir>/host.lock`."""
    explicit = os.environ.get("FARM_HOST_LOCK_FILE")
    return Path(explicit) if explicit else data_dir() / "host.lock"


@dataclass(frozen=True)
class CpuSnapshot:
    """Counters read at one instant: system-wide busy CPU seconds, this process's CPU seconds, wall time."""

    busy_s: float
    own_s: float
    wall: float

    @classmethod
    def now(cls) -> CpuSnapshot:
        t = psutil.cpu_times()
        # Linux counts guest time inside user/nice already; idle and iowait are not busy.
        total = sum(t)
        for not_busy in ("idle", "iowait", "guest", "guest_nice"):
            total -= getattr(t, not_busy, 0.0)
        own = psutil.Process().cpu_times()
        # Waited children (DDP ranks) are the job's own work, not other processes' load.
        own_s = own.user + own.system + own.children_user + own.children_system
        return cls(busy_s=total, own_s=own_s, wall=time.perf_counter())


def judge_contention(other_cpu_s: float, wall_s: float, cores: int) -> tuple[bool, str | None]:
    """(contended, reason) for others' CPU seconds over a region of `wall_s` on a job using `cores`."""
    allowed = CONTENDED_SHARE * cores * wall_s
    if other_cpu_s > allowed and other_cpu_s > MIN_OTHER_CPU_S:
        share = other_cpu_s / wall_s if wall_s > 0 else float("inf")
        return True, (
            f"other processes used {other_cpu_s:.2f} CPU s in {wall_s:.2f} s ({share:.2f} cores) while the job "
            f"used {cores} core(s); allowed {CONTENDED_SHARE:.0%} of them ({allowed:.2f} CPU s)"
        )
    return False, None


def host_load(
    start: CpuSnapshot, end: CpuSnapshot, *, cores: int, lock_wait_s: float = 0.0, locked: bool = True
) -> HostLoad:
    """The host's load over a region between two snapshots."""
    wall = max(end.wall - start.wall, 0.0)
    own = max(end.own_s - start.own_s, 0.0)
    other = max(end.busy_s - start.busy_s - own, 0.0)
    contended, reason = judge_contention(other, wall, cores)
    return HostLoad(
        lock_wait_s=lock_wait_s,
        locked=locked,
        load_avg_1m=psutil.getloadavg()[0],
        other_cpu_s=other,
        own_cpu_s=own,
        wall_s=wall,
        contended=contended,
        reason=reason,
    )


class _Held(threading.local):
    """Per thread (and per process: a forked child starts with none): the lock's nesting depth."""

    def __init__(self) -> None:
        self.pid = 0
        self.depth = 0


_held = _Held()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" (held by {text})" if text else ""


@contextlib.contextmanager
def host_lock(
    what: str,
    *,
    deadline: float | None = None,
    on_wait: Callable[[], None] | None = None,
    path: Path | None = None,
) -> Iterator[float]:
    """Hold the host lock for `what`; yields the seconds waited for it (0.0 when it was free, off or held already).

    Raises JobTimeout when `deadline` (a `time.monotonic()` value) passes while waiting. `on_wait`
    is called when the wait starts and about once a second during it. Nested use in one thread
    holds the lock once.
    """
    if not lock_enabled():
        yield 0.0
        return
    if _held.pid == os.getpid() and _held.depth > 0:
        _held.depth += 1
        try:
            yield 0.0
        finally:
            _held.depth -= 1
        return
    p = path or lock_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    t0 = time.monotonic()
    blocked = False
    told = None
    delay = 0.002
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                blocked = True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise JobTimeout(
                        f"{what}: time limit reached after {now - t0:.1f} s waiting for the host lock {p}{_holder(fd)}"
                    ) from None
                if on_wait is not None and (told is None or now - told >= 1.0):
                    on_wait()
                    told = now
                time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - now)))
                delay = min(delay * 2, 0.05)
        waited = time.monotonic() - t0 if blocked else 0.0
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        _held.pid, _held.depth = os.getpid(), 1
        try:
            yield waited
        finally:
            _held.pid, _held.depth = 0, 0
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass
class Region:
    """Filled in when a `timed_region` ends: the host's load over it."""

    load: HostLoad | None = None


@contextlib.contextmanager
def timed_region(
    what: str,
    *,
    cores: int,
    deadline: float | None = None,
    on_wait: Callable[[], None] | None = None,
    extra_wait_s: float = 0.0,
) -> Iterator[Region]:
    """Hold the host lock around a timed region and record the host's load over it (`Region.load`).

    `extra_wait_s` (a wait for the lock spent before the region, e.g. before the job's set-up) is
    added to the region's reported `lock_wait_s`.
    """
    region = Region()
    with host_lock(what, deadline=deadline, on_wait=on_wait) as waited:
        start = CpuSnapshot.now()
        yield region
        end = CpuSnapshot.now()
        region.load = host_load(start, end, cores=cores, lock_wait_s=waited + extra_wait_s, locked=lock_enabled())
