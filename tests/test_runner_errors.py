"""run_job files a job's failures by cause and never raises; its CUDA set-up is timed first (a fake torch.cuda)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import farm.engine.runner as runner
from farm.results.result import PhaseResult, judge
from farm.spec import parse_spec


def _job():
    spec = parse_spec({"model": "gpt2-tiny", "batch": 1, "seq": 16, "repeats": 1, "warmup": 0, "phases": ["forward"]})
    return spec.expand(run_id="e1")[0]


@pytest.mark.parametrize(
    ("exc", "status", "text"),
    [
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"),
            "oom",
            "predicted",
        ),
        (MemoryError("no room"), "oom", "observed"),
        (RuntimeError("shape mismatch"), "failed", "RuntimeError: shape mismatch"),
        (ValueError("bad value"), "failed", "ValueError: bad value"),
    ],
)
def test_failures_are_results(monkeypatch: pytest.MonkeyPatch, exc: BaseException, status: str, text: str) -> None:
    def boom(ctx):
        raise exc

    monkeypatch.setitem(runner.PHASE_RUNNERS, "forward", boom)
    result = runner.run_job(_job())
    assert result.status == status
    assert result.error is not None and result.error.startswith("forward: ") and text in result.error


class FakeCuda:
    """torch.cuda for a GPU that is not there. Queries answer; the first call that needs the device
    creates its context (costing `context_s` of virtual time); every call goes into `log`."""

    OutOfMemoryError = torch.cuda.OutOfMemoryError

    def __init__(self, log: list[str], clock: list[float], context_s: float = 0.5) -> None:
        self.log, self.clock, self.context_s = log, clock, context_s
        self.context = False

    def _touch(self, name: str) -> None:
        self.log.append(name)
        if not self.context:
            self.context = True
            self.clock[0] += self.context_s

    # Queries: no context.
    def is_available(self) -> bool:
        self.log.append("query")
        return True

    def device_count(self) -> int:
        self.log.append("query")
        return 1

    def get_device_name(self, device: object = None) -> str:
        self.log.append("query")
        return "NVIDIA H100 80GB HBM3"

    def get_device_properties(self, device: object = None) -> SimpleNamespace:
        self.log.append("query")
        return SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                               total_memory=80 << 30, clock_rate=1_980_000)  # fmt: skip

    def is_initialized(self) -> bool:
        return True

    # Calls that need the device (a context).
    def set_device(self, device: object) -> None:
        self._touch("set_device")

    def synchronize(self, device: object = None) -> None:
        self._touch("synchronize")

    def mem_get_info(self, device: object = None) -> tuple[int, int]:
        self._touch("mem_get_info")
        return 80 << 30, 80 << 30

    def empty_cache(self) -> None:
        self._touch("empty_cache")

    def max_memory_allocated(self, device: object = None) -> int:
        self._touch("max_memory_allocated")
        return 0


class FakeTorch:
    """The runner's `torch`, real but for `torch.cuda`, `torch.empty` on CUDA and the context probe."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self._C = SimpleNamespace(_cuda_hasPrimaryContext=lambda index: cuda.context)

    def empty(self, *size: int, device: object = None, **kw: object) -> torch.Tensor:
        if torch.device(device).type == "cuda":  # type: ignore[arg-type]
            self.cuda._touch("empty")
        return torch.empty(*size, **kw)

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)


def test_cuda_context_creation_is_the_first_cuda_call_and_inside_the_timed_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why 6: `check_fits` asked CUDA for free memory before the set-up was timed, so the context was
    created untimed (0.0007 s on an H200). Now the first call that needs the device lies between the
    set-up's two clock readings, and `device_setup_s` holds the context's cost."""
    log: list[str] = []
    clock = [100.0]
    cuda = FakeCuda(log, clock)

    def read_clock() -> float:
        log.append("clock")
        return clock[0]

    def init_phase(ctx: runner.JobContext) -> PhaseResult:
        log.append("phase")
        return judge(ctx.spec, "init", [0.1], [], peak=None, peak_memory_bytes=None, memory_kind=None,
                     breakdown={"device_setup_s": ctx.device_setup_s or 0.0})  # fmt: skip

    monkeypatch.setattr(runner, "torch", FakeTorch(cuda))
    for query in ("is_available", "device_count", "get_device_name", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, query, getattr(cuda, query))  # for helpers that import torch themselves
    monkeypatch.setattr(runner, "_setup_clock", read_clock)
    monkeypatch.setattr(runner, "_devices_used", set())
    monkeypatch.setitem(runner.PHASE_RUNNERS, "init", init_phase)
    spec = parse_spec({"model": "gpt2-tiny", "batch": 1, "seq": 16, "phases": ["init"], "devices": "cuda"})

    first = runner.run_job(spec.expand(run_id="c1")[0])
    assert first.status == "ok", first.error
    touches = [i for i, e in enumerate(log) if e not in ("query", "clock", "phase")]
    clocks = [i for i, e in enumerate(log) if e == "clock"]
    assert clocks[0] < touches[0] < clocks[1], log  # the first device call is inside the timed set-up
    assert log.index("mem_get_info") > clocks[1]  # the memory check comes after it
    assert first.phases["init"].breakdown["device_setup_s"] == pytest.approx(0.5)
    assert first.fresh_process is True

    second = runner.run_job(spec.expand(run_id="c2")[0])  # the same process, the context exists
    assert second.status == "ok", second.error
    assert second.fresh_process is False
    assert second.phases["init"].breakdown["device_setup_s"] == pytest.approx(0.0)


def test_a_cpu_job_records_whether_its_process_was_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_devices_used", set())
    assert runner.run_job(_job()).fresh_process is True
    assert runner.run_job(_job()).fresh_process is False
