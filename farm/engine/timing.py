"""One timer that synchronises the device it times.

GPU work is queued asynchronously: reading the clock without waiting measures how fast kernels
are *launched*, not run (the seed experiment's impossible 0.03 s forward). Every reading here is
preceded by the device's synchronisation. A `Timer` takes its synchronisation as a function so
the CPU path costs nothing and tests can count the calls with a fake device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
