"""Run one job (or a spec, locally) with the core engine and return `JobResult`s.

`run_job` never raises for a job that went wrong: out of memory, a time limit, a missing device
or a crash all come back as a result with their status and error, so nothing is ever dropped.
`run_spec` (used by `farm run`) checks every job first and raises typed errors on bad input.

Order inside a job: nothing touches a CUDA device before the timed set-up (`_device_setup`: the
context is created there, so `device_setup_s` holds it), then the memory check, the peak, and
the phases. The set-up and every phase hold the host lock (`farm.engine.hostlock`), so two jobs on
one host never time at the same time; each phase records the host's load beside it.
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

from farm.engine.allocator import tune_cpu_allocator
from farm.engine.distributed import run_train_ddp
from farm.engine.generate import run_generate
from farm.engine.hardware import cuda_gpu_info, fingerprint, with_gpu
from farm.engine.hostlock import host_lock, lock_enabled, timed_region
from farm.engine.linear import cpu_gemm
from farm.engine.model import read_hf_config
from farm.engine.phases import PHASE_RUNNERS, JobContext, ProgressFn, precision_settings
from farm.engine.roofline import cpu_ceiling, roofline
from farm.engine.telemetry import TelemetrySource, telemetry_source
from farm.engine.timing import Timer, synchronizer
from farm.errors import CheckpointError, DeviceUnavailableError, JobTimeout, MemoryPredictionError, SpecError
from farm.flops import predict_peak
from farm.results.machine import gpu_tag
from farm.results.peaks import Peak, gpu_ceiling
from farm.results.result import JobResult, PhaseResult, utcnow
from farm.spec import PRESETS, BenchSpec, Job, parse_device_tag, parse_spec

MEMORY_HEADROOM = 0.95  # refuse a job predicted to use more than this share of free memory
_setup_clock = time.perf_counter  # the clock of the CUDA set-up (a module attribute: tests read it)
_devices_used: set[str] = set()  # torch devices this process has run a job on (`JobResult.fresh_process`)


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


def check_world_size(spec: BenchSpec, device: torch.device) -> None:
    """A job over `world_size` > 1 devices needs that many local GPUs (ranks on cuda:0..n-1), or the
    CPU (gloo processes); DeviceUnavailableError otherwise. Device queries only: no CUDA context."""
    n = spec.world_size
    if n == 1 or device.type == "cpu":
        return
    if device.type != "cuda":
        raise DeviceUnavailableError(
            "world_size", f"world_size {n}: DDP runs on cuda (NCCL) or cpu (gloo), not {device.type}"
        )
    count = torch.cuda.device_count()
    if count < n:
        raise DeviceUnavailableError("world_size", f"world_size {n} needs {n} local GPUs; this machine has {count}")


def phase_runner(spec: BenchSpec, phase: str) -> Callable[[JobContext], PhaseResult]:
    """The function that runs a phase: train over world_size > 1 devices is DDP (farm.engine.distributed)."""
    if phase == "train" and spec.world_size > 1:
        return run_train_ddp
    if phase == "generate":
        return run_generate  # farm.engine.generate (it imports phases, so it is registered here)
    return PHASE_RUNNERS[phase]


def check_fits(spec: BenchSpec, device: torch.device) -> None:
    """Refuse a job predicted not to fit, before it runs, with the numbers. On the CPU a job over
    world_size processes needs world_size times the memory (each GPU rank checks its own device)."""
    if device.type == "mps":
        return
    pred = predict_peak(spec)
    avail = available_memory(device)
    procs = spec.world_size if device.type == "cpu" else 1
    if pred.total * procs > avail * MEMORY_HEADROOM:
        raise MemoryPredictionError(
            "batch",
            f"{spec.model_name} {pred.phase} at batch {spec.batch} x seq {spec.seq} "
            f"({spec.dtype}) is predicted to need {pred.describe()}{f' x {procs} processes' if procs > 1 else ''}, "
            f"but {device} has "
            f"{avail / (1 << 30):.2f} GiB free; use a smaller batch, seq or model",
            predicted_bytes=pred.total,
            available_bytes=avail,
        )


def peak_for(
    spec: BenchSpec, device: torch.device, threads: int, on_progress: Callable[[int, int], None] | None = None
) -> Peak | None:
    """The device's ceiling (docs/ceilings.md): a GPU's table or derived peak; the CPU's theoretical
    peak with the measured GEMM roofline beside it; None otherwise (its phases are `unverified`).
    On CUDA it reads the device's properties: call it after the timed device set-up."""
    if device.type == "cuda":
        return gpu_ceiling(cuda_gpu_info(device.index or 0), spec.dtype, spec.matmul_precision)
    if device.type == "cpu":
        return cpu_ceiling(spec, threads, on_progress)  # progress: roofline shapes measured
    return None


def _has_context(device: torch.device) -> bool:
    """Whether this process already holds a CUDA context on the device (asked without creating one)."""
    probe = getattr(torch._C, "_cuda_hasPrimaryContext", None)  # CUDA builds of torch have it
    return bool(probe(device.index or 0)) if probe is not None else False


def _fresh(device: torch.device) -> bool:
    """The job is the first this process runs on the device (and, on CUDA, no context exists yet)."""
    return str(device) not in _devices_used and not (device.type == "cuda" and _has_context(device))


def _device_setup(device: torch.device, timer: Timer) -> float | None:
    """Time the one-off device set-up: on CUDA, context creation with the first allocation.

    It must be the job's first CUDA call. It reads a plain clock around set_device, a one-element
    allocation and a synchronisation: `Timer.time` synchronises before its first reading, and that
    synchronisation would create the context untimed.
    """
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        dt, _ = timer.time(lambda: torch.empty(1, device=device))
        return dt
    t0 = _setup_clock()
    torch.cuda.set_device(device)
    torch.empty(1, device=device)
    torch.cuda.synchronize(device)
    return _setup_clock() - t0


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
        result.machine = fingerprint()  # NVML only: no CUDA context
        device = resolve_device(job.device, gpu_index)  # device queries only: no CUDA context
        check_world_size(job.spec, device)
    except DeviceUnavailableError as e:
        return JobResult.failure(job, "failed", e.message, worker=worker, attempt=attempt, machine=result.machine)
    result.torch_device = str(device)
    result.fresh_process = _fresh(device)
    if device.type == "cpu":
        result.cpu_allocator = tune_cpu_allocator()
        result.cpu_gemm = cpu_gemm()
    timer = Timer(sync=synchronizer(device))
    deadline = time.monotonic() + spec.time_limit_s if spec.time_limit_s else None
    ctx = JobContext(spec=spec, device=device, timer=timer, peak=None, deadline=deadline, on_progress=on_progress)
    if not lock_enabled():
        result.warnings.append("host lock off (FARM_HOST_LOCK=off): other jobs on this host may have run meanwhile")
    current = "setup"
    try:
        with precision_settings(spec) as precision:
            result.precision = precision
            result.threads = torch.get_num_threads()
            cores = result.threads if device.type == "cpu" else 1  # a GPU job drives its device from one thread
            with host_lock("setup", deadline=deadline, on_wait=_waiting(ctx, "setup")) as wait_s:
                ctx.device_setup_s = _device_setup(device, timer)  # the job's first CUDA call
                _devices_used.add(str(device))
                if check_memory:
                    check_fits(spec, device)
                # may measure the CPU roofline (seconds, with progress): under the lock
                ctx.peak = peak_for(spec, device, result.threads, ctx.roofline_progress)
                if device.type == "cuda":  # the facts the ceiling came from, kept even if a phase fails
                    result.machine = with_gpu(result.machine, cuda_gpu_info(device.index or 0))
                ctx.telemetry = _telemetry_for(device)
            if ctx.peak is None:
                result.warnings.append(
                    f"no ceiling known for {device}: its phases are unverified (no MFU, no plausibility check)"
                )
            for current in spec.phases:
                # The set-up's wait is reported with the first phase: the job waited that long before it.
                with timed_region(
                    f"{job.job_id} {current}",
                    cores=cores,
                    deadline=deadline,
                    on_wait=_waiting(ctx, current),
                    extra_wait_s=wait_s,
                ) as region:
                    phase = phase_runner(spec, current)(ctx)
                wait_s = 0.0
                phase.host = region.load
                result.phases[current] = phase
            current = "calibration"
            kept = {name: (p.host, p.repeats_stop) for name, p in result.phases.items()}
            with host_lock("calibration", deadline=deadline, on_wait=_waiting(ctx, "calibration")):
                _rejudge_against_fresh_peak(result, ctx, result.threads)
            for name, (host, stop) in kept.items():  # a re-judged phase keeps what the run recorded
                result.phases[name].host = result.phases[name].host or host
                result.phases[name].repeats_stop = result.phases[name].repeats_stop or stop
    except MemoryPredictionError as e:
        result.status, result.error = "oom", f"refused before running: {e.message}"
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
        if ctx.telemetry is not None:
            ctx.telemetry.close()
        _free(device)
    result.warnings.extend(ctx.warnings)
    result.finished_at = utcnow()
    return result.settle_status()


def _telemetry_for(device: torch.device) -> TelemetrySource:
    """The job's telemetry source: NVML for its GPU (NVML's index and UUID, matched by
    `cuda_gpu_info`, whatever CUDA_VISIBLE_DEVICES renumbers), the CPU's counters otherwise."""
    if device.type == "cuda":
        gpu = cuda_gpu_info(device.index or 0)
        return telemetry_source("cuda", gpu.index, gpu.uuid)
    return telemetry_source(device.type)


def _waiting(ctx: JobContext, what: str) -> Callable[[], None] | None:
    """The progress report while a region waits for the host lock."""
    progress = ctx.on_progress
    if progress is None:
        return None
    return lambda: ctx.say(f"{what}: waiting for the host lock")  # keeps the bar's counts


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
    """After the phases: refresh a CPU roofline that a phase beat.

    The ceiling is theoretical now (GPU table or derivation, the CPU's ISA peak), so a fresh
    measurement can no longer change a verdict and nothing is re-judged. (On CUDA the GPU's compute
    capability, SM count and max SM clock go into the fingerprint right after the ceiling is derived,
    so `farm import` can derive it again.) On the CPU a phase faster than the cached GEMM roofline
    shows that roofline was measured low (under load): it is measured again, and every phase shows
    the new figure.
    """
    peak = ctx.peak
    if ctx.device.type != "cpu" or peak is None or peak.roofline_flops is None:
        return
    old = peak.roofline_flops
    if not any(p.achieved_flops and p.achieved_flops > old for p in result.phases.values()):
        return
    fresh = roofline(
        ctx.spec, threads, refresh=True,
        on_progress=lambda d, t: ctx.say(f"calibration: re-measuring the CPU roofline {d}/{t} shapes"),
    )  # fmt: skip
    if fresh.flops <= old:
        return
    result.warnings.append(
        f"GEMM roofline re-measured: {old / 1e9:.1f} -> {fresh.flops / 1e9:.1f} GFLOP/s (a phase beat the cached one)"
    )
    for name, p in list(result.phases.items()):
        if p.roofline_flops is not None:
            result.phases[name] = p.model_copy(update={"roofline_flops": fresh.flops, "roofline_source": fresh.source})


def prepare_local(spec: BenchSpec) -> list[Job]:
    """Expand a spec for this machine and check every job before any runs (typed errors).

    A CUDA job's memory is checked by `run_job` after its timed set-up: asking the device for its
    free memory here would create the CUDA context before the job could time it.
    """
    jobs = checkpoint_spec(spec).expand()
    for job in jobs:
        device = resolve_device(job.device)
        check_world_size(job.spec, device)
        if device.type != "cuda":
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
