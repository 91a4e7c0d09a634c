"""Telemetry of one phase: clocks, power, temperature, utilisation, throttling and energy.

Made by `farm.engine.telemetry` (NVML sampled during a GPU phase; cpufreq and RAPL read before and
after a CPU phase) and stored on `PhaseResult.telemetry`. What could not be read is None, with a
note saying why: no number here is estimated where the device did not report it.

`throttle_text`, `telemetry_facts` and `explain_text` read a telemetry dict from a stored result without trusting it
(the report's read path does not validate): they never raise, and show only known reason names and
finite numbers. This module never imports torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# NVML's clock event ("throttle") reasons that slow a busy GPU, by bit, with the name shown.
# Left out on purpose: GPU idle (0x1), applications clocks setting (0x2), sync boost (0x10) and
# display clock setting (0x100): they are settings or idleness, not the device slowing a phase down.
THROTTLE_REASONS: dict[int, str] = {
    0x4: "power cap",
    0x8: "hardware slowdown",
    0x20: "thermal (software)",
    0x40: "thermal (hardware)",
    0x80: "power brake (hardware)",
}
REASON_NAMES = frozenset(THROTTLE_REASONS.values())
MAX_NOTES = 16


class Range(BaseModel):
    """Minimum, median and maximum of one quantity over a phase's readings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min: float
    median: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min <= self.median <= self.max:
            raise ValueError("min <= median <= max does not hold")
        return self

    @classmethod
    def of(cls, values: Sequence[float]) -> Range | None:
        """The range of finite readings; None when there are none."""
        vals = [float(v) for v in values if math.isfinite(v)]
        if not vals:
            return None
        return cls(min=min(vals), median=statistics.median(vals), max=max(vals))


class PhaseTelemetry(BaseModel):
    """What the device reported around (CPU) or during (NVML) one phase."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    source: Literal["nvml", "cpu", "none"]  # "none": a device with no telemetry (the notes say why)
    device: str | None = None  # "GPU 0 (NVIDIA H100 80GB HBM3)", "cpu"
    window_s: float | None = Field(default=None, ge=0)  # between the before and after readings
    # NVML, sampled by a thread during the phase (warm-up included).
    samples: int = Field(default=0, ge=0)
    sample_hz: float | None = Field(default=None, gt=0)
    sampler_cpu_s: float | None = Field(default=None, ge=0)  # the sampler thread's own CPU time
    sm_clock_mhz: Range | None = None
    mem_clock_mhz: Range | None = None
    power_w: Range | None = None
    temperature_c: Range | None = None
    utilization_pct: Range | None = None
    max_sm_clock_mhz: float | None = Field(default=None, gt=0)  # nvmlDeviceGetMaxClockInfo
    base_sm_clock_mhz: float | None = Field(default=None, gt=0)  # the default applications clock
    power_limit_w: float | None = Field(default=None, gt=0)  # the enforced power limit
    throttled: bool = False
    throttle_reasons: dict[str, float] = {}  # reason -> share of the samples that showed it
    # CPU, read before and after the phase only (no thread inside a CPU-timed region).
    cpu_freq_mhz: Range | None = None  # over every CPU's reading, before and after
    cpu_freq_source: str | None = None
    cpu_max_freq_mhz: float | None = Field(default=None, gt=0)  # cpufreq cpuinfo_max_freq
    cpu_base_freq_mhz: float | None = Field(default=None, gt=0)  # cpufreq base_frequency (intel_pstate)
    # Energy from a counter read before and after the phase (NVML total energy, RAPL package).
    energy_j: float | None = Field(default=None, ge=0)
    energy_source: str | None = None
    mean_power_w: float | None = Field(default=None, ge=0)  # energy_j / window_s
    energy_j_per_repeat: float | None = Field(default=None, ge=0)  # mean power x median repeat
    energy_j_per_token: float | None = Field(default=None, ge=0)
    errors: int = Field(default=0, ge=0)  # failed readings (the phase went on)
    notes: list[str] = []

    @model_validator(mode="after")
    def _shares(self) -> PhaseTelemetry:
        for reason, share in self.throttle_reasons.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"throttle_reasons[{reason!r}]: a share is within [0, 1]")
        return self


def _num(v: Any) -> float | None:
    """A finite number from untrusted data, else None."""
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _median(t: dict[str, Any], key: str) -> float | None:
    r = t.get(key)
    return _num(r.get("median")) if isinstance(r, dict) else None


def _reasons_text(t: Any) -> str | None:
    """ "power cap 40%, thermal (hardware) 5% of 120 samples" for a throttled telemetry dict, else None."""
    if not isinstance(t, dict) or t.get("throttled") is not True:
        return None
    reasons = t.get("throttle_reasons")
    parts: list[str] = []
    other = False
    if isinstance(reasons, dict):
        for name, share in list(reasons.items())[:32]:
            if name in REASON_NAMES:
                s = _num(share)
                parts.append(f"{name} {s:.0%}" if s is not None and 0 <= s <= 1 else str(name))
            else:
                other = True
    if other:
        parts.append("other reason")
    samples = t.get("samples")
    n = f" of {samples} samples" if isinstance(samples, int) and not isinstance(samples, bool) and samples > 0 else ""
    return (", ".join(parts) or "reason not named") + n


def throttle_text(t: Any) -> str | None:
    """The `throttled` flag's text for a (possibly untrusted) telemetry dict; None when not throttled.

    Only known reason names are named (others count as "other reason"); shares are shown when they
    are numbers in [0, 1]. Never raises.
    """
    reasons = _reasons_text(t)
    if reasons is None:
        return None
    text = f"clocks held down: {reasons}"
    clock, top = _median(t, "sm_clock_mhz"), _num(t.get("max_sm_clock_mhz"))
    if clock is not None:
        text += f"; SM clock median {clock:.0f} MHz" + (f" (max {top:.0f})" if top else "")
    return text


def telemetry_facts(t: Any) -> dict[str, str]:
    """What explains a phase's speed, from a (possibly untrusted) telemetry dict, as short texts by
    key: `clock` (SM or CPU clock against its max and base), `throttled`, `power` (against its
    limit), `energy` (per phase and per token). Keys without data are left out. Never raises."""
    if not isinstance(t, dict):
        return {}
    facts: dict[str, str] = {}
    for key, label, top_key, base_key in (
        ("sm_clock_mhz", "SM", "max_sm_clock_mhz", "base_sm_clock_mhz"),
        ("cpu_freq_mhz", "CPU", "cpu_max_freq_mhz", "cpu_base_freq_mhz"),
    ):
        clock = _median(t, key)
        if clock is None:
            continue
        top, base = _num(t.get(top_key)), _num(t.get(base_key))
        rel = f", {clock / top:.0%} of max {top:.0f}" if top else ""
        below = f", below base {base:.0f}" if base and clock < base else ""
        facts["clock"] = f"{label} median {clock:.0f} MHz{rel}{below}"
        break
    reasons = _reasons_text(t)
    if reasons:
        facts["throttled"] = reasons
    elif t.get("source") == "nvml" and isinstance(t.get("samples"), int) and t["samples"]:
        facts["throttled"] = "no"
    power, limit = _median(t, "power_w"), _num(t.get("power_limit_w"))
    if power is not None:
        facts["power"] = f"median {power:.0f} W" + (f" of {limit:.0f} W limit" if limit else "")
    e, per_tok = _num(t.get("energy_j")), _num(t.get("energy_j_per_token"))
    if e is not None:
        facts["energy"] = f"{e:.3g} J" + (f", {per_tok * 1e3:.3g} mJ/token" if per_tok is not None else "")
    return facts


def explain_text(t: Any) -> str:
    """`telemetry_facts` as one line ("-" when there are none). Never raises."""
    facts = telemetry_facts(t)
    return "; ".join(f"{k} {v}" for k, v in facts.items()) or "-"
