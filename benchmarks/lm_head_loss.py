"""The LM head + cross-entropy of a training step, alone: unfused (full logits, F.cross_entropy) against
farm.engine.loss.lm_head_loss (chunked, gradients computed block by block), forward + backward, interleaved.

    python benchmarks/lm_head_loss.py                 # N = 1024 rows, C = 768, V = 50257, 2 threads
    python benchmarks/lm_head_loss.py --chunks 128,256,512,1024
    python benchmarks/lm_head_loss.py --dtype bfloat16 # under CPU autocast, as a bf16 train step runs it

Both do the same three matmuls (6·N·C·V FLOPs); the difference is memory traffic and fresh
page-faulted allocations of (N, V) float32 tensors. Prints medians, the ratio to the unfused path
and the largest difference of loss and gradients. In bfloat16 a `dW in blocks` row times the fused
loss with the head gradient accumulated block by block in float32 (WHOLE_GRAD_BYTES = 0) against
the default, one dW GEMM over every row.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from farm.engine import loss as loss_mod
from farm.engine.allocator import tune_cpu_allocator
from farm.engine.hardware import _cpu_info
from farm.engine.loss import lm_head_loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--chunks", default="128,256,512")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: under autocast")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    alloc = tune_cpu_allocator()  # what a job runs under (farm.engine.allocator)
    torch.manual_seed(0)
    N, C, V = args.rows, args.embd, args.vocab
    h = (torch.randn(N, C) * 0.5).requires_grad_()
    w = (torch.randn(V, C) * 0.02).requires_grad_()
    t = torch.randint(0, V, (N,))

    bf16 = args.dtype == "bfloat16"

    def unfused() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(F.linear(h, w), t)
        loss.backward()
        return loss

    def fused_with(c: int, whole_bytes: int) -> Callable[[], torch.Tensor]:
        def fused() -> torch.Tensor:
            loss_mod.WHOLE_GRAD_BYTES, saved = whole_bytes, loss_mod.WHOLE_GRAD_BYTES
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = lm_head_loss(h, w, t, chunk=c)
                loss.backward()
            finally:
                loss_mod.WHOLE_GRAD_BYTES = saved
            return loss

        return fused

    fns: dict[str, Callable[[], torch.Tensor]] = {"unfused": unfused}
    for c in [int(x) for x in args.chunks.split(",") if x]:
        fns[f"chunk {c}"] = fused_with(c, loss_mod.WHOLE_GRAD_BYTES)
        if bf16:
            fns[f"chunk {c}, dW in blocks"] = fused_with(c, 0)

    ref_loss = unfused().detach()
    ref_gh, ref_gw = h.grad.clone(), w.grad.clone()
    diffs = {}
    for name, fn in fns.items():
        h.grad = w.grad = None
        loss = fn()
        diffs[name] = max(
            (loss - ref_loss).abs().item(), (h.grad - ref_gh).abs().max().item(), (w.grad - ref_gw).abs().max().item()
        )
    times: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    for i in range(args.repeats):
        for name in list(fns) if i % 2 == 0 else list(fns)[::-1]:
            h.grad = w.grad = None
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    flops = 6 * N * C * V
    base = statistics.median(times["unfused"])
    print(
        f"# LM head + cross-entropy fwd+bwd, N={N} C={C} V={V}, {args.dtype}, {args.threads} threads, "
        f"{args.repeats} repeats"
    )
    print(f"# {_cpu_info()[0]}, torch {torch.__version__}; allocator: {alloc}")
    print(f"{'variant':24s} {'median s':>9s} {'GFLOP/s':>8s} {'/unfused':>9s} {'page faults':>12s} {'max |diff|':>11s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:24s} {med:9.3f} {flops / med / 1e9:8.1f} {med / base:9.3f} "
            f"{int(statistics.median(faults[name])):12d} {diffs[name]:11.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
