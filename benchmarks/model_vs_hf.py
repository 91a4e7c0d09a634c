"""Our GPT-2 against Hugging Face transformers' GPT2LMHeadModel: same weights, shape, dtype, threads,
same process, interleaved (ours, peer, ours, peer, ...), medians and ratios.

    python benchmarks/model_vs_hf.py                           # GPT-2 small, 1 x 1024, 2 threads
    python benchmarks/model_vs_hf.py --cases forward --dtype bfloat16 --seq 256
    python benchmarks/model_vs_hf.py --compile --cases forward --model gpt2-tiny

Cases: `forward` (inference mode; per dtype: float32; bfloat16 with autocast over float32 weights
and with weights cast to bfloat16), `train` (one float32 step: zero_grad(set_to_none), loss,
backward, AdamW step: ours exactly as farm.engine.phases runs it, the peer as a user writes it) and
`optimizer` (AdamW alone on GPT-2's parameters: for-loop, foreach and fused implementations).
GFLOP/s use farm.flops (PaLM convention); "% peak" is against farm.engine.hardware.cpu_peak, the CPU's
theoretical (ISA) peak at the same threads (before issue 12: a measured 2048^3 matmul). A machine
shared with other work makes every figure noisy: the interleaving keeps the ratio fair, not the
absolute figure clean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from farm.engine.hardware import cpu_peak
from farm.engine.model import GPT, hf_state_dict
from farm.engine.phases import make_optimizer
from farm.flops import forward_flops, param_count, train_flops
from farm.spec import BenchSpec, ModelShape, resolve_model


def hf_model(shape: ModelShape) -> GPT2LMHeadModel:
    """transformers' GPT-2 with the same shape, SDPA attention, no dropout, no KV cache."""
    cfg = GPT2Config(
        vocab_size=shape.vocab_size,
        n_positions=shape.block_size,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(cfg)


def ours_from(hf: GPT2LMHeadModel, shape: ModelShape) -> GPT:
    """Our model holding the peer's weights (so both compute the same function)."""
    model = GPT(shape)
    missing, unexpected = model.load_state_dict(hf_state_dict(hf.state_dict()), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    assert model.lm_head.weight is model.wte.weight
    return model


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time each callable `repeats` times, alternating between them (ABAB), after `warmup` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        order = list(fns) if i % 2 == 0 else list(fns)[::-1]  # ABBA..., so neither always goes first
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return times


class Report:
    def __init__(self, peaks: dict[str, float]) -> None:
        self.rows: list[dict[str, Any]] = []
        self.peaks = peaks

    def add(self, case: str, impl: str, times: list[float], flops: int, dtype: str, ratio: float | None) -> None:
        med = statistics.median(times)
        gflops = flops / med / 1e9 if flops else None
        peak = self.peaks.get(dtype)
        row = {
            "case": case,
            "impl": impl,
            "n": len(times),
            "median_s": med,
            "min_s": min(times),
            "max_s": max(times),
            "gflops": gflops,
            "pct_peak": 100 * gflops * 1e9 / peak if (gflops and peak) else None,
            "ratio_ours_over_peer": ratio,
        }
        self.rows.append(row)
        print(_fmt(row), flush=True)

    def pair(self, case: str, times: dict[str, list[float]], flops: int, dtype: str) -> None:
        ratio = statistics.median(times["ours"]) / statistics.median(times["peer"])
        self.add(case, "ours", times["ours"], flops, dtype, ratio)
        self.add(case, "peer (transformers)", times["peer"], flops, dtype, None)


HEADER = (
    f"{'case':34s} {'impl':22s} {'n':>3s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'GFLOP/s':>8s} "
    f"{'% peak':>7s} {'ours/peer':>9s}"
)


def _fmt(r: dict[str, Any]) -> str:
    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    return (
        f"{r['case']:34s} {r['impl']:22s} {r['n']:3d} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['max_s']:8.3f} "
        f"{f(r['gflops'], '8.1f')} {f(r['pct_peak'], '6.1f')}% {f(r['ratio_ours_over_peer'], '9.3f')}"
    )


def forward_cases(args: argparse.Namespace, shape: ModelShape, hf: GPT2LMHeadModel, ours: GPT, rep: Report) -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, shape.vocab_size, (args.batch, args.seq), generator=g)
    flops = forward_flops(shape, args.batch, args.seq)
    hf.eval()
    ours.eval()
    with torch.inference_mode():
        diff = (ours(idx)[0] - hf(input_ids=idx).logits).abs().max().item()
    print(f"parity: float32 logits max |ours - peer| = {diff:.2e}", flush=True)
    for dtype in args.dtype:
        if dtype == "float32":
            variants = [("forward fp32", ours, hf, None)]
        else:
            tdt = getattr(torch, dtype)
            variants = []
            if "autocast" in args.bf16_modes:
                variants.append((f"forward {dtype} autocast", ours, hf, tdt))
            if "cast" in args.bf16_modes:
                ours_c = ours_from(hf, shape).to(tdt).eval()
                hf_c = hf_model(shape).to(tdt).eval()
                hf_c.load_state_dict(hf.state_dict())
                variants.append((f"forward {dtype} cast", ours_c, hf_c, None))
        for case, m_ours, m_hf, amp_dtype in variants:

            def run(m: Callable[[], Any], amp_dtype: torch.dtype | None = amp_dtype) -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
                    m()

            fns = {
                "ours": lambda m=m_ours, run=run: run(lambda: m(idx)),
                "peer": lambda m=m_hf, run=run: run(lambda: m(input_ids=idx)),
            }
            rep.pair(case, interleaved(fns, args.repeats, args.warmup), flops, dtype)
            if args.compile:
                compile_case(args, case, m_ours, m_hf, idx, amp_dtype, flops, dtype, rep)


def compile_case(
    args: argparse.Namespace,
    case: str,
    m_ours: GPT,
    m_hf: GPT2LMHeadModel,
    idx: torch.Tensor,
    amp_dtype: torch.dtype | None,
    flops: int,
    dtype: str,
    rep: Report,
) -> None:
    """torch.compile both models: compile time reported apart, then steady state interleaved."""
    c_ours, c_hf = torch.compile(m_ours), torch.compile(m_hf)

    def run(m: Callable[[], Any]) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            m()

    for name, fn in (("ours", lambda: run(lambda: c_ours(idx))), ("peer", lambda: run(lambda: c_hf(input_ids=idx)))):
        t0 = time.perf_counter()
        fn()
        print(f"compile: {case} {name}: first call (compile) {time.perf_counter() - t0:.1f} s", flush=True)
    # Compiled and eager interleaved in one loop, so the speed-up is not a change of machine load.
    fns = {
        "ours": lambda: run(lambda: c_ours(idx)),
        "peer": lambda: run(lambda: c_hf(input_ids=idx)),
        "ours eager": lambda: run(lambda: m_ours(idx)),
        "peer eager": lambda: run(lambda: m_hf(input_ids=idx)),
    }
    times = interleaved(fns, args.repeats, args.warmup)
    rep.pair(case + " +compile", times, flops, dtype)
    for name in ("ours", "peer"):
        speedup = statistics.median(times[f"{name} eager"]) / statistics.median(times[name])
        rep.add(case + " eager (same loop)", name, times[f"{name} eager"], flops, dtype, None)
        print(f"compile: {case} {name}: steady-state speed-up eager/compiled = {speedup:.3f}", flush=True)


def train_case(args: argparse.Namespace, shape: ModelShape, hf: GPT2LMHeadModel, ours: GPT, rep: Report) -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, shape.vocab_size, (args.batch, args.seq + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]  # ours: next-token targets, (B, T) each
    hf.train()
    ours.train()
    spec = BenchSpec(model=shape, batch=args.batch, seq=args.seq)
    opt_ours = make_optimizer(spec, ours, torch.device("cpu"))  # what farm's train phase uses
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=3e-4)  # a user's default AdamW (for-loop on CPU)
    losses: dict[str, list[torch.Tensor]] = {"ours": [], "peer": [], "before": []}

    def step_ours() -> None:  # exactly farm.engine.phases.run_train's step (float32: no autocast, no scaler)
        opt_ours.zero_grad(set_to_none=True)
        _, loss = ours(x, y, return_logits=False)
        loss.backward()
        opt_ours.step()
        losses["ours"].append(loss.detach())

    # The step as the farm ran it before issue 8: full logits + F.cross_entropy, foreach AdamW.
    before = ours_from(hf, shape).train()
    opt_before = torch.optim.AdamW(before.parameters(), lr=3e-4, foreach=True)

    def step_before() -> None:
        opt_before.zero_grad(set_to_none=True)
        _, loss = before(x, y)
        loss.backward()
        opt_before.step()
        losses["before"].append(loss.detach())

    def step_hf() -> None:
        opt_hf.zero_grad(set_to_none=True)
        loss = hf(input_ids=x, labels=x).loss  # transformers shifts the labels itself: T-1 targets
        loss.backward()
        opt_hf.step()
        losses["peer"].append(loss.detach())

    fns = {"ours": step_ours, "peer": step_hf}
    if args.train_before:
        fns["before"] = step_before
    times = interleaved(fns, args.train_repeats, args.warmup)
    flops = train_flops(shape, args.batch, args.seq)
    rep.pair("train step fp32 (AdamW)", times, flops, "float32")
    if "before" in times:
        ratio = statistics.median(times["before"]) / statistics.median(times["peer"])
        rep.add("train step fp32 (AdamW)", "ours before issue 8", times["before"], flops, "float32", ratio)
    print(
        f"train: ours optimizer {type(opt_ours).__name__}({_opt_impl(opt_ours)}) + chunked LM-head loss; "
        f"'before': full logits + F.cross_entropy, AdamW(foreach); peer AdamW(default: {_opt_impl(opt_hf)}); "
        f"first losses ours {float(losses['ours'][0]):.5f} before "
        f"{float(losses['before'][0]) if losses['before'] else float('nan'):.5f} "
        f"peer {float(losses['peer'][0]):.5f} (peer: T-1 targets)",
        flush=True,
    )


def _opt_impl(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    if d.get("fused"):
        return "fused"
    return "foreach" if d.get("foreach") else "for-loop (foreach=None on CPU)"


def optimizer_case(args: argparse.Namespace, shape: ModelShape, rep: Report) -> None:
    """AdamW alone on GPT-2's parameter shapes: which implementation is fastest on this CPU."""
    model = GPT(shape)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    impls = {
        "for-loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }
    opts = {}
    for name, kw in impls.items():
        try:
            opts[name] = torch.optim.AdamW(model.parameters(), lr=3e-4, **kw)
            opts[name].step()
        except (RuntimeError, TypeError) as e:
            print(f"optimizer: AdamW {name} not available: {e}", flush=True)
            opts.pop(name, None)
    times = interleaved({k: o.step for k, o in opts.items()}, args.repeats, 1)
    base = statistics.median(times["foreach"]) if "foreach" in times else None
    for name, t in times.items():
        ratio = statistics.median(t) / base if base else None
        rep.add(f"AdamW step alone ({param_count(shape) / 1e6:.0f}M params)", name, t, 0, "float32", ratio)
    print("optimizer: ratio column = time / foreach time", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5, help="timed forwards per implementation")
    ap.add_argument("--train-repeats", type=int, default=3, help="timed training steps per implementation")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32,bfloat16", help="forward dtypes, comma-separated")
    ap.add_argument("--bf16-modes", default="autocast,cast", help="how a low dtype is applied: autocast,cast")
    ap.add_argument("--cases", default="forward,train,optimizer", help="forward,train,optimizer")
    ap.add_argument("--no-train-before", dest="train_before", action="store_false", help="skip the old-step row")
    ap.add_argument("--compile", action="store_true", help="also torch.compile both models (forward)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here as JSON")
    args = ap.parse_args(argv)
    args.dtype = [d.strip() for d in args.dtype.split(",") if d.strip()]
    args.bf16_modes = [d.strip() for d in args.bf16_modes.split(",") if d.strip()]
    cases = {c.strip() for c in args.cases.split(",")}

    torch.set_num_threads(args.threads)
    shape = resolve_model(args.model)
    # The CPU's theoretical peak (farm.results.peaks); NaN where its ISA or clock is not known.
    peaks = {d: (p.flops if (p := cpu_peak(d, "highest", args.threads)) else float("nan"))
             for d in {"float32", *args.dtype}}  # fmt: skip
    print(
        f"# {shape.name} batch {args.batch} x seq {args.seq}, {args.threads} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; theoretical peak: "
        + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items()),
        flush=True,
    )
    torch.manual_seed(0)
    hf = hf_model(shape)
    ours = ours_from(hf, shape)
    rep = Report(peaks)
    print(HEADER, flush=True)
    if "forward" in cases:
        forward_cases(args, shape, hf, ours, rep)
    if "train" in cases:
        train_case(args, shape, hf, ours, rep)
    if "optimizer" in cases:
        optimizer_case(args, shape, rep)
    print("\n" + HEADER)
    for r in rep.rows:
        print(_fmt(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model": shape.name, "batch": args.batch, "seq": args.seq, "threads": args.threads}
        args.json.write_text(json.dumps({"meta": meta, "peaks": peaks, "rows": rep.rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
