"""Results: raw times plus what is derived from them, per phase, for one job.

A `JobResult` carries the job's spec, the machine's fingerprint, and per phase the raw times,
their statistics, the FLOPs of one repeat, the achieved FLOP/s, the MFU and which peak it used,
peak memory and the prediction. A phase faster than its device's peak allows is `invalid`, with
the reason, and so is the job: an impossible number is never reported as a speedup. A counted
phase with no ceiling to check it against (or above an uncertain one) is `unverified`: measured,
but not checked.
Every number is finite (`allow_inf_nan=False`): NaN or Infinity anywhere is refused where the
result is made or imported, so it can never be stored (JSON would write it as `null`, which no
longer reads back). This module never imports torch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from farm import __version__
from farm.flops import min_phase_flops, phase_flops, predict_memory
from farm.results.decode import RANK, Generation, bandwidth_verdict, consistency_verdict, derive_generation
from farm.results.host import HostLoad
from farm.results.machine import MachineFingerprint, gpu_ran_on
from farm.results.peaks import Bandwidth, Peak
from farm.results.scaling import Scaling
from farm.results.stats import Stats, summarize
from farm.results.telemetry import PhaseTelemetry
from farm.spec import BenchSpec, Job, series_device

# `unverified`: measured, but no ceiling could be had for the device, so nothing rules the number out.
Status = Literal["ok", "unverified", "failed", "oom", "timeout", "invalid", "cancelled"]
# The statuses whose numbers stand: `ok` (checked against a ceiling) and `unverified` (measured, but
# no ceiling could check it). Regressions, `farm check` and compare baselines take both.
MEASURED_STATUSES: tuple[Status, ...] = ("ok", "unverified")
SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class PhaseResult(BaseModel):
    """One phase of one job: raw times and everything derived from them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    status: Status = "ok"
    error: str | None = None
    times_s: list[float] = []
    warmup_times_s: list[float] = []
    stats: Stats | None = None  # derived from times_s; the median lives here and only here
    flops: int = 0  # FLOPs of one repeat (PaLM convention, see farm.flops)
    achieved_flops: float | None = None  # flops / median time
    peak_flops: float | None = None
    peak_source: str | None = None
    mfu: float | None = None  # achieved_flops / peak_flops
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None  # "cuda max allocated" or "process RSS peak"
    predicted_memory_bytes: int | None = None
    # Parts reported apart from the phase time: device_setup_s, construct_s, to_device_s,
    # transfer_s, compile_s, load_s; and values such as loss_first / loss_last.
    breakdown: dict[str, float] = {}
    invalid_reason: str | None = None
    # The measured roofline beside the theoretical peak (e.g. best GEMM of the model's shapes).
    roofline_flops: float | None = None
    roofline_source: str | None = None
    host: HostLoad | None = None  # the host lock's wait and others' load during the phase
    repeats_stop: str | None = None  # `repeats: auto`: "target", "budget" or "max" (what stopped it)
    telemetry: PhaseTelemetry | None = None  # clocks, power, throttling, energy (farm.results.telemetry)
    generate: Generation | None = None  # the generate phase: prefill, decode, KV cache, bandwidth (results.decode)
    scaling: Scaling | None = None  # train over world_size > 1 devices: DDP against one device (results.scaling)

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        """`median_s` is derived (from `stats`): written out for readers, never read back in."""
        if isinstance(data, dict) and "median_s" in data:
            data = {k: v for k, v in data.items() if k != "median_s"}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def median_s(self) -> float | None:
        """The median of the timed repeats (`stats.median_s`), None for a phase that measured nothing."""
        return self.stats.median_s if self.stats else None


def measured_phase(
    name: str,
    times_s: list[float],
    warmup_times_s: list[float],
    *,
    flops: int,
    min_flops: int,
    tokens: int,
    peak: Peak | None,
    peak_memory_bytes: int | None = None,
    memory_kind: str | None = None,
    predicted_memory_bytes: int | None = None,
    breakdown: dict[str, float] | None = None,
) -> PhaseResult:
    """Derive statistics, FLOP/s, MFU and the plausibility verdict from raw times.

    A counted phase (`min_flops` > 0) is `ok` only below its ceiling: at its fastest repeat (causal
    count) under `peak.flops` and at its median (full count) at most 100% MFU. Above the ceiling it
    is `invalid`, unless the ceiling is uncertain (`peak.tolerance` > 1: a CPU whose max clock is not
    known) and the excess within the tolerance: then `unverified`, like a phase with no ceiling at
    all. The reason is stored in `invalid_reason` either way.
    """
    stats = summarize(times_s)
    med = stats.median_s
    achieved = flops / med if flops and med > 0 else None
    status: Status = "ok"
    reason = None
    if min_flops and stats.min_s <= 0:
        # No clock moves while FLOPs are done: the reading was taken before the device finished.
        status = "invalid"
        reason = (
            f"{name}: a repeat took {stats.min_s} s for {min_flops:.3g} FLOPs; the timer did not wait for the device"
        )
    elif min_flops and peak is None:
        status = "unverified"
        reason = f"{name}: no ceiling is known for this device, so nothing rules out an impossible figure"
    elif peak is not None and min_flops:
        fastest = min_flops / stats.min_s
        ceiling = f"{peak.flops / 1e12:.3g} TFLOP/s ({peak.source})"
        if fastest > peak.flops * peak.tolerance:
            status = "invalid"
            times = f" x {peak.tolerance:g}" if peak.uncertain else ""
            reason = (
                f"{name}: {fastest / 1e12:.3g} TFLOP/s at the fastest repeat (causal FLOP count) is "
                f"above the device's peak {ceiling}{times}; the timer did not wait for the device, "
                "or the count is wrong"
            )
        elif fastest > peak.flops:
            status = "unverified"
            reason = (
                f"{name}: {fastest / 1e12:.3g} TFLOP/s at the fastest repeat is above the uncertain ceiling "
                f"{ceiling}, but within x {peak.tolerance:g} of it"
            )
        elif achieved is not None and achieved > peak.flops:
            status = "unverified"
            reason = (
                f"{name}: MFU {achieved / peak.flops:.0%} of {ceiling} by the full FLOP count; only the causal "
                f"count is below the ceiling"
            )
    return PhaseResult(
        name=name,
        status=status,
        times_s=list(times_s),
        warmup_times_s=list(warmup_times_s),
        stats=stats,
        flops=flops,
        achieved_flops=achieved,
        peak_flops=peak.flops if peak else None,
        peak_source=peak.source if peak else None,
        mfu=achieved / peak.flops if (achieved and peak) else None,
        tokens_per_s=tokens / med if tokens and med > 0 else None,
        peak_memory_bytes=peak_memory_bytes,
        memory_kind=memory_kind,
        predicted_memory_bytes=predicted_memory_bytes,
        breakdown=breakdown or {},
        invalid_reason=reason,
        roofline_flops=peak.roofline_flops if peak else None,
        roofline_source=peak.roofline_source if peak else None,
    )


def judge(
    spec: BenchSpec,
    name: str,
    times_s: list[float],
    warmup_times_s: list[float],
    *,
    peak: Peak | None,
    peak_memory_bytes: int | None,
    memory_kind: str | None,
    breakdown: dict[str, float],
    generation: Generation | None = None,
    bandwidth: Bandwidth | None = None,
    world_size: int = 1,
) -> PhaseResult:
    """A phase's result from its raw times: FLOPs, the plausibility check and memory, derived from the spec.

    generate: `times_s` holds whole generations (prefill + decode), `tokens_per_s` counts the new
    tokens (batch x gen_tokens); its figures are re-derived from `generation`'s raw times, and the
    decode is checked against `bandwidth` too (`farm.results.decode.bandwidth_verdict`) and its raw
    readings against each other and `peak` (`consistency_verdict`): the worst verdict stands, with
    its reasons. train over `world_size` > 1 devices (DDP) counts every rank's work (`peak` is then
    the group's).
    """
    counted = name != "init"  # building the model does no counted arithmetic
    group = world_size if name == "train" else 1  # DDP: every rank trains the spec's batch
    tokens = group * spec.batch * (spec.gen_tokens if name == "generate" else spec.seq)
    result = measured_phase(
        name,
        times_s,
        warmup_times_s,
        flops=group * phase_flops(spec, name),
        min_flops=group * min_phase_flops(spec.shape, spec.batch, spec.seq, name, gen_tokens=spec.gen_tokens),
        tokens=tokens if counted else 0,
        peak=peak if counted else None,
        peak_memory_bytes=peak_memory_bytes,
        memory_kind=memory_kind,
        predicted_memory_bytes=predict_memory(spec, name).total,
        breakdown=breakdown,
    )
    if name != "generate" or generation is None:
        return result
    gen = derive_generation(
        spec,
        generation.prefill_times_s,
        generation.decode_times_s,
        generation.token_times_s,
        kv_cache_bytes_observed=generation.kv_cache_bytes_observed,
        bandwidth=bandwidth,
    )
    result.generate = gen
    for verdict, why in (bandwidth_verdict(spec, gen, bandwidth), consistency_verdict(spec, gen, times_s, peak)):
        if result.status in RANK and why is not None:
            if RANK[verdict] > RANK[result.status]:
                result.status, result.invalid_reason = verdict, why
            elif RANK[verdict] == RANK[result.status]:
                result.invalid_reason = f"{result.invalid_reason}; {why}" if result.invalid_reason else why
    return result


# `JobResult.cpu_gemm`: what a CPU job's linears ran on (set by farm.engine.linear, shown by the CLI);
# float32 attention follows them (farm.engine.attention: blocked on oneDNN exactly where they are)
CPU_GEMM_ONEDNN = "oneDNN for float32 and bfloat16 linears (MKL runs its AVX-512 kernels on Intel CPUs only)"
CPU_GEMM_DEFAULT = "PyTorch's default (float32: MKL; bfloat16: oneDNN)"


class JobResult(BaseModel):
    """Everything the farm knows about one job on one device."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    schema_version: int = SCHEMA_VERSION
    job_id: str
    run_id: str
    device: str  # the device tag the job asked for: cpu, cuda, cuda:h100
    torch_device: str | None = None  # what it ran on: cpu, cuda:0
    status: Status = "ok"
    error: str | None = None
    warnings: list[str] = []
    spec: BenchSpec
    spec_hash: str
    model_name: str
    machine: MachineFingerprint | None = None
    worker: str | None = None
    phases: dict[str, PhaseResult] = {}
    precision: dict[str, str | int | float | bool | None] = {}  # dtype, mode, matmul precision, TF32 flags set
    threads: int | None = None
    attempt: int = 1
    fresh_process: bool | None = None  # the job ran in a process that had not touched the device before
    # How a CPU job's process allocated memory (farm.engine.allocator): large blocks kept, or the default
    cpu_allocator: str | None = Field(default=None, max_length=200)
    # Which library a CPU job's linears ran on (farm.engine.linear): CPU_GEMM_ONEDNN or CPU_GEMM_DEFAULT
    cpu_gemm: str | None = Field(default=None, max_length=200)
    farm_version: str = __version__
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None

    @model_validator(mode="after")
    def _spec_hash_from_spec(self) -> JobResult:
        """`spec_hash` is derived from `spec` by today's `BenchSpec.spec_hash`: a result stored or
        imported under an older hash reads back under the current one (see `ResultStore.migrate_spec_hashes`)."""
        self.spec_hash = self.spec.spec_hash()
        return self

    @classmethod
    def for_job(cls, job: Job, **kw: Any) -> JobResult:
        return cls(
            job_id=job.job_id,
            run_id=job.run_id,
            device=job.device,
            spec=job.spec,
            spec_hash=job.spec.spec_hash(),
            model_name=job.spec.model_name,
            **kw,
        )

    @classmethod
    def failure(cls, job: Job, status: Status, error: str, **kw: Any) -> JobResult:
        """A job that did not produce a measurement: stored with its error, never dropped."""
        return cls.for_job(job, status=status, error=error, finished_at=utcnow(), **kw)

    def gpu_tag(self) -> str | None:
        """The model tag of the GPU a CUDA result ran on, from its fingerprint (`gpu_ran_on`)."""
        if self.machine is None or not self.device.startswith("cuda"):
            return None
        return gpu_ran_on(self.device, self.torch_device, [g.model_dump() for g in self.machine.gpus])

    def series_device(self) -> str:
        """The device its history is filed under (`farm.spec.series_device`): `cpu` for any CPU
        tag, `cuda:<gpu>` for the GPU it ran on however the job spelled `cuda`."""
        return series_device(self.device, self.gpu_tag())

    def settle_status(self) -> JobResult:
        """The job's status from its phases: the first phase that is neither ok nor unverified wins
        (invalid, failed, ...); else the job is `unverified` when a phase is (or it already was)."""
        if self.status not in MEASURED_STATUSES:
            return self
        bad = next((p for p in self.phases.values() if p.status not in MEASURED_STATUSES), None)
        if bad is not None:
            # An invalid phase says why in `invalid_reason`; a failed one (a diverged loss) in `error`.
            reason = (bad.invalid_reason or bad.error) if bad.status == "invalid" else (bad.error or bad.invalid_reason)
            self.error = (self.error or reason) if self.status == "ok" else (reason or self.error)
            self.status = bad.status
            return self
        if self.status == "ok":
            unchecked = next((p for p in self.phases.values() if p.status == "unverified"), None)
            if unchecked is not None:
                self.status = "unverified"
                self.error = self.error or unchecked.invalid_reason
        return self
