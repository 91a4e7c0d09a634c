"""The `generate` phase: a prompt of `seq` tokens (prefill), then greedy decoding with a key/value cache.

One repeat is one whole generation from an empty cache: the prefill runs the prompt through the
model (LM head on the last position only) and picks the first new token by argmax on the device
(the time to first token); then `gen_tokens - 1` decode steps each feed the last picked token of
every sequence (`batch` at once) through the cache and pick the next. The prefill and every decode
step are timed with the context's `Timer`, which synchronises the device before each reading, so
per-token latencies are real; the phase's `times_s` holds the whole generations (prefill + decode),
one per repeat, so regressions, pools and sweeps treat it as any phase. Warm-up, repeats, progress
and the deadline are `JobContext.measure`'s. The raw per-step times of the last timed repeat are
kept (at most MAX_GEN_TOKENS); `farm.results.decode` derives the figures and the bandwidth check
(docs/generation.md). The memory-bandwidth ceiling is the GPU's published figure or this CPU's
measured read bandwidth (`farm.engine.hardware.cpu_bandwidth`), read before the phase's memory is.
"""

from __future__ import annotations

import functools

import torch

from farm.engine.hardware import cpu_bandwidth, cuda_gpu_info
from farm.engine.kvcache import KVCache
from farm.engine.memory import PeakMemory
from farm.engine.model import GPT
from farm.engine.phases import JobContext, autocast, ensure_model
from farm.flops import decode_steps
from farm.results.decode import Generation
from farm.results.peaks import Bandwidth, gpu_bandwidth
from farm.results.result import PhaseResult

__all__ = ["bandwidth_ceiling", "greedy_step", "run_generate"]


def bandwidth_ceiling(ctx: JobContext) -> Bandwidth | None:
    """The device's memory-bandwidth ceiling: a GPU's published figure (with the L2 torch reports),
    the CPU's measured read bandwidth at the job's threads; None for other devices."""
    dev = ctx.device
    if dev.type == "cuda":
        info = cuda_gpu_info(dev.index or 0)
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", None)
        return gpu_bandwidth(info.name, info.memory_bytes, int(l2) if isinstance(l2, int) and l2 > 0 else None)
    if dev.type == "cpu":
        ctx.say("generate: measuring the CPU memory bandwidth")
        return cpu_bandwidth(torch.get_num_threads())
    return None


def greedy_step(model: GPT, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed `tokens` (B, T) through the cache; the next token of each sequence, (B, 1), by argmax on the device."""
    return model.forward_cached(tokens, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)


def run_generate(ctx: JobContext) -> PhaseResult:
    """Greedy generation with a key/value cache, `batch` sequences at once, after warm-up."""
    spec, dev, timer = ctx.spec, ctx.device, ctx.timer
    model = ensure_model(ctx)
    model.eval()
    breakdown: dict[str, float] = {}
    if spec.compile:
        ctx.warnings.append("generate: compile is not applied to cached decoding (it runs eagerly)")
    g = torch.Generator().manual_seed(spec.seed)  # the prompt: random ids from the seed, as forward's tokens
    idx_cpu = torch.randint(0, model.config.vocab_size, (spec.batch, spec.seq), generator=g)
    breakdown["transfer_s"], idx = timer.time(lambda: idx_cpu.to(dev))
    bandwidth = bandwidth_ceiling(ctx)  # measuring it allocates a large buffer: before the phase's memory
    amp = autocast(spec, dev)
    steps = decode_steps(spec.gen_tokens)
    prefill_s: list[float] = []
    decode_s: list[float] = []
    token_s: list[float] = []

    def generate() -> None:
        cache.reset()
        per_step: list[float] = []
        with torch.inference_mode(), amp:
            dt, nxt = timer.time(lambda: greedy_step(model, idx, cache))
            prefill_s.append(dt)
            for _ in range(steps):
                dt, nxt = timer.time(functools.partial(greedy_step, model, nxt, cache))
                per_step.append(dt)
        decode_s.append(sum(per_step))
        token_s[:] = per_step  # the last generation's steps only: bounded by gen_tokens

    with PeakMemory(dev) as mem:
        capacity = spec.seq + spec.gen_tokens
        breakdown["kv_alloc_s"], cache = timer.time(
            lambda: KVCache(model.config, spec.batch, capacity, getattr(torch, spec.dtype), dev)
        )
        timed = ctx.measure("generate", generate)
    n = len(timed.times_s)  # warm-up generations came first
    raw = Generation(
        gen_tokens=spec.gen_tokens,
        decode_steps=steps,
        prefill_times_s=prefill_s[-n:],
        decode_times_s=decode_s[-n:],
        token_times_s=token_s,
        kv_cache_bytes_observed=cache.nbytes,
    )
    # One judgement: the FLOP check, the generation's figures, its consistency and the bandwidth verdict.
    return ctx.judged("generate", timed, mem, breakdown, generation=raw, bandwidth=bandwidth)
