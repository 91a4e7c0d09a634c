"""Issue 17's CPU goal: GPT-2 forward and train step against the model-shape roofline, measured in one run.

    .venv/bin/python benchmarks/cpu_roofline_goal.py                # GPT-2 small, 1 x 1024, 2 threads
    .venv/bin/python benchmarks/cpu_roofline_goal.py --model gpt2-tiny --seq 128 --repeats 3 --json out.json

The roofline is the attainable GEMM rate of the model's own shapes: each GEMM the phase runs, timed in
the layout the phase runs it in (x @ W^T for a forward, dY @ W and dY^T @ X for a backward), best of
`--shape-repeats`, and FLOP-weighted: the rate at which all of the phase's GEMMs would run if each ran
at its best, sum(flops) / sum(flops / rate). A forward uses the 4 block shapes x n_layer and the LM
head; a train step adds each one's two backward GEMMs. It is measured just before and just after the
model (the higher of the two is the goal's denominator, so a noisy machine cannot flatter the model).

The model's figure is farm's FLOP count of the phase (PaLM convention, attention included, as in every
result) over its median time, exactly as farm.engine.phases times it (inference mode; AdamW fused, the
chunked LM-head loss). The peer is transformers' GPT2LMHeadModel in its faster attention mode for the
dtype (sdpa or eager, measured), same weights, interleaved with ours.

Goals: model / roofline >= 0.90 for each phase and dtype; never slower than the peer. bfloat16 runs only
where the CPU has a bf16 matmul path (AMX or AVX512_BF16): without it, bf16 has no hardware path and the
row says so instead of timing an emulation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import torch
import torch.nn.functional as F
from model_vs_hf import hf_model, interleaved, ours_from

from farm.engine.allocator import tune_cpu_allocator
from farm.engine.hardware import _cpu_info, cpu_peak, fingerprint
from farm.engine.linear import onednn_available, onednn_nt
from farm.engine.phases import TrainStep, make_optimizer
from farm.flops import forward_flops, train_flops
from farm.spec import ModelShape, parse_spec, resolve_model

GOAL_ROOFLINE = 0.90
GOAL_PEER = 1.0  # ours / peer time: at most
ROW_BLOCK = 512  # rows of a GEMM's output a block: farm.engine.model.LOGIT_BLOCK_ROWS


def gemm_shapes(shape: ModelShape, tokens: int, train: bool) -> list[tuple[str, str, int, int, int, int]]:
    """(label, kind, M, K, N, count) of the GEMMs of one forward (train: and its backward).
    kind: `fwd` x(M,K) @ W(N,K)^T; `dx` dY(M,N) @ W(N,K); `dw` dY(M,N)^T @ X(M,K)."""
    d, v, n = shape.n_embd, shape.vocab_size, shape.n_layer
    linears = [("qkv", d, 3 * d, n), ("attn proj", d, d, n), ("mlp fc", d, 4 * d, n), ("mlp proj", 4 * d, d, n)]
    linears.append(("lm head", d, v, 1))
    out = []
    for label, k, nn, count in linears:
        out.append((label, "fwd", tokens, k, nn, count))
        if train:
            out.append((label, "dx", tokens, k, nn, count))
            out.append((label, "dw", tokens, k, nn, count))
    return out


def time_gemm(kind: str, m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best FLOP/s of one GEMM in the layouts a phase may run it in: the whole GEMM, or (forward and
    dx, m above `ROW_BLOCK`) the same GEMM a block of output rows at a time; a weight gradient as
    dY^T X or as (X^T dY)^T; each through PyTorch's own GEMM and through oneDNN's linear; whichever
    is fastest. The model computes its inference LM head in row blocks (farm.engine.model), its bf16
    head gradient as X^T dY (farm.engine.loss) and, where MKL is slower (farm.engine.linear), its
    float32 linears on oneDNN, so the roofline must know those layouts and libraries too, or the
    model would beat its own ceiling."""
    w = torch.randn(n, k, dtype=dtype) * 0.02
    fns: list[Callable[[], object]] = []
    if kind == "fwd":
        x = torch.randn(m, k, dtype=dtype)
        fns.append(lambda: F.linear(x, w))
        out = torch.empty(m, n, dtype=dtype)
        fns.append(
            lambda: [torch.mm(x[s : s + ROW_BLOCK], w.t(), out=out[s : s + ROW_BLOCK]) for s in range(0, m, ROW_BLOCK)]
        )
    elif kind == "dx":
        dy = torch.randn(m, n, dtype=dtype)
        fns.append(lambda: torch.mm(dy, w))
        out = torch.empty(m, k, dtype=dtype)
        fns.append(
            lambda: [torch.mm(dy[s : s + ROW_BLOCK], w, out=out[s : s + ROW_BLOCK]) for s in range(0, m, ROW_BLOCK)]
        )
    if m <= ROW_BLOCK:
        fns = fns[:1]
    if kind == "dw":  # dY^T X, or its transpose X^T dY (the bf16 LM-head gradient runs that way)
        dy, x = torch.randn(m, n, dtype=dtype), torch.randn(m, k, dtype=dtype)
        fns += [lambda: torch.mm(dy.t(), x), lambda: torch.mm(x.t(), dy)]
    if onednn_available():  # the same products on oneDNN, which farm calls where MKL is slower
        if kind == "fwd":
            fns.append(lambda: onednn_nt(x, w))
        elif kind == "dx":
            fns.append(lambda: onednn_nt(dy, w.t()))
        else:
            fns += [lambda: onednn_nt(dy.t(), x.t()), lambda: onednn_nt(x.t(), dy.t())]
    best = float("inf")
    for fn in fns:
        fn()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def roofline(shape: ModelShape, tokens: int, dtype: torch.dtype, train: bool, repeats: int) -> dict[str, Any]:
    """The FLOP-weighted roofline of a phase's GEMMs and the best single one."""
    total_flops, total_time, best = 0.0, 0.0, 0.0
    rows = {}
    for label, kind, m, k, n, count in gemm_shapes(shape, tokens, train):
        rate = time_gemm(kind, m, k, n, dtype, repeats)
        flops = 2.0 * m * k * n * count
        total_flops += flops
        total_time += flops / rate
        best = max(best, rate)
        rows[f"{label} {kind}"] = rate
    return {"weighted": total_flops / total_time, "best": best, "shapes": rows}


def has_bf16_path() -> tuple[bool, str]:
    _, _, flags = _cpu_info()
    fast = [f for f in flags if f in ("amx_bf16", "avx512_bf16")]
    if fast:
        return True, ", ".join(fast)
    return False, "no AMX or AVX512_BF16: bf16 has no hardware path on this CPU"


def cases(args: argparse.Namespace, dtype_name: str) -> list[dict[str, Any]]:
    shape = resolve_model(args.model)
    dtype = getattr(torch, dtype_name)
    spec = parse_spec({"model": args.model, "batch": args.batch, "seq": args.seq, "dtype": dtype_name})
    tokens = args.batch * args.seq
    torch.manual_seed(0)
    hf = hf_model(shape)
    ours = ours_from(hf, shape)
    # bf16 on a CPU: weights cast (precision_mode auto -> cast, as farm runs it), the peer likewise.
    ours, hf = ours.to(dtype), hf.to(dtype)
    idx = torch.randint(0, shape.vocab_size, (args.batch, args.seq + 1))
    x, y = idx[:, :-1], idx[:, 1:]
    out = []

    # -- forward ------------------------------------------------------------------------------------
    ours.eval()
    hf.eval()
    modes: dict[str, Callable[[], object]] = {}
    for impl in ("sdpa", "eager"):
        hf.config._attn_implementation = impl
        with torch.inference_mode():
            hf(x)
            t0 = time.perf_counter()
            hf(x)
            modes[impl] = time.perf_counter() - t0  # type: ignore[assignment]
    peer_mode = min(modes, key=lambda m: modes[m])  # type: ignore[arg-type,return-value]
    hf.config._attn_implementation = peer_mode

    def fwd_ours() -> None:
        with torch.inference_mode():
            ours(x)

    def fwd_peer() -> None:
        with torch.inference_mode():
            hf(x)

    out.append(
        measure(
            args,
            "forward",
            dtype_name,
            shape,
            tokens,
            dtype,
            False,
            forward_flops(shape, args.batch, args.seq),
            fwd_ours,
            fwd_peer,
            peer_mode,
        )
    )

    # -- train step -----------------------------------------------------------------------------------
    ours.train()
    hf.train()
    opt_ours = make_optimizer(spec, ours, torch.device("cpu"))
    opt_peer = torch.optim.AdamW(hf.parameters(), lr=3e-4, fused=True)

    x_ours, y_ours = x.clone(), y.clone()  # the farm's own step object (farm.engine.phases.run_train)
    step_ours = TrainStep(ours, opt_ours, x_ours, y_ours, contextlib.nullcontext())

    def step_peer() -> None:  # as a user writes it
        opt_peer.zero_grad(set_to_none=True)
        loss = hf(x, labels=idx[:, :-1]).loss
        loss.backward()
        opt_peer.step()

    out.append(
        measure(
            args,
            "train step",
            dtype_name,
            shape,
            tokens,
            dtype,
            True,
            train_flops(shape, args.batch, args.seq),
            step_ours,
            step_peer,
            peer_mode,
        )
    )
    return out


def measure(
    args: argparse.Namespace,
    case: str,
    dtype_name: str,
    shape: ModelShape,
    tokens: int,
    dtype: torch.dtype,
    train: bool,
    flops: int,
    ours: Callable[[], None],
    peer: Callable[[], None],
    peer_mode: str,
) -> dict[str, Any]:
    load0 = psutil.getloadavg()[0]
    before = roofline(shape, tokens, dtype, train, args.shape_repeats)
    times = interleaved({"ours": ours, "peer": peer}, repeats=args.repeats, warmup=1)
    after = roofline(shape, tokens, dtype, train, args.shape_repeats)
    roof = max(before["weighted"], after["weighted"])
    best = max(before["best"], after["best"])
    med, med_peer = statistics.median(times["ours"]), statistics.median(times["peer"])
    achieved = flops / med
    row = {
        "case": case,
        "dtype": dtype_name,
        "median_s": med,
        "times_s": times["ours"],
        "achieved_flops": achieved,
        "roofline_flops": roof,
        "roofline_before": before["weighted"],
        "roofline_after": after["weighted"],
        "best_shape_flops": best,
        "of_roofline": achieved / roof,
        "of_best_shape": achieved / best,
        "peer_median_s": med_peer,
        "peer_mode": peer_mode,
        "ours_over_peer": med / med_peer,
        "load_avg_1m_before": load0,
        "load_avg_1m_after": psutil.getloadavg()[0],
        "shapes_before": before["shapes"],
    }
    row["verdict_roofline"] = "met" if row["of_roofline"] >= GOAL_ROOFLINE else "NOT MET"
    row["verdict_peer"] = "met" if row["ours_over_peer"] <= GOAL_PEER else "NOT MET"
    print(fmt(row), flush=True)
    return row


HEADER = (
    f"{'case':11s} {'dtype':9s} {'median s':>9s} {'GFLOP/s':>8s} {'roofline':>9s} {'of it':>6s} {'goal':>6s} "
    f"{'verdict':>8s} {'best shp':>8s} {'peer s':>8s} {'ours/peer':>9s} {'goal':>5s} {'verdict':>8s} {'load':>9s}"
)


def fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['case']:11s} {r['dtype']:9s} {r['median_s']:9.3f} {r['achieved_flops'] / 1e9:8.1f} "
        f"{r['roofline_flops'] / 1e9:9.1f} {r['of_roofline']:6.2f} {'>=' + format(GOAL_ROOFLINE, '.2f'):>6s} "
        f"{r['verdict_roofline']:>8s} {r['of_best_shape']:8.2f} {r['peer_median_s']:8.3f} {r['ours_over_peer']:9.2f} "
        f"{'<=1':>5s} {r['verdict_peer']:>8s} {r['load_avg_1m_before']:4.2f}/{r['load_avg_1m_after']:4.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shape-repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--json", type=Path, help="Write the rows (with per-shape rates) here.")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = tune_cpu_allocator()  # as a farm job does (farm.engine.runner): the peer runs under it too
    cpu, arch, _ = _cpu_info()
    core = fingerprint(with_torch=False).cpu_core or "core not in the table"
    bf16, why = has_bf16_path()
    peak = cpu_peak("float32", "highest", args.threads)
    print(
        f"machine: {cpu} ({arch}, {core}), {psutil.cpu_count(logical=False)} cores, {platform.node()}; "
        f"torch {torch.__version__}; allocator: {allocator or 'not glibc: as it is'}"
    )
    print(
        f"{args.model} {args.batch} x {args.seq}, {args.threads} threads; "
        f"bf16 path: {why if not bf16 else 'yes (' + why + ')'}"
    )
    print(f"theoretical fp32 ceiling: {peak.source if peak else 'not known'}\n")
    print(HEADER)
    rows: list[dict[str, Any]] = []
    skipped = []
    for dtype_name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        if dtype_name == "bfloat16" and not bf16:
            skipped.append(f"bfloat16: not measured ({why}); left to a machine that has one")
            continue
        rows.extend(cases(args, dtype_name))
    for s in skipped:
        print(s)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": cpu, "args": vars(args) | {"json": str(args.json)}, "rows": rows, "skipped": skipped},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
