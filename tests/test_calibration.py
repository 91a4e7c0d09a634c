"""A CPU peak calibrated while the machine was busy must not make an honest result `invalid`."""

from __future__ import annotations

import json

from farm.engine.hardware import _calibration_file, cpu_peak
from farm.engine.runner import run_job
from farm.spec import parse_spec


def _spec():
    return parse_spec(
        {"model": "gpt2-tiny", "batch": 1, "seq": 32, "repeats": 2, "warmup": 0, "phases": ["forward"], "threads": 1}
    )


def test_low_cached_peak_is_remeasured_before_calling_a_phase_invalid() -> None:
    spec = _spec()
    real = cpu_peak(spec.dtype, spec.matmul_precision, 1)
    path = _calibration_file()
    cache = json.loads(path.read_text())
    key = next(k for k in cache if k.endswith(f"|1|{spec.dtype}|{spec.matmul_precision}|2048"))
    cache[key] = 1e6  # 1 MFLOP/s: as if calibrated while the machine was saturated
    path.write_text(json.dumps(cache))

    result = run_job(spec.expand()[0])

    assert result.status == "ok", result.error
    fwd = result.phases["forward"]
    assert fwd.peak_flops is not None and fwd.peak_flops > 1e6
    assert fwd.mfu is not None and 0 < fwd.mfu < 1.25
    assert any("re-measured" in w for w in result.warnings)
    # The cache now holds the larger, fresh figure (never lowered again).
    assert json.loads(path.read_text())[key] >= 0.25 * real.flops


def test_peak_cache_keeps_the_highest_measurement() -> None:
    first = cpu_peak("float32", "highest", 1)
    again = cpu_peak("float32", "highest", 1, refresh=True)
    assert again.flops >= first.flops
