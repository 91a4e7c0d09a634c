"""The timer synchronises the device before every clock reading; warm-ups are kept apart."""

from __future__ import annotations

import pytest
import torch

from farm.engine.timing import Timer, ci_half_width, repeat, repeat_adaptive, synchronizer


class FakeDevice:
    """A device that queues work and only finishes it when synchronised (like a GPU stream).

    Every event goes into one log, so the order of syncs, clock readings and work can be checked.
    The clock is virtual: it advances only when queued work completes on `sync`.
    """

    def __init__(self) -> None:
        self.log: list[str] = []
        self.now = 100.0
        self.queued = 0.0  # seconds of enqueued work not yet done

    def sync(self) -> None:
        self.log.append("sync")
        self.now += self.queued
        self.queued = 0.0

    def clock(self) -> float:
        self.log.append("clock")
        return self.now

    def launch(self, seconds: float) -> None:
        """Enqueue a kernel of `seconds`; returns at once, as a CUDA launch does."""
        self.log.append("work")
        self.queued += seconds


def test_sync_before_each_clock_reading() -> None:
    dev = FakeDevice()
    timer = Timer(sync=dev.sync, clock=dev.clock)
    dt, out = timer.time(lambda: dev.launch(0.5) or "result")
    assert out == "result"
    assert dev.log == ["sync", "clock", "work", "sync", "clock"]
    assert dt == pytest.approx(0.5)  # the queued work is inside the measurement


def test_work_queued_before_the_timer_is_not_counted() -> None:
    dev = FakeDevice()
    dev.launch(3.0)  # earlier work still running on the device
    dt, _ = Timer(sync=dev.sync, clock=dev.clock).time(lambda: dev.launch(0.25))
    assert dt == pytest.approx(0.25)


def test_an_unsynchronised_timer_measures_launches_not_work() -> None:
    """The seed experiment's bug, reproduced on the fake device: without sync, the work is invisible."""
    dev = FakeDevice()
    no_sync = Timer(sync=lambda: None, clock=dev.clock)
    dt, _ = no_sync.time(lambda: dev.launch(0.5))
    assert dt == 0.0
    # The synchronised timer first drains the work left over (not counted), then times its own.
    dt, _ = Timer(sync=dev.sync, clock=dev.clock).time(lambda: dev.launch(0.5))
    assert dt == pytest.approx(0.5)


def test_repeat_keeps_warmup_apart_and_syncs_every_repeat() -> None:
    dev = FakeDevice()
    durations = iter([10.0, 20.0, 1.0, 2.0, 3.0])  # two slow warm-ups, three timed repeats
    steps: list[tuple[int, int]] = []

    def on_step(done: int, total: int) -> None:
        dev.log.append("step")
        steps.append((done, total))

    timed = repeat(
        lambda: dev.launch(next(durations)),
        repeats=3,
        warmup=2,
        timer=Timer(sync=dev.sync, clock=dev.clock),
        on_step=on_step,
    )
    assert timed.warmup_times_s == pytest.approx([10.0, 20.0])
    assert timed.times_s == pytest.approx([1.0, 2.0, 3.0])
    assert steps == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    # Each of the 5 regions: sync, clock, work, sync, clock; progress only between regions.
    assert dev.log == ["sync", "clock", "work", "sync", "clock", "step"] * 5
    assert dev.log.count("sync") == dev.log.count("clock") == 10


def test_repeat_without_warmup() -> None:
    dev = FakeDevice()
    timed = repeat(lambda: dev.launch(1.0), repeats=2, warmup=0, timer=Timer(sync=dev.sync, clock=dev.clock))
    assert timed.warmup_times_s == []
    assert timed.times_s == pytest.approx([1.0, 1.0])


def _adaptive(durations: list[float], **kw: object) -> tuple[FakeDevice, object]:
    dev = FakeDevice()
    it = iter(durations)
    args = {"warmup": 1, "target": 0.02, "budget_s": 1e9, "max_repeats": 50, "min_repeats": 5, **kw}
    timed = repeat_adaptive(
        lambda: dev.launch(next(it)),
        timer=Timer(sync=dev.sync, clock=dev.clock),
        monotonic=lambda: dev.now,
        **args,  # type: ignore[arg-type]
    )
    return dev, timed


def test_adaptive_stops_on_the_target_never_before_the_minimum() -> None:
    steady = [9.0] + [1.0] * 20  # a slow warm-up, then identical repeats: the CI is a point at once
    dev, timed = _adaptive(steady)
    assert timed.stop == "target" and len(timed.times_s) == 5  # type: ignore[attr-defined]
    assert timed.warmup_times_s == pytest.approx([9.0])  # type: ignore[attr-defined]
    assert dev.log.count("sync") == 2 * 6


def test_adaptive_on_noise_stops_on_budget_or_max() -> None:
    noisy = [1.0] + [1.0, 1.5] * 50  # the median's CI never narrows below 2%
    _, timed = _adaptive(noisy, budget_s=10.0)
    assert timed.stop == "budget" and sum(timed.times_s) >= 10.0  # type: ignore[attr-defined]
    _, timed = _adaptive(noisy, max_repeats=8)
    assert timed.stop == "max" and len(timed.times_s) == 8  # type: ignore[attr-defined]
    # The job's deadline: stop before a repeat that would pass it (the deadline is virtual time).
    _, timed = _adaptive(noisy, deadline=100.0 + 1.0 + 9.0)
    assert timed.stop == "budget" and 5 <= len(timed.times_s) <= 8  # type: ignore[attr-defined]


def test_ci_half_width_is_relative_to_the_median() -> None:
    xs = [1.0, 1.0, 1.0, 1.2, 0.8, 1.0]  # n = 6: the CI is [x(1), x(6)] = [0.8, 1.2]
    assert ci_half_width(xs) == pytest.approx(0.2)


def test_synchronizer_for_cuda_calls_cuda_synchronize(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    sync = synchronizer("cuda:1")
    assert calls == []  # choosing the function does not synchronise
    sync()
    sync()
    assert calls == [torch.device("cuda", 1)] * 2


def test_synchronizer_for_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(1))
    synchronizer(torch.device("mps"))()
    assert calls == [1]


def test_cpu_needs_no_sync_and_unknown_devices_are_refused() -> None:
    synchronizer("cpu")()  # a no-op, callable
    t = Timer(sync=synchronizer("cpu"))
    dt, out = t.time(lambda: sum(range(1000)))
    assert out == 499500 and dt >= 0.0
    with pytest.raises(ValueError):
        synchronizer("meta")
