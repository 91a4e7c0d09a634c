"""The train phase over several devices of one worker: DistributedDataParallel (spec.world_size > 1).

`run_train_ddp` starts one process per rank (`python -m farm.engine.distributed CONFIG RANK`): on
GPUs rank r drives cuda:r over NCCL, on the CPU each rank is a process with `threads_per_process`
torch threads over gloo. The ranks meet through a file in a private temp dir (`file://` init, no
network; gloo and NCCL are told to use the loopback interface). Every rank trains on its own
`batch` (the per-device batch) and rank 0's clock is the phase's: each reading follows a device
synchronisation and a barrier across the ranks, so a step is the step of the whole group.

In the same job and before the group, one process trains the same model on one device (same
per-device batch, same threads), so `Scaling.efficiency` = t1 / tN is measured, not assumed. After
the timed steps the group runs a few steps under `no_sync()` (no gradient all-reduce): the
all-reduce's exposed share is 1 - t_nosync / t_sync.

The parent watches the ranks: a rank that raises or dies fails the phase with its error (the
others get GRACE_S to exit, then are killed); the time limit kills the whole group (JobTimeout); a
hung rank makes the others' next collective time out (COLLECTIVE_TIMEOUT_S), which fails the phase.
Ranks die with their parent (PR_SET_PDEATHSIG), so a job process killed by the worker's hard time
limit leaves none behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from farm.engine.hardware import cuda_gpu_info
from farm.engine.memory import PeakMemory
from farm.engine.phases import JobContext, TrainStep, _construct, _free, autocast, grad_scaler, make_optimizer
from farm.engine.roofline import cpu_ceiling
from farm.engine.timing import Timed, Timer, repeat_adaptive, synchronizer
from farm.errors import DeviceUnavailableError, JobTimeout, MemoryPredictionError
from farm.flops import min_phase_flops, phase_flops, predict_memory
from farm.results.peaks import Peak, gpu_ceiling
from farm.results.result import PhaseResult, Status, measured_phase
from farm.results.scaling import ALLREDUCE_NOTE, Scaling
from farm.spec import AUTO_MIN_REPEATS, BenchSpec, parse_spec

TRAIN_TARGET = "farm.engine.distributed:train_rank"
GRACE_S = 10.0  # after one rank failed: how long the others get to exit before the group is killed
POLL_S = 0.1
# A collective waiting this long for a rank that hangs raises on the others (which fails the phase
# and kills the group). Ranks meet at barriers every step, so only a hung rank waits this long.
COLLECTIVE_TIMEOUT_S = 900.0
NO_SYNC_STEPS = 3  # steps under no_sync() for the all-reduce's share (at most the timed repeats)
MEMORY_HEADROOM = 0.95  # as farm.engine.runner: a rank refuses a device predicted not to fit


class RankFailure(Exception):
    """A rank raised or died; `kind` is "oom" for an out-of-memory error, else "failed"."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


def threads_per_process(spec: BenchSpec, cores: int | None = None) -> int:
    """Torch threads of each CPU rank: spec.threads if set, else max(1, cores // world_size)."""
    if spec.threads:
        return spec.threads
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // spec.world_size)


def rank_devices(kind: str, world_size: int) -> list[str]:
    """The torch device of each rank: cuda:0..n-1 on GPUs, the CPU n times."""
    if kind == "cuda":
        return [f"cuda:{i}" for i in range(world_size)]
    if kind == "cpu":
        return ["cpu"] * world_size
    raise DeviceUnavailableError("world_size", f"world_size > 1 runs on cuda (NCCL) or cpu (gloo), not {kind}")


def rank_tokens(spec: BenchSpec, vocab: int, rank: int) -> torch.Tensor:
    """Rank r's (batch, seq + 1) token ids on the CPU: its own shard, from seed + r (rank 0: the
    single-device tokens of `farm.engine.phases`)."""
    g = torch.Generator().manual_seed(spec.seed + rank)
    return torch.randint(0, vocab, (spec.batch, spec.seq + 1), generator=g)


# -- the parent ------------------------------------------------------------------------------------
@dataclass
class _Rank:
    rank: int
    proc: subprocess.Popen[bytes]
    log: Path


def _rank_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on loopback only
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")  # NCCL's bootstrap likewise (data goes over NVLink/PCIe/SHM)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # as the worker: cuda:r is NVML's GPU r
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _kill(ranks: list[_Rank]) -> None:
    for r in ranks:
        if r.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                r.proc.send_signal(signal.SIGKILL)
    for r in ranks:
        with contextlib.suppress(subprocess.TimeoutExpired):
            r.proc.wait(10)


def _rank_error(out: Path, r: _Rank) -> RankFailure:
    err = out / f"rank{r.rank}.error.json"
    if err.exists():
        doc = json.loads(err.read_text())
        return RankFailure(f"rank {r.rank}: {doc['error']}", doc.get("kind", "failed"))
    code = r.proc.returncode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    tail = r.log.read_text(errors="replace")[-600:].strip() if r.log.exists() else ""
    return RankFailure(f"rank {r.rank} {how} without a result" + (f"; its output ends:\n{tail}" if tail else ""))


def _first_failure(out: Path, ranks: list[_Rank]) -> RankFailure | None:
    """The failure that caused the others: a rank that died without writing its error (nothing else
    kills a rank before the group is killed), else the oldest error written; the others' errors are
    often only its echo (a peer that closed its connection)."""
    died = [r for r in ranks if r.proc.poll() not in (None, 0) and not (out / f"rank{r.rank}.error.json").exists()]
    if died:
        return _rank_error(out, died[0])
    written = [(p.stat().st_mtime, r) for r in ranks if (p := out / f"rank{r.rank}.error.json").exists()]
    return _rank_error(out, min(written, key=lambda w: w[0])[1]) if written else None


def launch(
    target: str,
    args: dict[str, Any],
    *,
    devices: list[str],
    threads: int | None,
    workdir: Path,
    deadline: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `target` ("module:function", called with a `RankContext`) in one process per device and
    return each rank's JSON-able result, rank order. One device: no process group.

    Raises RankFailure when a rank raises or dies (the others are killed after GRACE_S), JobTimeout
    past `deadline` (a time.monotonic() value; the group is killed). `on_progress(done, total)` hears
    rank 0's steps; an exception from it kills the group and propagates.
    """
    world = len(devices)
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "target": target,
        "args": args,
        "devices": devices,
        "threads": threads,
        "backend": "nccl" if devices[0].startswith("cuda") else "gloo",
        "init": f"file://{workdir / 'rendezvous'}",
        "out": str(workdir),
        "collective_timeout_s": COLLECTIVE_TIMEOUT_S,
    }
    cfg_path = workdir / "config.json"
    cfg_path.write_text(json.dumps(config))
    progress = workdir / "progress"
    ranks: list[_Rank] = []
    try:
        for i in range(world):
            log = workdir / f"rank{i}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "farm.engine.distributed", str(cfg_path), str(i)],
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=_rank_env(threads),
                )
            ranks.append(_Rank(i, proc, log))
        seen = ""
        failed_at: float | None = None
        failure: RankFailure | None = None
        while True:
            codes = [r.proc.poll() for r in ranks]
            if failure is None:
                bad = next((r for r, c in zip(ranks, codes, strict=True) if c not in (None, 0)), None)
                if bad is not None:
                    failure, failed_at = _rank_error(workdir, bad), time.monotonic()
            if all(c is not None for c in codes):
                break
            if failure is not None and failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                break
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise JobTimeout(f"train: time limit reached with {world} rank(s) running; the group was killed")
            text = progress.read_text() if progress.exists() else ""
            if text and text != seen:
                seen = text
                done, total = (int(x) for x in text.split())
                if on_progress is not None:
                    on_progress(done, total)
            time.sleep(POLL_S)
        if failure is not None:
            raise _first_failure(workdir, ranks) or failure
        outs = []
        for r in ranks:
            path = workdir / f"rank{r.rank}.json"
            if not path.exists():
                raise _rank_error(workdir, r)
            outs.append(json.loads(path.read_text()))
        return outs
    finally:
        _kill(ranks)


def group_peak(spec: BenchSpec, devices: list[str], threads: int | None) -> Peak | None:
    """The group's ceiling. GPUs: the sum of each rank's GPU ceiling ("n x <source>"). CPU: the CPU
    at every rank's threads together (`cpu_ceiling` counts min(threads, physical cores), so ranks
    that oversubscribe the cores are never credited with cores the machine lacks)."""
    if devices[0] == "cpu":
        return cpu_ceiling(spec, len(devices) * (threads or 1))
    peaks = [gpu_ceiling(cuda_gpu_info(torch.device(d).index or 0), spec.dtype, spec.matmul_precision) for d in devices]
    if any(p is None for p in peaks):
        return None
    known = [p for p in peaks if p is not None]
    sources = sorted({p.source for p in known})
    source = f"{len(known)} x {sources[0]}" if len(sources) == 1 else " + ".join(p.source for p in known)
    return Peak(flops=sum(p.flops for p in known), source=source, tolerance=max(p.tolerance for p in known))


def run_train_ddp(ctx: JobContext) -> PhaseResult:
    """The train phase over `spec.world_size` devices (module docstring): the group's times, FLOPs
    and MFU against the group's ceiling, and `scaling` against one device measured first."""
    spec = ctx.spec
    n = spec.world_size
    devices = rank_devices(ctx.device.type, n)
    threads = threads_per_process(spec) if ctx.device.type == "cpu" else None
    args = {"spec": spec.model_dump(mode="json")}
    step = ctx.step("train")
    ctx.model = None  # the ranks build their own: the job's copy (from init) must not hold rank 0's memory
    _free(ctx)
    with tempfile.TemporaryDirectory(prefix="farm-ddp-") as tmp:
        try:
            ctx.say(f"train: one-device baseline on {devices[0]}")
            (single,) = launch(
                TRAIN_TARGET, args, devices=devices[:1], threads=threads, workdir=Path(tmp) / "single",
                deadline=ctx.deadline,
                on_progress=lambda d, t: ctx.say(f"train: one-device baseline {d}/{t} steps"),
            )  # fmt: skip
            group = launch(
                TRAIN_TARGET, args, devices=devices, threads=threads, workdir=Path(tmp) / "group",
                deadline=ctx.deadline, on_progress=step,
            )  # fmt: skip
        except RankFailure as e:
            status: Status = "oom" if e.kind == "oom" else "failed"
            return PhaseResult(name="train", status=status, error=f"train: DDP over {n} devices: {e}")
    return ddp_result(spec, devices, threads, single, group)


def ddp_result(
    spec: BenchSpec, devices: list[str], threads: int | None, single: dict[str, Any], group: list[dict[str, Any]]
) -> PhaseResult:
    """The group's phase from the ranks' outputs: rank 0's times, n x FLOPs and tokens, the group's
    ceiling, the largest rank's memory, and `Scaling`."""
    n = len(devices)
    lead = group[0]
    breakdown: dict[str, float] = {
        k: float(lead[k]) for k in ("transfer_s", "compile_s", "loss_first", "loss_last") if k in lead
    }
    mem = [int(o["peak_memory_bytes"]) for o in group if o.get("peak_memory_bytes") is not None]
    result = measured_phase(
        "train",
        lead["times_s"],
        lead["warmup_times_s"],
        flops=n * phase_flops(spec, "train"),
        min_flops=n * min_phase_flops(spec.shape, spec.batch, spec.seq, "train"),
        tokens=n * spec.batch * spec.seq,
        peak=group_peak(spec, devices, threads),
        peak_memory_bytes=max(mem) if mem else None,
        memory_kind=f"{lead['memory_kind']}, largest rank" if mem else None,
        predicted_memory_bytes=predict_memory(spec, "train").total,
        breakdown=breakdown,
    )
    result.repeats_stop = lead.get("stop")
    diverged = next((o["diverged"] for o in [single, *group] if o.get("diverged")), None)
    if diverged is not None:
        result.status, result.error = "failed", diverged
    stats = result.stats
    t1_times = [float(t) for t in single["times_s"]]
    if stats is None or not t1_times or stats.median_s <= 0:
        return result
    t1 = _median(t1_times)
    tn = stats.median_s
    tokens = spec.batch * spec.seq
    no_sync = [float(t) for t in lead.get("no_sync_times_s", [])]
    t_ns = _median(no_sync) if no_sync else None
    result.scaling = Scaling(
        world_size=n,
        backend="nccl" if devices[0].startswith("cuda") else "gloo",
        devices=devices,
        threads_per_process=threads,
        per_device_batch=spec.batch,
        step_s=tn,
        tokens_per_s=n * tokens / tn,
        single_device_step_s=t1,
        single_device_times_s=t1_times,
        single_device_tokens_per_s=tokens / t1,
        efficiency=t1 / tn,
        throughput_speedup=n * t1 / tn,
        allreduce_share=max(0.0, 1.0 - t_ns / tn) if t_ns else None,
        no_sync_step_s=t_ns,
        no_sync_times_s=no_sync,
        allreduce_note=ALLREDUCE_NOTE if t_ns else None,
    )
    return result


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


# -- a rank ----------------------------------------------------------------------------------------
@dataclass
class RankContext:
    """What a rank's target is given: its rank, the group's size, its device and the launch args."""

    rank: int
    world_size: int
    device: torch.device
    args: dict[str, Any]
    progress_file: Path

    def progress(self, done: int, total: int) -> None:
        """Rank 0 reports its steps to the parent (between timed steps, never inside one)."""
        if self.rank == 0:
            tmp = self.progress_file.with_suffix(".tmp")
            tmp.write_text(f"{done} {total}")
            tmp.replace(self.progress_file)

    def group_sync(self) -> Callable[[], None]:
        """The timer's synchronisation: the device, then a barrier across the ranks, then the device
        again (NCCL's barrier is itself queued on the device)."""
        dev_sync = synchronizer(self.device)
        if self.world_size == 1:
            return dev_sync
        ids = [self.device.index or 0] if self.device.type == "cuda" else None

        def sync() -> None:
            dev_sync()
            if ids:
                dist.barrier(device_ids=ids)
            else:
                dist.barrier()
            dev_sync()

        return sync

    def agree(self, stop: bool) -> bool:
        """Rank 0's decision, the same on every rank (one tiny broadcast, outside timed regions)."""
        if self.world_size == 1:
            return stop
        flag = torch.tensor([1 if stop else 0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())


def _check_fits(spec: BenchSpec, device: torch.device) -> None:
    """On a GPU rank: refuse a device predicted not to fit (the parent checked only its own GPU)."""
    if device.type != "cuda":
        return
    pred = predict_memory(spec, "train")
    free, _ = torch.cuda.mem_get_info(device)
    if pred.total > free * MEMORY_HEADROOM:
        raise MemoryPredictionError(
            "batch",
            f"{device}: train is predicted to need {pred.describe()}, but {free / (1 << 30):.2f} GiB is free",
            predicted_bytes=pred.total,
            available_bytes=int(free),
        )


def _measure(rc: RankContext, spec: BenchSpec, fn: Callable[[], object], timer: Timer) -> Timed:
    """Warm-up and timed steps, the same count on every rank: the spec's count, or for `repeats:
    auto` `repeat_adaptive` with rank 0's decision after each step (`RankContext.agree`, its stop hook)."""
    auto = spec.repeats == "auto"
    most = spec.max_repeats if auto else int(spec.repeats)
    out = repeat_adaptive(
        fn,
        warmup=spec.warmup,
        timer=timer,
        target=spec.ci_target,
        budget_s=spec.repeat_budget_s,
        max_repeats=most,
        min_repeats=AUTO_MIN_REPEATS if auto else most,  # a fixed count: every step, then "max"
        on_step=rc.progress,
        agree=rc.agree if auto else None,
    )
    if not auto:
        out.stop = None
    return out


def train_rank(rc: RankContext) -> dict[str, Any]:
    """One rank's training (the steps of `farm.engine.phases.run_train`), DDP-wrapped above one rank."""
    spec = parse_spec(rc.args["spec"])
    dev = rc.device
    _check_fits(spec, dev)
    model = _construct(spec, dev)  # the same seed on every rank: identical initial weights
    model.train()
    net: Any = model
    if rc.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    timer = Timer(sync=rc.group_sync())
    out: dict[str, Any] = {}
    tokens_cpu = rank_tokens(spec, model.config.vocab_size, rc.rank)
    out["transfer_s"], tokens = timer.time(lambda: tokens_cpu.to(dev))
    x, y = tokens[:, :-1], tokens[:, 1:]
    opt = make_optimizer(spec, model, dev)
    step = TrainStep(net, opt, x, y, autocast(spec, dev), grad_scaler(spec, dev))
    losses = step.losses

    with PeakMemory(dev) as mem:
        if spec.compile:
            step.fn = torch.compile(net)
            out["compile_s"], _ = timer.time(step)
        timed = _measure(rc, spec, step, timer)
        if rc.world_size > 1:
            no_sync: list[float] = []
            for _ in range(min(NO_SYNC_STEPS, len(timed.times_s))):
                with net.no_sync():
                    no_sync.append(timer.time(step)[0])
            out["no_sync_times_s"] = no_sync
    values = torch.stack(losses).float().cpu() if losses else torch.zeros(0)
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        k = int(bad[0, 0])
        out["diverged"] = f"train: training diverged on rank {rc.rank}: loss {float(values[k])} at step {k + 1}"
    elif len(values):
        out["loss_first"], out["loss_last"] = float(values[0]), float(values[-1])
    out.update(
        times_s=timed.times_s,
        warmup_times_s=timed.warmup_times_s,
        stop=timed.stop,
        peak_memory_bytes=mem.peak_bytes,
        memory_kind=mem.kind,
    )
    return out


def _die_with_parent() -> None:
    """Linux: this rank gets SIGKILL when the process that started it dies (never an orphan)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.cuda.OutOfMemoryError | MemoryError | MemoryPredictionError) or (
        "DefaultCPUAllocator" in text and "memory" in text
    )


def rank_main(config_path: str, rank: int) -> int:
    """A rank's process: join the group, run the target, write rank<r>.json (or .error.json)."""
    _die_with_parent()
    cfg = json.loads(Path(config_path).read_text())
    out = Path(cfg["out"])
    devices: list[str] = cfg["devices"]
    world = len(devices)
    device = torch.device(devices[rank])
    code = 1
    try:
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world > 1:
            dist.init_process_group(
                cfg["backend"],
                init_method=cfg["init"],
                rank=rank,
                world_size=world,
                timeout=timedelta(seconds=float(cfg["collective_timeout_s"])),
                device_id=device if device.type == "cuda" else None,  # NCCL: bind the rank's GPU at once
            )
        module, _, name = cfg["target"].partition(":")
        target = getattr(importlib.import_module(module), name)
        result = target(RankContext(rank, world, device, cfg["args"], out / "progress"))
        tmp = out / f"rank{rank}.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(out / f"rank{rank}.json")
        code = 0
    except BaseException as e:
        first = str(e).splitlines()[0] if str(e) else ""
        tb = "".join(traceback.format_exception(e)[-3:])
        doc = {"error": f"{type(e).__name__}: {first}\n{tb}", "kind": "oom" if _is_oom(e) else "failed"}
        (out / f"rank{rank}.error.json").write_text(json.dumps(doc))
        code = 1
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                if code == 0:
                    # Every rank done before any tears the group down: a rank that destroyed its gloo
                    # group while a peer still used it (rank 0 saving, say) was aborted at exit
                    # ("terminate called without an active exception"), its result already written.
                    dist.barrier()
                dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1], int(sys.argv[2])))
