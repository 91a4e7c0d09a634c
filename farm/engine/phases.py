"""The three timed phases: init (build the model on the device), forward, train.

Each phase returns a `PhaseResult` with raw times; every clock reading is synchronised with the
device by the context's `Timer`. Work that is not the phase itself (CUDA context creation, the
host-to-device copy of the tokens, torch.compile's first call, moving a CPU-built model) is timed
apart and stored in the phase's `breakdown`, so "GPU init is slower" is explained, not asserted.
Forward and train repeat a fixed count or, with `repeats: auto`, adaptively (`JobContext.measure`).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

# The optimizers' `torch._disable_dynamo` wrappers import torch._dynamo on their first call (about 1 s
# here): imported with the engine, in the worker before it forks, so that import never runs inside a
# job. A job's time limit that fired in the middle of it left the module half-initialised and the
# job `failed` with "partially initialized module 'torch._dynamo'" instead of `timeout`.
import torch._dynamo

from farm.engine.memory import PeakMemory
from farm.engine.model import GPT, from_hf_checkpoint
from farm.engine.telemetry import Probe, TelemetrySource
from farm.engine.timing import Timed, Timer, repeat, repeat_adaptive
from farm.errors import JobTimeout
from farm.results.decode import Generation
from farm.results.peaks import Bandwidth, Peak
from farm.results.result import PhaseResult, judge
from farm.results.telemetry import PhaseTelemetry
from farm.spec import AUTO_MIN_REPEATS, BenchSpec

ProgressFn = Callable[[str, int, int], None]


@dataclass
class JobContext:
    """What the phases of one job share: the spec, the device, its timer and the model."""

    spec: BenchSpec
    device: torch.device
    timer: Timer
    peak: Peak | None
    model: GPT | None = None
    device_setup_s: float | None = None
    deadline: float | None = None  # time.monotonic() value after which the job stops
    on_progress: ProgressFn | None = None
    warnings: list[str] = field(default_factory=list)
    # The job's telemetry (`farm.engine.telemetry`): None records none. `measure` observes each
    # phase with it and `judged` attaches the summary.
    telemetry: TelemetrySource | None = None
    _probes: dict[str, Probe] = field(default_factory=dict)
    # Steps (warm-up and timed repeats) done and expected per phase, for progress over the whole job.
    _done: dict[str, int] = field(default_factory=dict)
    _total: dict[str, int] = field(default_factory=dict)

    def job_counts(self) -> tuple[int, int]:
        """(steps done, steps expected) over every phase of the job: init counts 1, forward and train
        their warm-up + repeats (`repeats: auto`: + max_repeats, an upper bound until the phase ends)."""
        spec = self.spec
        per_phase = spec.warmup + (spec.max_repeats if spec.repeats == "auto" else spec.repeats)
        total = sum(self._total.get(p, 1 if p == "init" else per_phase) for p in spec.phases)
        return sum(self._done.values()), total

    def say(self, what: str) -> None:
        """Report what the job does now (compiling, measuring the roofline) with its counts so far."""
        if self.on_progress is not None:
            self.on_progress(what, *self.job_counts())

    def roofline_progress(self, done: int, total: int) -> None:
        """`on_progress` of the CPU roofline measurement (`farm.engine.roofline.cpu_ceiling`)."""
        self.say(f"setup: measuring the CPU roofline {done}/{total} shapes")

    def step(self, phase: str) -> Callable[[int, int], None]:
        """Called between timed repeats: reports the job's progress and enforces the deadline."""

        def _step(done: int, total: int) -> None:
            for p in self._done:  # a phase that ended (auto repeats stop early) counts what it ran
                if p != phase:
                    self._total[p] = self._done[p]
            self._done[phase], self._total[phase] = done, total
            self.say(phase)
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise JobTimeout(f"{phase}: time limit of {self.spec.time_limit_s} s reached after {done}/{total}")

        return _step

    @contextlib.contextmanager
    def observe(self, phase: str) -> Iterator[Observation]:
        """Telemetry around a block (a phase's warm-up and timed repeats): on exit the readings after
        it are taken (NVML's sampler stopped and joined, even when the block raised); then
        `obs.summary(times_s, tokens_per_repeat)` is its `PhaseTelemetry`, or None without a source."""
        obs = Observation(self._begin(phase))
        try:
            yield obs
        finally:
            obs.stop()

    def _begin(self, phase: str) -> Probe | None:
        if self.telemetry is None:
            return None
        try:
            return self.telemetry.begin()
        except Exception as e:  # telemetry never fails a phase
            self.warnings.append(f"{phase}: telemetry not started ({type(e).__name__}: {e})")
            return None

    def measure(self, phase: str, fn: Callable[[], object]) -> Timed:
        """Warm-up and timed repeats of `fn`, observed (`observe`; `judged` attaches the telemetry):
        the spec's count, or adaptive for `repeats: auto`."""
        with self.observe(phase) as obs:
            timed = self._measure(phase, fn)
        if obs.probe is not None:
            self._probes[phase] = obs.probe
        return timed

    def _measure(self, phase: str, fn: Callable[[], object]) -> Timed:
        spec = self.spec
        if spec.repeats == "auto":
            timed = repeat_adaptive(
                fn,
                warmup=spec.warmup,
                timer=self.timer,
                target=spec.ci_target,
                budget_s=spec.repeat_budget_s,
                max_repeats=spec.max_repeats,
                min_repeats=AUTO_MIN_REPEATS,
                deadline=self.deadline,
                on_step=self.step(phase),
            )
            self._total[phase] = self._done.get(phase, 0)  # it stopped before max_repeats: the bar fills
            self.say(phase)
            return timed
        return repeat(fn, repeats=spec.repeats, warmup=spec.warmup, timer=self.timer, on_step=self.step(phase))

    def judged(
        self,
        phase: str,
        timed: Timed,
        mem: PeakMemory,
        breakdown: dict[str, float],
        *,
        generation: Generation | None = None,
        bandwidth: Bandwidth | None = None,
    ) -> PhaseResult:
        """The phase's result from its timed repeats and memory (`farm.results.result.judge`, once:
        a generate phase passes its raw generation and bandwidth ceiling here)."""
        result = judge(
            self.spec,
            phase,
            timed.times_s,
            timed.warmup_times_s,
            peak=self.peak,
            peak_memory_bytes=mem.peak_bytes,
            memory_kind=mem.kind,
            breakdown=breakdown,
            generation=generation,
            bandwidth=bandwidth,
        )
        result.repeats_stop = timed.stop
        probe = self._probes.pop(phase, None)
        if probe is not None:
            per_repeat = self.spec.gen_tokens if phase == "generate" else self.spec.seq  # the tokens a repeat makes
            result.telemetry = Observation(probe).summary(timed.times_s, self.spec.batch * per_repeat)
        return result


@dataclass
class Observation:
    """The telemetry of one observed block (`JobContext.observe`)."""

    probe: Probe | None

    def stop(self) -> None:
        if self.probe is not None:
            with contextlib.suppress(Exception):  # a failed reading is the summary's note, not an error
                self.probe.stop()

    def summary(self, times_s: Sequence[float], tokens_per_repeat: int) -> PhaseTelemetry | None:
        """The block's `PhaseTelemetry` (energy per repeat from the median of `times_s`, per token
        over `tokens_per_repeat`); None when the job has no telemetry source."""
        if self.probe is None:
            return None
        try:
            return self.probe.summary(times_s, tokens_per_repeat)
        except Exception as e:  # telemetry never fails a phase
            return PhaseTelemetry(source="none", notes=[f"telemetry summary failed: {type(e).__name__}: {e}"[:200]])


def weight_dtype(spec: BenchSpec) -> torch.dtype:
    """Weights are cast to the dtype only in "cast" mode; autocast keeps float32 master weights."""
    return getattr(torch, spec.dtype) if spec.mode_for() == "cast" else torch.float32


def autocast(spec: BenchSpec, device: torch.device) -> contextlib.AbstractContextManager:
    if spec.dtype == "float32" or spec.mode_for() == "cast":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, spec.dtype))


def _tokens(spec: BenchSpec, vocab: int, extra: int = 0) -> torch.Tensor:
    """Random token ids (B, T + extra) on the CPU, from the spec's seed."""
    g = torch.Generator().manual_seed(spec.seed)
    return torch.randint(0, vocab, (spec.batch, spec.seq + extra), generator=g)


def _construct(spec: BenchSpec, device: torch.device) -> GPT:
    torch.manual_seed(spec.seed)
    if spec.checkpoint:
        return from_hf_checkpoint(spec.checkpoint, device=device, dtype=weight_dtype(spec))
    return GPT(spec.shape, device=device, dtype=weight_dtype(spec))


def ensure_model(ctx: JobContext) -> GPT:
    """The model of the job, built (untimed) when the init phase did not run."""
    if ctx.model is None:
        ctx.model = _construct(ctx.spec, ctx.device)
    return ctx.model


def _free(ctx: JobContext) -> None:
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def run_init(ctx: JobContext) -> PhaseResult:
    """Build the model directly on the device (the seed's init), timed once per repeat of init.

    The seed times one construction; so does this phase (one repeat, no warm-up). One-off device
    set-up (CUDA context) and, on an accelerator, moving a CPU-built copy are reported apart.
    """
    spec, dev = ctx.spec, ctx.device
    breakdown: dict[str, float] = {}
    if ctx.device_setup_s is not None:
        breakdown["device_setup_s"] = ctx.device_setup_s
    ctx.model = None
    _free(ctx)
    with PeakMemory(dev) as mem, ctx.observe("init") as obs:
        dt, model = ctx.timer.time(lambda: _construct(spec, dev))
        ctx.step("init")(1, 1)
    ctx.model = model
    if spec.checkpoint:
        breakdown["load_s"] = dt
    if dev.type != "cpu":
        torch.manual_seed(spec.seed)
        cpu_model = GPT(model.config, device="cpu", dtype=weight_dtype(spec))
        breakdown["to_device_s"], moved = ctx.timer.time(lambda: cpu_model.to(dev))
        del cpu_model, moved
        _free(ctx)
    result = judge(
        spec,
        "init",
        [dt],
        [],
        peak=None,
        peak_memory_bytes=mem.peak_bytes,
        memory_kind=mem.kind,
        breakdown=breakdown,
    )
    result.telemetry = obs.summary([dt], 0)  # building the model processes no tokens
    return result


def run_forward(ctx: JobContext) -> PhaseResult:
    """Forward passes on random tokens under inference mode, after warm-up."""
    spec, dev = ctx.spec, ctx.device
    model = ensure_model(ctx)
    model.eval()
    breakdown: dict[str, float] = {}
    idx_cpu = _tokens(spec, model.config.vocab_size)
    breakdown["transfer_s"], idx = ctx.timer.time(lambda: idx_cpu.to(dev))  # reported apart
    fn: Callable[[torch.Tensor], object] = model
    amp = autocast(spec, dev)

    def forward() -> None:
        with torch.inference_mode(), amp:
            fn(idx)  # logits (B, T, vocab), dropped at once

    with PeakMemory(dev) as mem:
        if spec.compile:
            fn = torch.compile(model)
            ctx.say("forward: compiling (torch.compile's first call)")
            breakdown["compile_s"], _ = ctx.timer.time(forward)  # first call compiles
        timed = ctx.measure("forward", forward)
    return ctx.judged("forward", timed, mem, breakdown)


def make_optimizer(spec: BenchSpec, model: GPT, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (the fused kernel where torch has one for the device, else foreach) or SGD with momentum.

    The fused kernel exists for CUDA and, in recent torch, for the CPU, where it is about 5x faster
    than foreach on GPT-2 small's 124M parameters (one pass over param, grad and both moments,
    instead of a dozen multi-tensor passes): benchmarks/model_vs_hf.py --cases optimizer.
    """
    if spec.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
        except (RuntimeError, TypeError):  # an older torch without the CPU kernel
            pass
    return torch.optim.AdamW(model.parameters(), lr=3e-4, foreach=True)


def grad_scaler(spec: BenchSpec, device: torch.device) -> torch.amp.GradScaler | None:
    """float16 under autocast scales the loss (its gradients would underflow); nothing else does."""
    return torch.amp.GradScaler(device.type) if (spec.dtype == "float16" and spec.mode_for() == "autocast") else None


@dataclass
class TrainStep:
    """One training step: zero_grad(set_to_none), the loss under `amp`, backward, the optimizer step.

    The loss comes without the full (B, T, vocab) logits (the same FLOPs, chunk by chunk:
    farm.engine.loss.lm_head_loss); each step's 0-d loss is kept in `losses` and read after timing
    (`.item()` inside would add a sync). `fn` is the model, or what wraps it (torch.compile, DDP),
    and may be replaced before the first call. Used by `run_train` and every DDP rank.
    """

    fn: Callable[..., tuple[torch.Tensor | None, torch.Tensor | None]]
    opt: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    amp: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler | None = None
    losses: list[torch.Tensor] = field(default_factory=list)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.amp:
            _, loss = self.fn(self.x, self.y, return_logits=False)
        assert loss is not None  # given targets, the model always returns the loss
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.losses.append(loss.detach())


def run_train(ctx: JobContext) -> PhaseResult:
    """Training steps: zero_grad(set_to_none), forward with next-token loss, backward, step."""
    spec, dev = ctx.spec, ctx.device
    model = ensure_model(ctx)
    model.train()
    breakdown: dict[str, float] = {}
    tokens = _tokens(spec, model.config.vocab_size, extra=1)
    breakdown["transfer_s"], tokens = ctx.timer.time(lambda: tokens.to(dev))
    x, y = tokens[:, :-1], tokens[:, 1:]  # next-token prediction, (B, T) each
    opt = make_optimizer(spec, model, dev)
    step = TrainStep(model, opt, x, y, autocast(spec, dev), grad_scaler(spec, dev))
    losses = step.losses

    try:
        with PeakMemory(dev) as mem:
            if spec.compile:
                step.fn = torch.compile(model)
                ctx.say("train: compiling (torch.compile's first call, forward and backward)")
                breakdown["compile_s"], _ = ctx.timer.time(step)
            timed = ctx.measure("train", step)
        diverged = _diverged(losses)
        if losses and diverged is None:
            breakdown["loss_first"] = float(losses[0])
            breakdown["loss_last"] = float(losses[-1])
    finally:
        opt.zero_grad(set_to_none=True)  # gradients freed; optimizer state goes with the frame
        _free(ctx)
    result = ctx.judged("train", timed, mem, breakdown)
    if diverged is not None:
        # The times are kept (they were measured), but a step that computed NaN is not a training step.
        result.status, result.error = "failed", diverged
    return result


def _diverged(losses: list[torch.Tensor]) -> str | None:
    """The error for the first step (warm-up included, from 1) whose loss is not finite ("training
    diverged: loss nan at step k"); None when every loss is. Read after timing: one check, one sync."""
    if not losses:
        return None
    values = torch.stack(losses).float()
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel() == 0:
        return None
    k = int(bad[0, 0])
    return f"train: training diverged: loss {float(values[k])} at step {k + 1} of {len(losses)} (warm-up included)"


PHASE_RUNNERS: dict[str, Callable[[JobContext], PhaseResult]] = {
    "init": run_init,
    "forward": run_forward,
    "train": run_train,
}


@contextlib.contextmanager
def precision_settings(spec: BenchSpec) -> Iterator[dict[str, str | int | float | bool | None]]:
    """Apply the spec's threads and float32 matmul precision for the job; restore afterwards."""
    prev_threads, prev_prec = torch.get_num_threads(), torch.get_float32_matmul_precision()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.set_float32_matmul_precision(spec.matmul_precision)
    try:
        yield {
            "dtype": spec.dtype,
            "precision_mode": spec.mode_for() if spec.dtype != "float32" else "none",
            "matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "threads": torch.get_num_threads(),
        }
    finally:
        torch.set_num_threads(prev_threads)
        torch.set_float32_matmul_precision(prev_prec)
