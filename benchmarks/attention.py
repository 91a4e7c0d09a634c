"""Causal attention on a CPU: PyTorch's fused kernel against farm's blocked bf16 path, interleaved.

    .venv/bin/python benchmarks/attention.py                    # GPT-2 small's layer: 1 x 12 heads x 1024 x 64
    .venv/bin/python benchmarks/attention.py --batch 8 --rounds 5

Each round times every case once, in turn (so a load that comes and goes hits all alike); the table
gives the median over rounds, the ratio blocked / fused (below 1: faster) and the largest error of
each against a float32 reference (the fused kernel on float32 copies of the same inputs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from farm.engine.allocator import tune_cpu_allocator
from farm.engine.attention import BLOCK_ROWS, blocked_causal
from farm.engine.hardware import _cpu_info, fingerprint


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    alloc = tune_cpu_allocator()
    cpu, arch, _ = _cpu_info()
    core = fingerprint(with_torch=False).cpu_core or "core not in the table"
    B, H, T, D = args.batch, args.heads, args.seq, args.head_size
    print(f"{cpu} ({arch}, {core}), {args.threads} threads, torch {torch.__version__}; allocator: {alloc}")
    print(f"attention {B} x {H} x {T} x {D}, causal; blocks of {BLOCK_ROWS} rows; {args.rounds} rounds")
    head = f"{'dtype':9} {'pass':12} {'fused ms':>9} {'blocked ms':>11} {'blocked/fused':>14}"
    print(f"{head} {'err fused':>10} {'err blocked':>12}")
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        dt = getattr(torch, name)
        torch.manual_seed(0)
        base = torch.randn(B, T, 3, H, D)
        ref = fused(*(base[:, :, i].transpose(1, 2) for i in range(3)))
        x = base.to(dt).requires_grad_()

        def qkv(x: torch.Tensor = x) -> tuple[torch.Tensor, ...]:
            return tuple(x[:, :, i].transpose(1, 2) for i in range(3))

        def forward(f: Callable[..., torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode():
                    f(*qkv())

            return run

        def both(f: Callable[..., torch.Tensor], x: torch.Tensor = x) -> Callable[[], None]:
            def run() -> None:
                f(*qkv()).sum().backward()
                x.grad = None

            return run

        with torch.inference_mode():
            errs = [(f(*qkv()).float() - ref).abs().max().item() for f in (fused, blocked_causal)]
        for label, wrap in (("forward", forward), ("fwd + bwd", both)):
            cases = {"fused": wrap(fused), "blocked": wrap(blocked_causal)}
            times: dict[str, list[float]] = {k: [] for k in cases}
            for f in cases.values():
                f()
            for _ in range(args.rounds):
                for k, f in cases.items():
                    t = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t)
            a, b = (statistics.median(times[k]) * 1e3 for k in ("fused", "blocked"))
            print(f"{name:9} {label:12} {a:9.2f} {b:11.2f} {b / a:14.2f} {errs[0]:10.2g} {errs[1]:12.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
