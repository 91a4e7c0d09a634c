"""How long a sweep's jobs will take, before they are queued (`farm sweep --dry-run`).

Per job (one spec on one device tag) and phase, one of:

- **measured**: the median phase time of earlier results of the same spec hash on the same device
  tag (the median over those results of each one's median repeat), times the phase's runs
  (warm-ups + repeats);
- **lower bound**: the phase's FLOPs (`farm.flops.phase_flops`, one repeat) times its runs, over
  the device's ceiling, i.e. the time at 100 % MFU. The ceiling of a `cpu` tag is this machine's
  CPU (`farm.engine.hardware.cpu_peak`: the controller's, which may not be the worker's); of
  `cuda:<model>` the published table (`farm.results.peaks.GPU_PEAKS_TFLOPS`); of plain `cuda` (or
  a model not in the table) the fastest GPU in the table, so the bound holds on any of them.
  `init` does no counted arithmetic: 0 s unless measured.

A job is measured only when every phase is; its `seconds` then estimate the time, otherwise they
bound it from below. `repeats: auto` counts `AUTO_MIN_REPEATS` (it never stops earlier). Set-up
(process start, model construction, compile) is not counted: real jobs take longer. Never imports
torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from farm.engine.hardware import cpu_peak
from farm.flops import phase_flops
from farm.results.peaks import GPU_PEAKS_TFLOPS, Peak, gpu_peak
from farm.results.result import MEASURED_STATUSES
from farm.results.store import ResultStore
from farm.spec import AUTO_MIN_REPEATS, BenchSpec, parse_device_tag

HISTORY_LIMIT = 50  # the newest results of a spec hash on a device that a measured median uses
LONG_S = 3600.0  # a dry run warns above this total


@dataclass(frozen=True)
class JobEstimate:
    """The time one job (a spec on one device tag) takes: measured, or a lower bound."""

    device: str
    seconds: float | None  # None: no ceiling and no history for some phase
    measured: bool  # every phase from stored results (else `seconds` is a lower bound)
    ceiling: str | None  # the Peak.source the lower bound used
    history: int = 0  # stored results the measured phases came from


@dataclass
class PointEstimate:
    """A sweep point's jobs, one per device tag."""

    jobs: list[JobEstimate] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        times = [j.seconds for j in self.jobs]
        return None if any(t is None for t in times) else sum(t for t in times if t is not None)

    @property
    def measured(self) -> bool:
        return bool(self.jobs) and all(j.measured for j in self.jobs)


def runs_of(spec: BenchSpec) -> int:
    """Timed and warm-up runs of each phase: warm-ups + repeats (`auto`: its minimum)."""
    repeats = AUTO_MIN_REPEATS if spec.repeats == "auto" else int(spec.repeats)
    return spec.warmup + repeats


def device_ceiling(spec: BenchSpec, tag: str) -> Peak | None:
    """The peak FLOP/s a lower bound divides by (module docstring); None for a device without one."""
    kind, narrow = parse_device_tag(tag)
    if kind == "cpu":
        threads = spec.threads or psutil.cpu_count(logical=False) or 1
        peak = cpu_peak(spec.dtype, spec.matmul_precision, threads)
        return None if peak is None else peak.model_copy(update={"source": f"this machine's CPU, {peak.source}"})
    if kind != "cuda":
        return None
    if narrow and narrow != "*":
        table = gpu_peak(narrow, spec.dtype, spec.matmul_precision)
        if table is not None:
            return table
    peaks = [p for name in GPU_PEAKS_TFLOPS if (p := gpu_peak(name, spec.dtype, spec.matmul_precision))]
    fastest = max(peaks, key=lambda p: p.flops)
    return fastest.model_copy(update={"source": f"the fastest GPU in the table ({fastest.source})"})


def measured_medians(store: ResultStore, spec: BenchSpec, tag: str) -> tuple[dict[str, float], int]:
    """Per phase, the median over stored measured results (spec hash and device tag) of their
    median repeat; and how many results there were."""
    ids = store.query_ids(spec_hashes=[spec.spec_hash()], devices=[tag], limit=HISTORY_LIMIT)
    results = [r for r in store.get_results(ids) if r.status in MEASURED_STATUSES]
    by_phase: dict[str, list[float]] = {}
    for r in results:
        for name, ph in r.phases.items():
            if ph.stats is not None and ph.status in MEASURED_STATUSES:
                by_phase.setdefault(name, []).append(ph.stats.median_s)
    return {name: statistics.median(v) for name, v in by_phase.items()}, len(results)


def estimate_job(spec: BenchSpec, tag: str, store: ResultStore | None = None) -> JobEstimate:
    """One job's time (module docstring); `store` None: lower bounds only."""
    medians, n = measured_medians(store, spec, tag) if store is not None else ({}, 0)
    ceiling = None if all(p in medians for p in spec.phases) else device_ceiling(spec, tag)
    runs = runs_of(spec)
    total = 0.0
    for phase in spec.phases:
        if phase in medians:
            total += runs * medians[phase]
        elif ceiling is None:
            return JobEstimate(tag, None, False, None, n)
        else:
            total += runs * phase_flops(spec, phase) / ceiling.flops
    if ceiling is None:  # every phase measured
        return JobEstimate(tag, total, True, None, n)
    return JobEstimate(tag, total, False, ceiling.source, n if medians else 0)


def estimate_points(specs: Sequence[BenchSpec], store: ResultStore | None = None) -> list[PointEstimate]:
    """Per spec (a sweep point, wildcards resolved), one estimate per device tag."""
    return [PointEstimate([estimate_job(s, tag, store) for tag in s.devices]) for s in specs]


def fmt_duration(seconds: float) -> str:
    """A duration people read: 850 ms, 42 s, 12.5 min, 3.2 h, 2.1 days."""
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
