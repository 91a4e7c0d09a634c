"""Synthetic `JobResult`s built from chosen times (tests, benchmarks/report_10k.py, docs).

Built with `measured_phase`, exactly as a worker builds them, so statistics, FLOP/s, MFU and the
plausibility verdict are derived the same way. Nothing here is a measurement. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from farm.flops import min_phase_flops, phase_flops
from farm.results.host import HostLoad
from farm.results.machine import CpuId, GpuInfo, MachineFingerprint, gpu_tag
from farm.results.peaks import Peak, gpu_peak
from farm.results.result import JobResult, PhaseResult, Status, measured_phase
from farm.spec import BenchSpec

CPU_PEAK = Peak(flops=2.26e11, source="theoretical: 2 cores x 32 FLOP/cycle (AVX2+FMA) x 3530 MHz (max clock)")


def machine(
    tag: str = "box1", gpu: str | None = None, torch_version: str = "2.5.1", farm_version: str = "0.1.0"
) -> MachineFingerprint:
    """A fingerprint for a made-up machine (`gpu`: e.g. "NVIDIA H100 80GB HBM3")."""
    gpus = []
    if gpu:
        gpus = [GpuInfo(index=0, name=gpu, tag=gpu_tag(gpu), memory_bytes=80 << 30, driver="550.54")]
    return MachineFingerprint(
        hostname=f"{tag}.lab",
        machine_tag=tag,
        os="Linux 6.1",
        python="3.11.7",
        cpu_model="Intel(R) Xeon(R) Platinum 8480+",
        cpu_arch="x86_64",
        cpu_flags=["amx_bf16", "avx512f"],
        cpu_id=CpuId(vendor="GenuineIntel", family=6, model=0x8F, stepping=8),  # Sapphire Rapids
        cpu_core="intel-sapphire-rapids",
        physical_cores=2,
        logical_cores=4,
        memory_bytes=16 << 30,
        torch_version=torch_version,
        cuda_version="12.4" if gpu else None,
        gpus=gpus,
        farm_version=farm_version,
        git_commit="0123456789ab",
    )


def phase(spec: BenchSpec, name: str, times: Sequence[float], peak: Peak | None) -> PhaseResult:
    """A measured phase of `spec` from raw times (checked against `peak`)."""
    work = name in ("forward", "train")
    return measured_phase(
        name,
        list(times),
        [times[0] * 1.2] if work else [],
        flops=phase_flops(spec, name),
        min_flops=min_phase_flops(spec.shape, spec.batch, spec.seq, name),
        tokens=spec.batch * spec.seq if work else 0,
        peak=peak if work else None,
        peak_memory_bytes=(1 << 30) if work else (500 << 20),
        memory_kind="process RSS peak",
    )


def result(
    run_id: str,
    index: int,
    device: str,
    times: dict[str, Sequence[float]],
    *,
    spec: BenchSpec | None = None,
    fingerprint: MachineFingerprint | None = None,
    peak: Peak | None = None,
    status: Status = "ok",
    error: str | None = None,
    finished_at: datetime | None = None,
) -> JobResult:
    """A job result of `spec` on `device` with the given raw times per phase.

    On a `cuda` device the peak defaults to the table peak of the fingerprint's GPU, on `cpu` to
    `CPU_PEAK`; a result faster than its peak comes back `invalid`, as from a worker.
    """
    spec = spec or BenchSpec(model="gpt2", batch=1, seq=128, repeats=5)
    spec = spec.model_copy(update={"devices": (device,)})
    fp = fingerprint or machine(gpu="NVIDIA H100 80GB HBM3" if device.startswith("cuda") else None)
    if peak is None:
        peak = gpu_peak(fp.gpus[0].name, spec.dtype, spec.matmul_precision) if fp.gpus else CPU_PEAK
    done = finished_at or datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=index)
    res = JobResult(
        job_id=f"{run_id}-{index:03d}",
        run_id=run_id,
        device=device,
        torch_device="cuda:0" if device.startswith("cuda") else "cpu",
        status=status,
        error=error,
        spec=spec,
        spec_hash=spec.spec_hash(),
        model_name=spec.model_name,
        machine=fp,
        phases={name: phase(spec, name, ts, peak) for name, ts in times.items()},
        precision={"dtype": spec.dtype, "matmul_precision": spec.matmul_precision, "threads": 2},
        threads=2,
        farm_version=fp.farm_version,
        started_at=done - timedelta(seconds=1),
        finished_at=done,
    )
    return res.settle_status()


def flagged(
    res: JobResult,
    phase: str,
    *,
    unverified: str | None = None,
    outlier: bool | None = None,
    drift: bool | None = None,
    host: HostLoad | None = None,
    roofline: Peak | None = None,
    repeats_stop: str | None = None,
) -> JobResult:
    """A copy of `res` with one phase's verdict and flags set directly (tests of their display).

    `unverified`: the phase (and so the job) is `unverified` with this reason, as stored for a device
    with no ceiling (without its peak and MFU). The rules that set these from a measurement live in
    `measured_phase`, `farm.results.stats` and the runner; here they are chosen, not derived.
    """
    ph = res.phases[phase]
    update: dict[str, Any] = {}
    if unverified is not None:
        update.update(status="unverified", invalid_reason=unverified, peak_flops=None, peak_source=None, mfu=None)
    if ph.stats is not None and (outlier is not None or drift is not None):
        marks = {k: v for k, v in (("outlier", outlier), ("drift", drift)) if v is not None}
        update["stats"] = ph.stats.model_copy(update=marks)
    if host is not None:
        update["host"] = host
    if roofline is not None:
        update.update(roofline_flops=roofline.flops, roofline_source=roofline.source)
    if repeats_stop is not None:
        update["repeats_stop"] = repeats_stop
    phases = {**res.phases, phase: ph.model_copy(update=update)}
    out = res.model_copy(update={"phases": phases, "status": "ok" if res.status == "unverified" else res.status})
    return out.settle_status()
