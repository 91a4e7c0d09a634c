"""Where a CPU train step goes: the whole step, and each of its parts timed alone, interleaved.

    .venv/bin/python benchmarks/step_budget.py                          # GPT-2 small, 1 x 1024, fp32 and bf16
    .venv/bin/python benchmarks/step_budget.py --model gpt2-tiny --seq 128 --rounds 2

Each round times the step (farm.engine.phases.TrainStep: zero_grad, forward with the fused LM-head
loss, backward, fused AdamW; bf16 as weights cast, as benchmarks/cpu_roofline_goal.py runs it) and
then each part on its own, with the step's shapes and the model's own functions: the block's linears
(forward, dX and dW, x n_layer), attention forward + backward (x n_layer), the LM head and loss
forward + backward, GELU and layer norm forward + backward (each gradient returned, as the step's
are, not accumulated into a `.grad`), and the AdamW update. "rest" is the step
less the parts: residual adds, embeddings, autograd's bookkeeping. The table gives medians over
rounds, each part's share of the step, and for the GEMM parts their rate; the roofline's share goal
(benchmarks/cpu_roofline_goal.py) counts only GEMM time, so the non-GEMM rows are what keeps a step
below it. Pytest never times anything: tests/test_benchmarks.py runs this at GPT-2 tiny for shape only.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from farm.engine.allocator import tune_cpu_allocator
from farm.engine.attention import causal_attention
from farm.engine.hardware import _cpu_info, fingerprint
from farm.engine.linear import cpu_gemm, linear
from farm.engine.loss import lm_head_loss
from farm.engine.model import GPT
from farm.engine.phases import TrainStep
from farm.flops import train_flops
from farm.spec import PRESETS


def parts(model: GPT, batch: int, seq: int, dtype: torch.dtype) -> dict[str, tuple[Callable[[], None], int]]:
    """(run once, GEMM FLOPs) of each part of a train step, the step's shapes and dtype."""
    cfg = model.config
    L, C, V, nh, M = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_head, batch * seq
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    linears = [(leaf(M, k), leaf(n, k, scale=0.02), leaf(n)) for k, n in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C))]
    grads = [torch.randn(M, w.shape[0], generator=g).to(dtype) for _, w, _ in linears]

    def block_linears() -> None:
        for _ in range(L):
            for (x, w, b), dy in zip(linears, grads, strict=True):
                torch.autograd.grad(linear(x, w, b), (x, w, b), dy)

    qkv = leaf(batch, seq, 3, nh, C // nh)
    dout = torch.randn(batch, nh, seq, C // nh, generator=g).to(dtype)

    def attention() -> None:
        for _ in range(L):
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
            torch.autograd.grad(causal_attention(q, k, v), qkv, dout)

    h, wte, targets = leaf(M, C), leaf(V, C, scale=0.02), torch.randint(0, V, (M,), generator=g)

    def head_loss() -> None:
        torch.autograd.grad(lm_head_loss(h, wte, targets), (h, wte))

    hidden, dhidden = leaf(M, 4 * C), torch.randn(M, 4 * C, generator=g).to(dtype)

    def gelu() -> None:
        for _ in range(L):
            torch.autograd.grad(F.gelu(hidden, approximate="tanh"), hidden, dhidden)

    ln = torch.nn.LayerNorm(C).to(dtype)
    xs, dxs = leaf(M, C), torch.randn(M, C, generator=g).to(dtype)

    def layer_norm() -> None:
        for _ in range(2 * L + 1):
            torch.autograd.grad(ln(xs), (xs, *ln.parameters()), dxs)

    params = [p.detach().clone() for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def adamw() -> None:
        opt.step()

    block_flops = L * 3 * 2 * M * sum(w.shape[0] * w.shape[1] for _, w, _ in linears)
    return {
        "block linears (fwd, dX, dW)": (block_linears, block_flops),
        "attention fwd + bwd": (attention, 3 * 2 * 2 * L * batch * seq * seq * C // 2),  # causal half
        "LM head + loss fwd + bwd": (head_loss, 3 * 2 * M * C * V),
        "GELU fwd + bwd": (gelu, 0),
        "layer norm fwd + bwd": (layer_norm, 0),
        "AdamW (fused)": (adamw, 0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    alloc = tune_cpu_allocator()
    cpu, arch, _ = _cpu_info()
    core = fingerprint(with_torch=False).cpu_core or "core not in the table"
    print(f"{cpu} ({arch}, {core}), {args.threads} threads, torch {torch.__version__}")
    print(f"allocator: {alloc}; CPU GEMMs: {cpu_gemm()}")
    print(f"{args.model} {args.batch} x {args.seq}, train step, {args.rounds} rounds (median; first round warms up)")
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        dtype = getattr(torch, name)
        torch.manual_seed(0)
        model = GPT(args.model).to(dtype)
        model.train()
        tokens = torch.randint(0, model.config.vocab_size, (args.batch, args.seq + 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        step = TrainStep(model, opt, tokens[:, :-1], tokens[:, 1:], contextlib.nullcontext())
        cases: dict[str, tuple[Callable[[], None], int]] = {
            "step": (step, train_flops(model.config, args.batch, args.seq))
        }
        cases.update(parts(model, args.batch, args.seq, dtype))
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds + 1):
            for label, (run, _) in cases.items():
                t = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - t)
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        whole = med["step"]
        print(f"\n{name}: {'part':30} {'ms':>8} {'of step':>8} {'GFLOP/s':>8}")
        for label, (_, flops) in cases.items():
            rate = f"{flops / med[label] / 1e9:8.1f}" if flops else f"{'-':>8}"
            print(f"{'':{len(name) + 2}}{label:30} {med[label] * 1e3:8.1f} {med[label] / whole:8.2f} {rate}")
        rest = whole - sum(v for k, v in med.items() if k != "step")
        print(f"{'':{len(name) + 2}}{'rest (step less the parts)':30} {rest * 1e3:8.1f} {rest / whole:8.2f} {'-':>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
