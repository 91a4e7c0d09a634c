"""What a train phase over several devices (DistributedDataParallel) reports beside its times.

The phase's own `times_s` are the group's steps (rank 0's clock, read after a barrier across the
ranks); `Scaling` adds the one-device baseline measured in the same job (same per-device batch,
same threads per process), the efficiency and the all-reduce's exposed share. `rederive` recomputes
every derived figure of a stored or imported record from its raw times and checks it against the
job's devices, its machine and the FLOP ceiling. This module never imports torch.
"""

from __future__ import annotations

import math
import statistics
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from farm.flops import min_phase_flops
from farm.results.machine import MachineFingerprint
from farm.results.peaks import Peak
from farm.spec import BenchSpec

ALLREDUCE_NOTE = (
    "1 - median step under DDP no_sync (no gradient all-reduce) / median synced step: the share of a "
    "step spent in gradient communication that backward did not hide"
)


class Scaling(BaseModel):
    """Scaling of one DDP train phase against one device measured in the same job."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    world_size: int = Field(gt=1)
    backend: Literal["gloo", "nccl"]
    devices: list[str]  # the torch device of each rank, rank order: cpu, cpu / cuda:0, cuda:1
    threads_per_process: int | None = None  # CPU ranks: torch threads of each process (and of the baseline)
    per_device_batch: int = Field(gt=0)
    step_s: float = Field(gt=0)  # median group step (the phase's median)
    tokens_per_s: float = Field(gt=0)  # world_size x batch x seq / step_s
    single_device_step_s: float = Field(gt=0)  # median step of the same training on one device, no DDP
    single_device_times_s: list[float] = []
    single_device_tokens_per_s: float = Field(gt=0)
    efficiency: float = Field(gt=0)  # single_device_step_s / step_s (1.0: perfect weak scaling)
    throughput_speedup: float = Field(gt=0)  # tokens_per_s / single_device_tokens_per_s = world_size x efficiency
    # The all-reduce's exposed share (ALLREDUCE_NOTE); None when it was not measured.
    allreduce_share: float | None = None
    no_sync_step_s: float | None = None
    no_sync_times_s: list[float] = []
    allreduce_note: str | None = None


# Weak scaling (the same per-device batch as the one-device baseline) cannot beat the baseline except
# by noise and cache effects (each rank's working set is the baseline's): an efficiency above this
# bound is `invalid`. 1.10 leaves room for a noisy baseline on a shared host.
EFFICIENCY_BOUND = 1.10
Verdict = Literal["ok", "unverified", "invalid"]


def _times_ok(xs: list[float]) -> bool:
    return bool(xs) and all(math.isfinite(t) and t > 0 for t in xs)


def rederive(
    spec: BenchSpec,
    times_s: list[float],
    scaling: Scaling,
    *,
    device: str,
    machine: MachineFingerprint | None,
    device_peak: Peak | None,
) -> tuple[Scaling | None, Verdict, str | None]:
    """A scaling record re-derived from its raw times, with its verdict and the reason.

    The group step is the phase's median; the one-device step the median of `single_device_times_s`;
    efficiency, speedup, tokens/s and the all-reduce share follow from them (what the file said is
    replaced). `invalid`: a world size other than the devices listed or above the GPUs the machine
    lists, a per-device batch other than the spec's, a time that is not positive, an efficiency above
    EFFICIENCY_BOUND, a one-device step faster than one device's FLOP ceiling (`device_peak`).
    `unverified`: no one-device times to re-derive from (the record is dropped, None)."""
    n = scaling.world_size
    if n != spec.world_size:
        return None, "invalid", f"train.scaling: world size {n}, the spec's is {spec.world_size}"
    if len(scaling.devices) != n:
        return None, "invalid", f"train.scaling: world size {n} with {len(scaling.devices)} devices listed"
    kind = device.split(":")[0]
    if any(d.split(":")[0] != kind for d in scaling.devices):
        return None, "invalid", f"train.scaling: devices {scaling.devices[:4]} are not all {kind} devices"
    gpus = len(machine.gpus) if machine is not None else 0
    if kind == "cuda" and gpus and n > gpus:
        return None, "invalid", f"train.scaling: world size {n} on a machine whose fingerprint lists {gpus} GPU(s)"
    if scaling.per_device_batch != spec.batch:
        return (
            None,
            "invalid",
            f"train.scaling: per-device batch {scaling.per_device_batch}, the spec's is {spec.batch}",
        )
    if not _times_ok(times_s):
        return None, "invalid", "train.scaling: the group's step times are not positive numbers of seconds"
    t1_times = scaling.single_device_times_s
    if not t1_times:
        return None, "unverified", "train.scaling: no one-device step times to re-derive the efficiency from"
    if not _times_ok(t1_times) or (scaling.no_sync_times_s and not _times_ok(scaling.no_sync_times_s)):
        return None, "invalid", "train.scaling: a one-device or no_sync step time is not a positive number"
    tn, t1 = statistics.median(times_s), statistics.median(t1_times)
    tokens = spec.batch * spec.seq
    t_ns = statistics.median(scaling.no_sync_times_s) if scaling.no_sync_times_s else None
    derived = scaling.model_copy(update={
        "step_s": tn, "tokens_per_s": n * tokens / tn, "single_device_step_s": t1,
        "single_device_tokens_per_s": tokens / t1, "efficiency": t1 / tn, "throughput_speedup": n * t1 / tn,
        "no_sync_step_s": t_ns, "allreduce_share": max(0.0, 1.0 - t_ns / tn) if t_ns else None,
    })  # fmt: skip
    if derived.efficiency > EFFICIENCY_BOUND:
        return (
            derived,
            "invalid",
            (
                f"train.scaling: efficiency {derived.efficiency:.3g} (one device {t1:.4g} s, the group {tn:.4g} s "
                f"a step) is above {EFFICIENCY_BOUND:g}: weak scaling cannot beat one device beyond noise and cache "
                "effects"
            ),
        )
    if device_peak is not None:
        rate = min_phase_flops(spec.shape, spec.batch, spec.seq, "train") / min(t1_times)
        if rate > device_peak.flops * device_peak.tolerance:
            return (
                derived,
                "invalid",
                (
                    f"train.scaling: the fastest one-device step ran at {rate / 1e12:.3g} TFLOP/s, above one device's "
                    f"peak {device_peak.flops / 1e12:.3g} TFLOP/s ({device_peak.source})"
                ),
            )
    return derived, "ok", None
