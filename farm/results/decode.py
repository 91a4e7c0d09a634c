"""The figures of a `generate` phase (docs/generation.md), derived from its raw times.

`derive_generation` turns the raw readings (per timed repeat: the prefill's time and the decode's
time; per decode step of the last repeat: its time) into the figures reports show: time to first
token, decode tokens/s, per-token latency percentiles, KV-cache bytes predicted and observed, the
bytes one decode step moves and the memory-bandwidth utilisation (MBU) against a named ceiling.
`bandwidth_verdict` is the decode's plausibility check: a step that moved more bytes than the
ceiling allows in its time is `invalid`, as a forward above the FLOP peak is, but only where the
step moves well more than the last-level cache holds (CACHE_MARGIN); below, the cache may have
served it, and the check is not made (said in `bandwidth_note`; the FLOP check still applies).
Every figure is re-derivable from the raw times and the spec, so `farm import` re-judges it, and
`consistency_verdict` checks the raw readings against each other and the FLOP ceiling: a prefill and
decode that add up to more than the whole generation, a count of step times that is not the decode
steps, or a prefill or decode step faster than the device's peak is `invalid`.
Never imports torch.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from farm.flops import (
    decode_step_bytes,
    decode_step_flops,
    decode_steps,
    kv_cache_bytes,
    prefill_flops,
    weight_and_kv_bytes,
)
from farm.results.peaks import CACHE_MARGIN, Bandwidth, Peak
from farm.spec import LEGACY_MAX_REPEATS, MAX_GEN_TOKENS, BenchSpec

BandwidthCheck = Literal["checked", "below cache", "no ceiling", "no decode"]
Verdict = Literal["ok", "unverified", "invalid"]
# A generation's parts are timed inside the whole: prefill + decode may exceed the whole only by the
# timer's own cost, bounded here at 1% plus 100 µs (a synchronising read costs microseconds).
PART_TOLERANCE = 0.01
PART_SLACK_S = 1e-4
RANK: dict[str, int] = {"ok": 0, "unverified": 1, "invalid": 2}


class Generation(BaseModel):
    """Prefill, decode and memory figures of one `generate` phase (times in seconds, bytes, bytes/s)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gen_tokens: int = Field(gt=0, le=MAX_GEN_TOKENS)  # new tokens per sequence: 1 from the prefill + decode steps
    decode_steps: int = Field(ge=0, le=MAX_GEN_TOKENS)
    # Raw: per timed repeat (as the phase's times_s), and per decode step of the last timed repeat.
    prefill_times_s: list[float] = Field(default=[], max_length=LEGACY_MAX_REPEATS)
    decode_times_s: list[float] = Field(default=[], max_length=LEGACY_MAX_REPEATS)
    token_times_s: list[float] = Field(default=[], max_length=MAX_GEN_TOKENS)
    # Derived.
    prefill_s: float | None = None  # median prefill: the time to first token
    decode_s: float | None = None  # median time of the decode steps of one generation
    decode_tokens_per_s: float | None = None  # batch x decode steps / decode_s
    token_p50_s: float | None = None  # per-token (per-step) latency percentiles of token_times_s
    token_p90_s: float | None = None
    token_p99_s: float | None = None
    kv_cache_bytes_predicted: int | None = None  # batch x (seq + gen_tokens) positions, every layer
    kv_cache_bytes_observed: int | None = None  # bytes of the cache tensors allocated
    bytes_per_step: float | None = None  # mean over the decode steps: weights once + every sequence's KV read
    bytes_per_token: float | None = None  # bytes_per_step / batch
    achieved_bandwidth: float | None = None  # decode bytes / decode_s
    bandwidth_peak: float | None = None
    bandwidth_source: str | None = None
    mbu: float | None = None  # achieved_bandwidth / bandwidth_peak
    cache_bytes: int | None = None  # the last-level cache the check compares a step's bytes with
    cache_source: str | None = None
    bandwidth_check: BandwidthCheck = "no ceiling"
    bandwidth_note: str | None = None


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _pct(xs: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation between order statistics, numpy's default)."""
    return float(np.percentile(xs, q)) if xs else None


def step_bytes(spec: BenchSpec, step: int) -> int:
    """Bytes decode step `step` (from 1) moves: its new token makes seq + step cached positions."""
    w_bytes, kv_bytes = weight_and_kv_bytes(spec)
    return decode_step_bytes(spec.shape, spec.batch, spec.seq + step, w_bytes, kv_bytes)


def derive_generation(
    spec: BenchSpec,
    prefill_times_s: list[float],
    decode_times_s: list[float],
    token_times_s: list[float],
    *,
    kv_cache_bytes_observed: int | None,
    bandwidth: Bandwidth | None,
) -> Generation:
    """Every figure of a generate phase from its raw times, the spec and the bandwidth ceiling."""
    steps = decode_steps(spec.gen_tokens)
    _, kv_bytes = weight_and_kv_bytes(spec)
    total_bytes = sum(step_bytes(spec, i) for i in range(1, steps + 1))
    per_step = total_bytes / steps if steps else None
    decode_s = _median(decode_times_s)
    rate = total_bytes / decode_s if steps and decode_s and decode_s > 0 else None
    gen = Generation(
        gen_tokens=spec.gen_tokens,
        decode_steps=steps,
        prefill_times_s=list(prefill_times_s),
        decode_times_s=list(decode_times_s),
        token_times_s=list(token_times_s),
        prefill_s=_median(prefill_times_s),
        decode_s=decode_s,
        decode_tokens_per_s=spec.batch * steps / decode_s if steps and decode_s and decode_s > 0 else None,
        token_p50_s=_pct(token_times_s, 50),
        token_p90_s=_pct(token_times_s, 90),
        token_p99_s=_pct(token_times_s, 99),
        kv_cache_bytes_predicted=kv_cache_bytes(spec.shape, spec.batch, spec.seq + spec.gen_tokens, kv_bytes),
        kv_cache_bytes_observed=kv_cache_bytes_observed,
        bytes_per_step=per_step,
        bytes_per_token=per_step / spec.batch if per_step is not None else None,
        achieved_bandwidth=rate,
        bandwidth_peak=bandwidth.bytes_per_s if bandwidth else None,
        bandwidth_source=bandwidth.source if bandwidth else None,
        mbu=rate / bandwidth.bytes_per_s if rate is not None and bandwidth else None,
        cache_bytes=bandwidth.cache_bytes if bandwidth else None,
        cache_source=bandwidth.cache_source if bandwidth else None,
    )
    check, note = _check_kind(spec, gen, bandwidth)
    return gen.model_copy(update={"bandwidth_check": check, "bandwidth_note": note})


def _check_kind(spec: BenchSpec, gen: Generation, bandwidth: Bandwidth | None) -> tuple[BandwidthCheck, str | None]:
    if gen.decode_steps == 0 or not gen.token_times_s:
        return "no decode", "gen_tokens 1: the prefill makes the only token, no decode step to check"
    if bandwidth is None:
        return "no ceiling", "no memory-bandwidth ceiling is known for this device"
    least = step_bytes(spec, 1)
    if least < CACHE_MARGIN * bandwidth.cache_bytes:
        return "below cache", (
            f"a decode step moves {least / 1e6:.3g} MB, less than {CACHE_MARGIN:g} x the last-level cache "
            f"({bandwidth.cache_bytes / (1 << 20):.0f} MiB, {bandwidth.cache_source}): the cache may serve it, "
            "so the bandwidth ceiling cannot rule the decode out (MBU shown for reference)"
        )
    return "checked", None


def bandwidth_verdict(spec: BenchSpec, gen: Generation, bandwidth: Bandwidth | None) -> tuple[Verdict, str | None]:
    """The decode against the bandwidth ceiling: `invalid` when its fastest step moved its bytes
    faster than the ceiling x its tolerance allows, `unverified` above the ceiling but within the
    tolerance or when there is no ceiling, else `ok` (also when the check is not made: see
    `Generation.bandwidth_check`)."""
    if gen.bandwidth_check == "no ceiling":
        return "unverified", f"generate: {gen.bandwidth_note}, so nothing rules out an impossible decode"
    if gen.bandwidth_check != "checked" or bandwidth is None:
        return "ok", None
    fastest_s = min(gen.token_times_s)
    least = step_bytes(spec, 1)
    if fastest_s <= 0:
        return "invalid", f"generate: a decode step took {fastest_s} s for {least:.3g} bytes; the timer did not wait"
    rate = least / fastest_s
    ceiling = f"{bandwidth.bytes_per_s / 1e9:.4g} GB/s ({bandwidth.source})"
    if rate > bandwidth.bytes_per_s * bandwidth.tolerance:
        times = f" x {bandwidth.tolerance:g}" if bandwidth.tolerance > 1 else ""
        return "invalid", (
            f"generate: the fastest decode step moved {least / 1e6:.4g} MB at {rate / 1e9:.4g} GB/s, above the "
            f"memory bandwidth {ceiling}{times}; the timer did not wait for the device, or the count is wrong"
        )
    if rate > bandwidth.bytes_per_s:
        return "unverified", (
            f"generate: the fastest decode step ran at {rate / 1e9:.4g} GB/s, above the uncertain memory "
            f"bandwidth {ceiling}, but within x {bandwidth.tolerance:g} of it"
        )
    return "ok", None


def _positive(name: str, xs: list[float]) -> str | None:
    if not all(math.isfinite(t) and t > 0 for t in xs):
        return f"generate: {name} holds a time that is not a positive number of seconds"
    return None


def _above_peak(what: str, flops: int, seconds: float, peak: Peak) -> tuple[Verdict, str] | None:
    """`invalid` when `flops` in `seconds` beats the ceiling x its tolerance, `unverified` within it."""
    rate = flops / seconds
    if rate <= peak.flops:
        return None
    ceiling = f"{peak.flops / 1e12:.3g} TFLOP/s ({peak.source})"
    if rate > peak.flops * peak.tolerance:
        return "invalid", (
            f"generate: {what} ran at {rate / 1e12:.3g} TFLOP/s, above the device's peak {ceiling}; "
            "the timer did not wait for the device, or the times are not what was measured"
        )
    return "unverified", f"generate: {what} ran at {rate / 1e12:.3g} TFLOP/s, above the uncertain ceiling {ceiling}"


def consistency_verdict(
    spec: BenchSpec, gen: Generation, times_s: list[float], peak: Peak | None
) -> tuple[Verdict, str | None]:
    """The raw readings of a generation against each other and the FLOP ceiling (worst verdict, reasons).

    Each timed repeat has one prefill and one decode time, and prefill + decode fits in that repeat's
    whole generation (PART_TOLERANCE, PART_SLACK_S); the last repeat has one time per decode step,
    summing to its decode time; the fastest prefill (causal FLOP count) and the fastest decode step
    (the least context) are below the peak. Times that are not positive are `invalid`."""
    found: list[tuple[Verdict, str]] = []
    steps = decode_steps(spec.gen_tokens)
    # Without decode steps (gen_tokens 1) a decode time is the empty sum: 0 s.
    decode = gen.decode_times_s if steps else [t + 1.0 if t == 0 else t for t in gen.decode_times_s]
    for name, xs in (("prefill_times_s", gen.prefill_times_s), ("decode_times_s", decode),
                     ("token_times_s", gen.token_times_s)):  # fmt: skip
        if (why := _positive(name, xs)) is not None:
            return "invalid", why
    n = len(times_s)
    if len(gen.prefill_times_s) != n or len(gen.decode_times_s) != n:
        return "invalid", (
            f"generate: {len(gen.prefill_times_s)} prefill and {len(gen.decode_times_s)} decode times for {n} "
            "timed generations (one of each per generation)"
        )
    if steps and gen.token_times_s and len(gen.token_times_s) != steps:
        found.append(("invalid", f"generate: {len(gen.token_times_s)} decode-step times for {steps} decode steps"))
    for i, (whole, pre, dec) in enumerate(zip(times_s, gen.prefill_times_s, gen.decode_times_s, strict=True)):
        if pre + dec > whole * (1 + PART_TOLERANCE) + PART_SLACK_S:
            found.append(("invalid", (
                f"generate: repeat {i + 1}'s prefill {pre:.4g} s + decode {dec:.4g} s exceed the whole generation "
                f"{whole:.4g} s they were timed inside"
            )))  # fmt: skip
            break
    if gen.token_times_s and gen.decode_times_s:
        last, total = gen.decode_times_s[-1], sum(gen.token_times_s)
        if abs(total - last) > last * PART_TOLERANCE + PART_SLACK_S:
            found.append(("invalid", (
                f"generate: the decode steps of the last generation add up to {total:.4g} s, not its decode "
                f"time {last:.4g} s"
            )))  # fmt: skip
    if peak is not None:
        checks = []
        if gen.prefill_times_s:
            flops = prefill_flops(spec.shape, spec.batch, spec.seq, causal=True)
            checks.append(_above_peak("the fastest prefill", flops, min(gen.prefill_times_s), peak))
        if gen.token_times_s:
            flops = decode_step_flops(spec.shape, spec.batch, spec.seq + 1)
            checks.append(_above_peak("the fastest decode step", flops, min(gen.token_times_s), peak))
        found += [c for c in checks if c is not None]
    if not found:
        return "ok", None
    worst = max(found, key=lambda f: RANK[f[0]])[0]
    return worst, "; ".join(why for verdict, why in found if verdict == worst)
