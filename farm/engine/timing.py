"""One timer that synchronises the device it times.

GPU work is queued asynchronously: reading the clock without waiting measures how fast kernels
are *launched*, not run (the seed experiment's impossible 0.03 s forward). Every reading here is
preceded by the device's synchronisation. A `Timer` takes its synchronisation as a function so
the CPU path costs nothing and tests can count the calls with a fake device.

`repeat` takes a fixed count; `repeat_adaptive` (a spec's `repeats: auto`) repeats until the
median's confidence interval is narrow enough, a time budget is spent, or a maximum is reached.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from farm.results.stats import median_ci

Sync = Callable[[], None]


def _no_sync() -> None:
    """CPU operators return when their work is done: nothing to wait for."""


def synchronizer(device: Any) -> Sync:
    """The function that waits for all queued work on `device` (a torch.device or string)."""
    import torch  # lazily: the Timer itself is torch-free (tests time fake devices with it)

    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    if dev.type == "mps":
        return torch.mps.synchronize
    if dev.type == "cpu":
        return _no_sync
    raise ValueError(f"no synchronisation known for device type {dev.type!r}")


@dataclass
class Timer:
    """Times a callable between two synchronised clock readings."""

    sync: Sync = _no_sync
    clock: Callable[[], float] = time.perf_counter

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = self.clock()
        out = fn()
        self.sync()
        return self.clock() - t0, out


@dataclass
class Timed:
    """Raw times of a repeated measurement; warm-up times are kept apart and not counted."""

    times_s: list[float] = field(default_factory=list)
    warmup_times_s: list[float] = field(default_factory=list)
    stop: Literal["target", "budget", "max"] | None = None  # what ended an adaptive run (None: a fixed count)


def repeat(
    fn: Callable[[], Any],
    *,
    repeats: int,
    warmup: int,
    timer: Timer,
    on_step: Callable[[int, int], None] | None = None,
) -> Timed:
    """Run `fn` `warmup` times (timed, not counted), then `repeats` times, each synchronised.

    `on_step(done, total)` is called between timed regions, never inside one.
    """
    out = Timed()
    total = warmup + repeats
    for i in range(total):
        dt, _ = timer.time(fn)
        (out.warmup_times_s if i < warmup else out.times_s).append(dt)
        if on_step is not None:
            on_step(i + 1, total)
    return out


def ci_half_width(times_s: list[float]) -> float:
    """Half the width of the median's confidence interval (`farm.results.stats.median_ci`), relative to the median."""
    xs = sorted(times_s)
    lo, hi, _coverage = median_ci(xs)
    mid = statistics.median(xs)
    return (hi - lo) / 2 / mid if mid > 0 else float("inf")


def repeat_adaptive(
    fn: Callable[[], Any],
    *,
    warmup: int,
    timer: Timer,
    target: float,
    budget_s: float,
    max_repeats: int,
    min_repeats: int = 5,
    deadline: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    on_step: Callable[[int, int], None] | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> Timed:
    """Warm up, then repeat `fn` until one of three things stops it, never before `min_repeats`:

    - "target": the median's CI half-width (`ci_half_width`) is at most `target` of the median;
    - "budget": the timed repeats have taken `budget_s` seconds, or one more repeat (at the
      median so far) would pass `deadline` (a `time.monotonic()` value: the job's time limit);
    - "max": `max_repeats` repeats are done.

    Like torch.utils.benchmark's `adaptive_autorange` (which stops on IQR / median below a
    threshold, or `max_run_time`), but on the interval that reports print. `on_step(done, total)`
    is called between timed regions with total = warmup + max_repeats, an upper bound.

    `agree(stop)`, the stop hook of processes that must repeat in step (DDP ranks), is called after
    every repeat from `min_repeats` on with this process's decision and returns the group's (rank 0's,
    broadcast); a process that stops on the group's word without a reason of its own says "budget".
    """
    out = Timed()
    total = warmup + max_repeats
    for i in range(warmup):
        dt, _ = timer.time(fn)
        out.warmup_times_s.append(dt)
        if on_step is not None:
            on_step(i + 1, total)
    spent = 0.0
    while True:
        dt, _ = timer.time(fn)
        out.times_s.append(dt)
        spent += dt
        n = len(out.times_s)
        if on_step is not None:
            on_step(warmup + n, total)
        if n >= max_repeats:
            out.stop = "max"
            break
        if n < min_repeats:
            continue
        stop: Literal["target", "budget"] | None = None
        if ci_half_width(out.times_s) <= target:
            stop = "target"
        elif spent >= budget_s or (deadline is not None and monotonic() + sorted(out.times_s)[n // 2] > deadline):
            stop = "budget"
        if agree is not None and agree(stop is not None):
            out.stop = stop or "budget"
            break
        if agree is None and stop is not None:
            out.stop = stop
            break
    return out
