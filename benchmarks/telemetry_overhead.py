"""The NVML sampler's own cost (farm.engine.telemetry), against the goal of < 1% of a GPU phase.

    python benchmarks/telemetry_overhead.py                   # everywhere: a fake NVML (CPU time per sample)
    python benchmarks/telemetry_overhead.py --gpu             # on a GPU machine: real NVML and a real phase
    python benchmarks/telemetry_overhead.py --gpu --model gpt2 --batch 8 --seq 1024 --rounds 6

1. A fake NVML (Python functions returning constants): the sampler's Python overhead, CPU time per
   sample and the share of one core it takes at SAMPLE_HZ. Runs anywhere.
2. --gpu, real NVML on GPU 0: CPU time per sample of the real calls (ctypes releases the GIL while
   the driver answers, so what the phase's Python thread can lose is bounded by this CPU time).
3. --gpu, a real forward phase (farm.engine.phases.run_forward) timed with and without the sampler,
   interleaved (ABAB...) so drift hits both: the median phase time of each, and the difference as a
   share of the phase. The sampler's thread CPU time over the phase window is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.engine.telemetry import SAMPLE_HZ, NvmlProbe, NvmlSource, open_nvml


def _fake_nvml() -> Any:
    ns = types.SimpleNamespace()
    ns.nvmlDeviceGetClockInfo = lambda h, kind: 1980
    ns.nvmlDeviceGetPowerUsage = lambda h: 650_000
    ns.nvmlDeviceGetTemperature = lambda h, sensor: 60
    ns.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=100, memory=40)
    ns.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0
    ns.nvmlDeviceGetTotalEnergyConsumption = lambda h: 1_000_000
    ns.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980
    ns.nvmlDeviceGetDefaultApplicationsClock = lambda h, kind: 1590
    ns.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    return ns


def per_sample_cpu_s(src: NvmlSource, n: int) -> float:
    """CPU time (this thread) per `NvmlProbe.sample` over n samples taken back to back."""
    probe = NvmlProbe(src)
    probe.start(sampling=False)
    c0 = time.thread_time()
    for _ in range(n):
        probe.sample()
    dt = time.thread_time() - c0
    probe.stop()
    return dt / n


def _report_sampler(label: str, cost: float) -> None:
    print(
        f"{label}: {cost * 1e6:.1f} us CPU per sample; at {SAMPLE_HZ:g} Hz {cost * SAMPLE_HZ:.3%} of one core",
        flush=True,
    )


def gpu_phase(args: argparse.Namespace) -> None:
    import torch  # lazily: the fake-NVML measurement runs without torch

    from farm.engine.hardware import cuda_gpu_info
    from farm.engine.phases import JobContext, precision_settings, run_forward
    from farm.engine.timing import Timer, synchronizer
    from farm.spec import parse_spec

    if not torch.cuda.is_available():
        print(
            f"--gpu: no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}): skipped"
        )
        return
    dev = torch.device("cuda", 0)
    torch.empty(1, device=dev)
    gpu = cuda_gpu_info(0)
    src = open_nvml(gpu.index, gpu.uuid)
    if not isinstance(src, NvmlSource):
        print(f"real NVML: unavailable ({src.why})")
        return
    _report_sampler(f"real NVML ({src.label})", per_sample_cpu_s(src, args.samples))
    spec = parse_spec(
        {
            "model": args.model,
            "batch": args.batch,
            "seq": args.seq,
            "dtype": args.dtype,
            "repeats": args.repeats,
            "warmup": 2,
            "devices": "cuda",
        }
    )
    ctx = JobContext(spec=spec, device=dev, timer=Timer(sync=synchronizer(dev)), peak=None)
    times: dict[str, list[float]] = {"without": [], "with": []}
    shares: list[float] = []
    with precision_settings(spec):
        for r in range(args.rounds):
            for mode in ("without", "with") if r % 2 == 0 else ("with", "without"):
                ctx.telemetry = src if mode == "with" else None
                res = run_forward(ctx)
                assert res.median_s is not None
                times[mode].append(res.median_s)
                t = res.telemetry
                if t is not None and t.sampler_cpu_s is not None and t.window_s:
                    shares.append(t.sampler_cpu_s / t.window_s)
    src.close()
    a, b = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"{args.model} forward {args.batch}x{args.seq} {args.dtype}, {args.rounds} rounds x {args.repeats} repeats")
    print(f"  median phase time without the sampler: {a * 1e3:.3f} ms")
    print(f"  median phase time with the sampler:    {b * 1e3:.3f} ms")
    print(f"  difference: {(b - a) / a:+.2%} of the phase (goal: below 1%; noise of the same size either way)")
    if shares:
        print(f"  sampler thread CPU time over the phase window: median {statistics.median(shares):.3%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000, help="samples per CPU-time measurement")
    ap.add_argument("--gpu", action="store_true", help="also measure real NVML and a real GPU phase")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    fake = NvmlSource(_fake_nvml(), "h0", "fake", owns_init=False)
    _report_sampler("fake NVML (the sampler's Python cost)", per_sample_cpu_s(fake, args.samples))
    if args.gpu:
        gpu_phase(args)


if __name__ == "__main__":
    main()
