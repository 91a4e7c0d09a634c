"""Results: FLOP/s, MFU, `invalid` above the device's ceiling and `unverified` without one."""

from __future__ import annotations

import pytest

from farm.flops import forward_flops, min_phase_flops, train_flops
from farm.results.peaks import UNCERTAIN_TOLERANCE, Peak, gpu_peak
from farm.results.result import JobResult, measured_phase
from farm.spec import PRESETS, parse_spec

GPT2 = PRESETS["gpt2"]
A100 = "NVIDIA A100-SXM4-80GB"


def _forward(times: list[float], peak: Peak | None, batch: int = 8, seq: int = 1024):
    return measured_phase(
        "forward",
        times,
        [],
        flops=forward_flops(GPT2, batch, seq),
        min_flops=min_phase_flops(GPT2, batch, seq, "forward"),
        tokens=batch * seq,
        peak=peak,
    )


def _train(times: list[float], peak: Peak | None):
    return measured_phase(
        "train",
        times,
        [],
        flops=train_flops(GPT2, 8, 1024),
        min_flops=min_phase_flops(GPT2, 8, 1024, "train"),
        tokens=8 * 1024,
        peak=peak,
    )


def test_seed_gpu_forward_is_invalid_against_a100_bf16() -> None:
    """The seed: 5 forwards of GPT-2 small at 8 x 1024 (11.7 TFLOP) in 0.03 s: 390 TFLOP/s > 312."""
    peak = gpu_peak(A100, "bfloat16", "highest")
    assert peak is not None and peak.flops == 312e12
    phase = _forward([0.006] * 5, peak)
    assert phase.status == "invalid"
    assert phase.invalid_reason is not None
    assert "above the device's peak" in phase.invalid_reason and "312" in phase.invalid_reason
    assert "a100 bfloat16" in phase.invalid_reason
    # The numbers are still shown, with the MFU that gives the lie away.
    assert phase.achieved_flops == pytest.approx(forward_flops(GPT2, 8, 1024) / 0.006)
    assert phase.mfu is not None and phase.mfu > 1


def test_seed_gpu_train_needs_tf32() -> None:
    """5 steps in 1.6 s (about 22 TFLOP/s): impossible in strict fp32 on an A100, plausible with TF32."""
    strict = gpu_peak(A100, "float32", "highest")
    tf32 = gpu_peak(A100, "float32", "high")
    assert strict is not None and tf32 is not None
    assert _train([0.32] * 5, strict).status == "invalid"
    ok = _train([0.32] * 5, tf32)
    assert ok.status == "ok" and ok.invalid_reason is None
    assert ok.mfu is not None and 0 < ok.mfu < 1
    assert ok.peak_source == "table: a100 tf32 dense"


def test_plausible_cpu_forward_is_ok() -> None:
    """The seed's CPU forward: 20 s for 5 (about 0.58 TFLOP/s) against a 1 TFLOP/s theoretical peak."""
    peak = Peak(flops=1e12, source="theoretical: test")
    phase = _forward([4.1, 3.9, 4.0, 4.2, 3.8], peak)
    assert phase.status == "ok"
    assert phase.median_s == 4.0
    assert phase.achieved_flops == pytest.approx(forward_flops(GPT2, 8, 1024) / 4.0)
    assert phase.mfu == pytest.approx(phase.achieved_flops / 1e12)
    assert 0.5 < phase.mfu < 0.65
    assert phase.tokens_per_s == pytest.approx(8 * 1024 / 4.0)
    assert phase.peak_source == "theoretical: test"
    assert phase.stats is not None and phase.stats.n == 5


def test_verdict_uses_the_fastest_repeat_and_the_tolerance() -> None:
    fmin = min_phase_flops(GPT2, 8, 1024, "forward")
    known = Peak(flops=1e12, source="theoretical: test")
    uncertain = Peak(flops=1e12, source="theoretical: clock not known", tolerance=UNCERTAIN_TOLERANCE)
    # The median is plausible, but one repeat ran at 1.2x peak: above a known ceiling, invalid.
    assert _forward([fmin / 1.2e12, 4.0, 4.0], known).status == "invalid"
    assert _forward([fmin / 0.9e12, 4.0, 4.0], known).status == "ok"
    # Above an uncertain ceiling (a CPU whose max clock is not known): unverified, with the reason ...
    above = _forward([fmin / 1.2e12, 4.0, 4.0], uncertain)
    assert above.status == "unverified"
    assert "uncertain ceiling" in (above.invalid_reason or "") and "clock not known" in (above.invalid_reason or "")
    # ... and invalid beyond its tolerance (2x), whatever the median.
    far = _forward([fmin / 2.1e12, 4.0, 4.0], uncertain)
    assert far.status == "invalid" and "x 2" in (far.invalid_reason or "")


def test_ok_never_shows_mfu_above_100_percent() -> None:
    """The causal count (the check) can be under the ceiling while the full count (MFU) is above it."""
    full = forward_flops(GPT2, 8, 1024)
    fmin = min_phase_flops(GPT2, 8, 1024, "forward")
    peak = Peak(flops=1e12, source="theoretical: test")
    t = (full + fmin) / 2 / 1e12  # the full count runs at more than 1e12 FLOP/s, the causal one at less
    phase = _forward([t, t, t], peak)
    assert phase.mfu is not None and phase.mfu > 1
    assert phase.status == "unverified" and "MFU" in (phase.invalid_reason or "")
    for times in ([4.0, 4.1, 3.9], [0.5, 0.5], [fmin / 0.999e12] * 3):
        p = _forward(times, peak)
        assert p.status != "ok" or (p.mfu is not None and p.mfu <= 1)


def test_a_zero_time_is_invalid() -> None:
    """A clock that did not move while FLOPs were done is the unsynchronised timer, not infinite speed."""
    peak = gpu_peak(A100, "bfloat16", "highest")
    phase = _forward([0.0, 0.0], peak)
    assert phase.status == "invalid"
    assert phase.achieved_flops is None and phase.mfu is None
    assert phase.invalid_reason is not None and "did not wait" in phase.invalid_reason
    assert _forward([0.0, 0.5], None).status == "invalid"  # even with no peak known


def test_no_ceiling_is_unverified_and_init_has_no_flops() -> None:
    phase = _forward([0.006] * 5, None)
    assert phase.status == "unverified" and phase.mfu is None and phase.peak_flops is None
    assert "no ceiling" in (phase.invalid_reason or "")
    init = measured_phase("init", [1.2], [], flops=0, min_flops=0, tokens=0, peak=None)
    assert init.status == "ok" and init.achieved_flops is None and init.tokens_per_s is None


def test_job_is_unverified_when_a_phase_is_but_invalid_and_failed_win() -> None:
    job = parse_spec({"devices": "cuda"}).expand(run_id="r1")[0]
    unchecked = _forward([0.5] * 5, None)
    tf32 = gpu_peak(A100, "float32", "high")
    res = JobResult.for_job(job, phases={"forward": unchecked, "train": _train([0.32] * 5, tf32)}).settle_status()
    assert res.status == "unverified" and res.error == unchecked.invalid_reason
    # An invalid phase wins over an unverified one, in either order.
    bad = _train([1e-4] * 5, tf32)
    for phases in ({"forward": unchecked, "train": bad}, {"train": bad, "forward": unchecked}):
        res = JobResult.for_job(job, phases=phases).settle_status()
        assert res.status == "invalid" and res.error == bad.invalid_reason
    # A job already unverified (set by the importer) turns invalid when a phase is.
    res = JobResult.for_job(job, status="unverified", error="no GPU", phases={"train": bad}).settle_status()
    assert res.status == "invalid" and res.error == bad.invalid_reason
    failed = JobResult.for_job(job, status="failed", error="crash", phases={"forward": unchecked}).settle_status()
    assert failed.status == "failed" and failed.error == "crash"


def test_job_status_follows_an_invalid_phase_and_round_trips() -> None:
    job = parse_spec({"devices": "cuda:a100"}).expand(run_id="r1")[0]
    peak = gpu_peak(A100, "bfloat16", "highest")
    result = JobResult.for_job(job)
    result.phases["forward"] = _forward([0.006] * 5, peak)
    result.phases["train"] = _train([0.32] * 5, gpu_peak(A100, "float32", "high"))
    result.settle_status()
    assert result.status == "invalid"
    assert result.error == result.phases["forward"].invalid_reason
    assert result.spec_hash == job.spec.spec_hash() and result.model_name == "gpt2"
    back = JobResult.model_validate_json(result.model_dump_json())
    assert back == result
    failed = JobResult.failure(job, "oom", "refused before running")
    assert failed.status == "oom" and failed.finished_at is not None and failed.phases == {}
