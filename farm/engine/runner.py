"""Run one job (or a spec, locally) with the core engine and return `JobResult`s.

`run_job` never raises for a job that went wrong: out of memory, a time limit, a missing device
or a crash all come back as a result with their status and error, so nothing is ever dropped.
`run_spec` (used by `farm run`) checks every job first and raises typed errors on bad input.
"""

from __future__ import annotations

import gc
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from farm.engine.hardware import cpu_peak, fingerprint
from farm.engine.model import read_hf_config
from farm.engine.phases import PHASE_RUNNERS, JobContext, ProgressFn, precision_settings
from farm.engine.timing import Timer, synchronizer
from farm.errors import CheckpointError, DeviceUnavailableError, JobTimeout, MemoryPredictionError, SpecError
from farm.flops import predict_peak
from farm.results.machine import gpu_tag
from farm.results.peaks import MEASURED_TOLERANCE, Peak, gpu_peak
from farm.results.result import JobResult, judge, utcnow
from farm.spec import PRESETS, BenchSpec, Job, parse_device_tag, parse_spec

MEMORY_HEADROOM = 0.95  # refuse a job predicted to use more than this share of free memory


def resolve_device(tag: str, gpu_index: int | None = None) -> torch.device:
    """The torch device for a device tag on this machine, or DeviceUnavailableError.

    `cpu` and `cpu:<machine>` run on the CPU. `cuda` runs on `gpu_index` (default 0);
    `cuda:<n>` on GPU n; `cuda:<model>` on the first local GPU whose tag is <model>.
    """
    kind, narrow = parse_device_tag(tag)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceUnavailableError("devices", f"{tag!r}: this machine has no MPS device")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "devices",
            f"{tag!r}: this machine has no CUDA device (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'no'})",
        )
    count = torch.cuda.device_count()
    if narrow is None:
        index = gpu_index or 0
    elif narrow.isdigit():
        index = int(narrow)
    else:
        candidates = [i for i in range(count) if gpu_tag(torch.cuda.get_device_name(i)) == narrow]
        if gpu_index is not None and gpu_index in candidates:
            candidates = [gpu_index]
        if not candidates:
            names = ", ".join(gpu_tag(torch.cuda.get_device_name(i)) for i in range(count))
            raise DeviceUnavailableError("devices", f"{tag!r}: no local GPU has that tag (local: {names})")
        index = candidates[0]
    if index >= count:
        raise DeviceUnavailableError("devices", f"{tag!r}: GPU {index} does not exist ({count} present)")
    return torch.device("cuda", index)


def checkpoint_spec(spec: BenchSpec) -> BenchSpec:
    """A spec whose model is its checkpoint's own shape (from config.json), so that FLOPs, MFU, the
    memory prediction and the context check count the weights that will run, not the preset named
    beside them (by default gpt2). A shape equal to a preset keeps the preset's name.

    Raises CheckpointError for an unreadable directory and SpecError when seq exceeds its context.
    """
    if not spec.checkpoint:
        return spec
    shape = read_hf_config(Path(spec.checkpoint))
    dims = shape.model_dump(exclude={"name"})
    if dims == spec.shape.model_dump(exclude={"name"}):
        return spec
    preset = next((n for n, p in PRESETS.items() if p.model_dump(exclude={"name"}) == dims), None)
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(spec.checkpoint).name)[:64].strip("-.") or "checkpoint"
    model: str | dict = preset or {**dims, "name": name}
    return parse_spec({**spec.model_dump(mode="json"), "model": model})


def available_memory(device: torch.device) -> int:
    """Free bytes on the device now (CUDA: free device memory; CPU: available RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def check_fits(spec: BenchSpec, device: torch.device) -> None:
    """Refuse a job predicted not to fit, before it runs, with the numbers."""
    if device.type == "mps":
        return
    pred = predict_peak(spec)
    avail = available_memory(device)
    if pred.total > avail * MEMORY_HEADROOM:
        raise MemoryPredictionError(
            "batch",
            f"{spec.model_name} {pred.phase} at batch {spec.batch} x seq {spec.seq} "
            f"({spec.dtype}) is predicted to need {pred.describe()}, but {device} has "
            f"{avail / (1 << 30):.2f} GiB free; use a smaller batch, seq or model",
            predicted_bytes=pred.total,
            available_bytes=avail,
        )


def peak_for(spec: BenchSpec, device: torch.device, threads: int) -> Peak | None:
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device), spec.dtype, spec.matmul_precision)
    if device.type == "cpu":
        return cpu_peak(spec.dtype, spec.matmul_precision, threads)
    return None


def _device_setup(device: torch.device, timer: Timer) -> float | None:
    """Time the one-off device set-up (CUDA context creation on first touch)."""
    if device.type == "cpu":
        return None
    dt, _ = timer.time(lambda: torch.empty(1, device=device))
    return dt


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _observed_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / (1 << 30):.2f} GiB max allocated"
    return f"{psutil.Process().memory_info().rss / (1 << 30):.2f} GiB RSS"


def run_job(
    job: Job,
    *,
    gpu_index: int | None = None,
    on_progress: ProgressFn | None = None,
    worker: str | None = None,
    attempt: int = 1,
    check_memory: bool = True,
) -> JobResult:
    """Run every phase of a job on this machine. Always returns a result; never raises for the job."""
    try:
        job = job.model_copy(update={"spec": checkpoint_spec(job.spec)})
    except (CheckpointError, SpecError) as e:
        return JobResult.failure(job, "failed", str(e), worker=worker, attempt=attempt)
    spec = job.spec
    result = JobResult.for_job(job, worker=worker, attempt=attempt)
    try:
        result.machine = fingerprint()
        device = resolve_device(job.device, gpu_index)
        if check_memory:
            check_fits(spec, device)
    except MemoryPredictionError as e:
        return JobResult.failure(
            job, "oom", f"refused before running: {e.message}", worker=worker, attempt=attempt, machine=result.machine
        )
    except DeviceUnavailableError as e:
        return JobResult.failure(job, "failed", e.message, worker=worker, attempt=attempt, machine=result.machine)
    result.torch_device = str(device)
    timer = Timer(sync=synchronizer(device))
    deadline = time.monotonic() + spec.time_limit_s if spec.time_limit_s else None
    ctx = JobContext(spec=spec, device=device, timer=timer, peak=None, deadline=deadline, on_progress=on_progress)
    current = "setup"
    try:
        with precision_settings(spec) as precision:
            result.precision = precision
            result.threads = torch.get_num_threads()
            ctx.peak = peak_for(spec, device, result.threads)
            if ctx.peak is None:
                result.warnings.append(f"no peak FLOP/s known for {device}: MFU and the plausibility check are off")
            ctx.device_setup_s = _device_setup(device, timer)
            for current in spec.phases:
                result.phases[current] = PHASE_RUNNERS[current](ctx)
            current = "calibration"
            _rejudge_against_fresh_peak(result, ctx, result.threads)
    except JobTimeout as e:
        result.status, result.error = "timeout", str(e)
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        result.status, result.error = "oom", _oom_message(current, e, spec, device)
    except RuntimeError as e:  # torch's CPU allocator reports out-of-memory as a RuntimeError
        oom = _is_cpu_alloc_failure(e)
        result.status = "oom" if oom else "failed"
        result.error = _oom_message(current, e, spec, device) if oom else _crash_message(current, e)
    except Exception as e:
        result.status, result.error = "failed", _crash_message(current, e)
    finally:
        ctx.model = None
        _free(device)
    result.warnings.extend(ctx.warnings)
    result.finished_at = utcnow()
    return result.settle_status()


# torch reports a failed CPU allocation as a RuntimeError from its allocator (c10 "enforce fail"),
# not as MemoryError or torch.OutOfMemoryError.
_CPU_ALLOC_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def _is_cpu_alloc_failure(e: BaseException) -> bool:
    return any(m in str(e) for m in _CPU_ALLOC_FAILURES)


def _oom_message(phase: str, e: BaseException, spec: BenchSpec, device: torch.device) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    return (
        f"{phase}: out of memory ({type(e).__name__}: {first}); "
        f"predicted {predict_peak(spec).describe()}; observed {_observed_memory(device)}"
    )


def _crash_message(phase: str, e: BaseException) -> str:
    tb = traceback.format_exception(e)
    return f"{phase}: {type(e).__name__}: {e}\n" + "".join(tb[-3:])


def _rejudge_against_fresh_peak(result: JobResult, ctx: JobContext, threads: int) -> None:
    """A phase above a *measured* (CPU) peak: measure the peak again before calling it invalid.

    A calibration cached while the machine was busy under-states the peak. The fresh figure (the
    larger of old and new) re-judges every phase from its raw times; a phase still above it stays
    `invalid`. Published GPU peaks are hard ceilings and are never re-measured.
    """
    old = ctx.peak
    if old is None or old.tolerance != MEASURED_TOLERANCE or ctx.device.type != "cpu":
        return
    if not any(p.status == "invalid" for p in result.phases.values()):
        return
    new = cpu_peak(ctx.spec.dtype, ctx.spec.matmul_precision, threads, refresh=True)
    if new.flops <= old.flops:
        return
    result.warnings.append(
        f"CPU peak re-measured: {old.flops / 1e9:.1f} -> {new.flops / 1e9:.1f} GFLOP/s (the cached one was low)"
    )
    for name, p in list(result.phases.items()):
        if p.times_s and p.flops:
            result.phases[name] = judge(
                ctx.spec, name, p.times_s, p.warmup_times_s, peak=new,
                peak_memory_bytes=p.peak_memory_bytes, memory_kind=p.memory_kind, breakdown=p.breakdown,
            )  # fmt: skip


def prepare_local(spec: BenchSpec) -> list[Job]:
    """Expand a spec for this machine and check every job before any runs (typed errors)."""
    jobs = checkpoint_spec(spec).expand()
    for job in jobs:
        device = resolve_device(job.device)
        check_fits(job.spec, device)
    return jobs


def run_spec(spec: BenchSpec, on_progress: Callable[[Job, str, int, int], None] | None = None) -> list[JobResult]:
    """Run a spec in this process, one job per device, after checking them all."""
    jobs = prepare_local(spec)
    results = []
    for job in jobs:
        cb = (lambda phase, done, total, _j=job: on_progress(_j, phase, done, total)) if on_progress else None
        results.append(run_job(job, on_progress=cb))
    return results
