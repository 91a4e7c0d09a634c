"""run_job files a job's failures by cause and never raises."""

from __future__ import annotations

import pytest

import farm.engine.runner as runner
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
