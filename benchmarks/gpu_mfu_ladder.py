"""Issue 17's GPU goal: the MFU ladder of the GPT-2 small train step, one step per row, through farm itself.

    python3 benchmarks/gpu_mfu_ladder.py --out out/ladder            # a GPU machine: GPT-2 small, 16 x 1024
    python3 benchmarks/gpu_mfu_ladder.py --device cpu --model gpt2-tiny --batch 2 --seq 64 --repeats 2   # smoke

Each rung is a farm spec run by `farm.engine.runner.run_job` (the farm's own timing, FLOP count and
ceiling: the table GPU peak for the dtype and matmul precision), so the MFU printed is the one a farm
result would carry:

    fp32            float32, matmul_precision highest (strict fp32: the fp32 peak)
    tf32            float32, matmul_precision high (TF32 tensor cores: the TF32 peak)
    bf16            bfloat16 autocast (fp32 master weights; flash SDPA; fused AdamW): the bf16 peak
    bf16+compile    the same, torch.compile (compile time reported apart, not in the step)
    bf16+compile+pad  the vocabulary padded to a multiple of 128 (50257 -> 50304): the padded model
                    runs, but the FLOPs stay those of the real 50257-token head, so MFU is not flattered
    best            bf16+compile+pad at --best-batch (default: twice --batch), the "best" farm combination

--rungs picks rungs (benchmarks/gpu_run.sh, the one GPU call, climbs fp32,bf16,bf16+compile,best);
an unknown name is refused before anything runs. The goal is >= 50% bf16 MFU for the best rung on an
H100/H200 class GPU. A rung that fails (out of memory, compile error) is a failed row with its error,
never the end of the table. Rows are written to --out (ladder.json, ladder.md) after each rung.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.engine.runner import run_job
from farm.flops import train_flops
from farm.spec import ModelShape, parse_spec, resolve_model

GOAL_MFU = 0.50

RUNGS: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {"dtype": "float32", "matmul_precision": "highest"}),
    ("tf32", {"dtype": "float32", "matmul_precision": "high"}),
    ("bf16", {"dtype": "bfloat16", "precision_mode": "autocast", "matmul_precision": "high"}),
    ("bf16+compile", {"dtype": "bfloat16", "precision_mode": "autocast", "matmul_precision": "high", "compile": True}),
    ("bf16+compile+pad", {"dtype": "bfloat16", "precision_mode": "autocast", "matmul_precision": "high",
                          "compile": True, "pad": True}),
    ("best", {"dtype": "bfloat16", "precision_mode": "autocast", "matmul_precision": "high", "compile": True,
              "pad": True, "best": True}),
]  # fmt: skip


def padded(shape: ModelShape, multiple: int = 128) -> ModelShape:
    vocab = -(-shape.vocab_size // multiple) * multiple
    return ModelShape(**{**shape.dims(), "vocab_size": vocab, "name": f"{shape.name}-pad{vocab}"})


def rung(name: str, opts: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    opts = dict(opts)
    pad, best = opts.pop("pad", False), opts.pop("best", False)
    shape = resolve_model(args.model)
    batch = args.best_batch if best else args.batch
    model: str | dict[str, Any] = args.model
    if pad:
        model = padded(shape).model_dump()
    spec = parse_spec(
        {"model": model, "batch": batch, "seq": args.seq, "phases": "train", "devices": args.device,
         "repeats": args.repeats, "warmup": args.warmup, **opts}
    )  # fmt: skip
    if args.device == "cpu" and spec.dtype != "float32":  # the smoke run: CPU autocast bf16 is no ladder
        spec = spec.model_copy(update={"dtype": "float32"})
    t0 = time.perf_counter()
    result = run_job(spec.expand()[0])
    wall = time.perf_counter() - t0
    ph = result.phases.get("train")
    row: dict[str, Any] = {"rung": name, "batch": batch, "seq": args.seq, "dtype": spec.dtype,
                           "matmul_precision": spec.matmul_precision, "compile": spec.compile, "pad": pad,
                           "status": result.status, "error": result.error, "wall_s": wall}  # fmt: skip
    if ph is None or ph.stats is None:
        row["status"] = ph.status if ph else result.status
        row["error"] = (ph.error if ph else None) or result.error
        return row
    real = train_flops(shape, batch, args.seq)  # the real vocabulary's FLOPs, also for the padded model
    achieved = real / ph.stats.median_s
    row.update(
        step_s=ph.stats.median_s,
        tokens_per_s=batch * args.seq / ph.stats.median_s,
        achieved_tflops=achieved / 1e12,
        peak_tflops=ph.peak_flops / 1e12 if ph.peak_flops else None,
        peak_source=ph.peak_source,
        mfu=achieved / ph.peak_flops if ph.peak_flops else None,
        compile_s=ph.breakdown.get("compile_s"),
        peak_memory_gib=(ph.peak_memory_bytes or 0) / 2**30,
        status=ph.status,
        error=ph.error or ph.invalid_reason if ph.status not in ("ok",) else None,
    )
    return row


def markdown(rows: list[dict[str, Any]], gpu: str) -> str:
    out = [
        f"GPT-2 train step MFU ladder on {gpu}",
        "",
        "| rung | batch x seq | step s | tokens/s | TFLOP/s | peak TFLOP/s | MFU | compile s | memory GiB | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in rows:
        status = r["status"] if not r.get("error") else f"{r['status']}: {str(r['error'])[:80]}"
        out.append(
            f"| {r['rung']} | {r['batch']} x {r['seq']} | {f(r.get('step_s'), '.4f')} "
            f"| {f(r.get('tokens_per_s'), ',.0f')} "
            f"| {f(r.get('achieved_tflops'), '.1f')} | {f(r.get('peak_tflops'), '.0f')} | {f(r.get('mfu'), '.1%')} "
            f"| {f(r.get('compile_s'), '.1f')} | {f(r.get('peak_memory_gib'), '.1f')} | {status} |"
        )
    best = next((r for r in rows if r["rung"] == "best"), None)
    if best is not None:
        mfu = best.get("mfu")
        verdict = "met" if mfu is not None and mfu >= GOAL_MFU else "NOT MET"
        out += ["", f"goal: best rung >= {GOAL_MFU:.0%} bf16 MFU: {f(mfu, '.1%')} -> {verdict}"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--best-batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--rungs",
        default=",".join(n for n, _ in RUNGS),
        help="comma list of the rungs to run, in the ladder's order (default: all): " + ",".join(n for n, _ in RUNGS),
    )
    ap.add_argument("--out", type=Path, default=Path("out/ladder"))
    args = ap.parse_args(argv)
    wanted = {w.strip() for w in args.rungs.split(",") if w.strip()}
    known = [n for n, _ in RUNGS]
    unknown = sorted(wanted - set(known))
    if unknown or not wanted:  # a typo must not cost a GPU call: refused before anything runs
        ap.error(f"--rungs: unknown rung(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    args.best_batch = args.best_batch or 2 * args.batch
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = args.device
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: nothing to climb (run with --device cpu for a smoke run)")
            return 0
        gpu = torch.cuda.get_device_name(0)
    rows: list[dict[str, Any]] = []
    for name, opts in RUNGS:
        if name not in wanted:
            continue
        try:
            row = rung(name, opts, args)
        except Exception as e:  # one rung's failure is a row, not the end of the table
            row = {"rung": name, "batch": args.batch, "seq": args.seq, "status": "failed",
                   "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}  # fmt: skip
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
        (args.out / "ladder.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
        (args.out / "ladder.md").write_text(markdown(rows, gpu))
    print(markdown(rows, gpu))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
