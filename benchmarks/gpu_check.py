"""The seed's experiment on one GPU and on the host CPU, checked: one command, one table.

    python benchmarks/gpu_check.py --out out/gpu_check            # GPU machine: GPT-2 small, 8 x 1024
    python benchmarks/gpu_check.py --model gpt2-tiny --cpu-batch 1 --cpu-seq 64   # a CPU-only smoke run

Rows (each wrapped: one failure becomes a `failed` row, never the end of the table):
- CUDA, GPT-2 small, batch x seq: init / forward x repeats / train x repeats in float32 with TF32 off
  ("highest"), float32 with TF32 on ("high"), bfloat16 autocast and bfloat16 cast weights;
- CUDA forward timed WITHOUT synchronisation (what the seed's 0.03 s was): farm flags it `invalid`;
- CUDA GPT-2 xl training memory: predicted first, the batch chosen to fit, then measured;
- the host CPU: the same phases in float32 (bfloat16 too when the CPU has AMX or AVX512-BF16), shape
  reduced by --cpu-batch / --cpu-seq / --cpu-*-repeats.
Without CUDA the CUDA rows are skipped with a message. The table goes to stdout at the end and,
after every row, to --out as gpu_check.json and gpu_check.md (a killed run keeps what it had).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from farm.engine.hardware import fingerprint
from farm.engine.phases import JobContext, precision_settings, run_forward
from farm.engine.runner import peak_for, run_job
from farm.engine.timing import Timer
from farm.flops import predict_memory
from farm.results.result import JobResult, PhaseResult
from farm.spec import BenchSpec

GIB = 1 << 30


@dataclass
class Row:
    """One line of the table: a phase of one configuration on one device."""

    device: str
    model: str
    shape: str  # "BxT"
    precision: str  # e.g. "fp32 (tf32 off)", "bf16 autocast"
    phase: str
    timer: str = "sync"  # "sync" or "NO SYNC"
    repeats: int = 0
    median_s: float | None = None
    total_s: float | None = None  # sum of the timed repeats (the seed's "5 repeats" figure)
    tflops: float | None = None
    mfu: float | None = None
    peak: str | None = None
    mem_gib: float | None = None
    pred_gib: float | None = None
    status: str = "ok"
    note: str = ""


class Table:
    """Rows, written to --out after each one so that a killed run keeps its table."""

    def __init__(self, out: Path | None) -> None:
        self.rows: list[Row] = []
        self.messages: list[str] = []
        self.out = out
        self.meta: dict[str, object] = {}

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {_line(row)}", flush=True)
        self.save()

    def say(self, msg: str) -> None:
        self.messages.append(msg)
        print(msg, flush=True)
        self.save()

    def markdown(self) -> str:
        cols = "device|model|BxT|precision|phase|timer|n|median s|total s|TFLOP/s|MFU|mem GiB|pred GiB|status|note"
        head = "| " + " | ".join(cols.split("|")) + " |"
        lines = [head, "|" + "---|" * 15]
        lines += [f"| {_line(r)} |" for r in self.rows]
        lines += ["", *[f"- {m}" for m in self.messages]]
        return "\n".join(lines)

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        doc = {"meta": self.meta, "messages": self.messages, "rows": [asdict(r) for r in self.rows]}
        (self.out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(self.markdown() + "\n")


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _line(r: Row) -> str:
    cells = [
        r.device,
        r.model,
        r.shape,
        r.precision,
        r.phase,
        r.timer,
        str(r.repeats),
        _f(r.median_s, ".4g"),
        _f(r.total_s, ".4g"),
        _f(r.tflops, ".4g"),
        "-" if r.mfu is None else f"{100 * r.mfu:.1f}%",
        _f(r.mem_gib, ".2f"),
        _f(r.pred_gib, ".2f"),
        r.status,
        r.note.replace("|", "/")[:160],
    ]
    return " | ".join(cells)


def _phase_row(base: Row, pr: PhaseResult) -> Row:
    row = Row(**{**asdict(base), "phase": pr.name})
    row.repeats = len(pr.times_s)
    row.median_s = pr.median_s
    row.total_s = sum(pr.times_s) if pr.times_s else None
    row.tflops = pr.achieved_flops / 1e12 if pr.achieved_flops else None
    row.mfu = pr.mfu
    row.peak = pr.peak_source
    row.mem_gib = pr.peak_memory_bytes / GIB if pr.peak_memory_bytes else None
    row.pred_gib = pr.predicted_memory_bytes / GIB if pr.predicted_memory_bytes else None
    row.status = pr.status
    notes = [f"{k}={v:.3g}" for k, v in pr.breakdown.items()]
    if pr.invalid_reason:
        notes.insert(0, "INVALID: " + pr.invalid_reason.split(";")[0])
    row.note = ", ".join(notes)
    return row


def guarded(table: Table, base: Row, fn: Callable[[], None]) -> None:
    """Run one row's work; any exception becomes a `failed` row with its message."""
    try:
        fn()
    except Exception as e:  # a benchmark table keeps going: the failure is a row
        traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        table.add(Row(**{**asdict(base), "status": "failed", "note": f"{type(e).__name__}: {msg}"}))
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_spec_rows(table: Table, spec: BenchSpec, base: Row) -> JobResult:
    """Run every phase of `spec` through farm's own runner and add one row per phase."""
    result = run_job(spec.expand()[0])
    for pr in result.phases.values():
        table.add(_phase_row(base, pr))
    if result.status not in ("ok", "invalid") or not result.phases:
        err = (result.error or "").strip().splitlines()
        table.add(Row(**{**asdict(base), "phase": "job", "status": result.status, "note": err[0] if err else ""}))
    return result


def unsynced_forward(table: Table, spec: BenchSpec, base: Row) -> None:
    """The forward timed with a clock that does not wait for the GPU (the seed's mistake)."""
    device = torch.device("cuda")
    with precision_settings(spec) as prec:
        ctx = JobContext(spec=spec, device=device, timer=Timer(sync=lambda: None), peak=None)
        ctx.peak = peak_for(spec, device, int(prec["threads"]))
        pr = run_forward(ctx)
        torch.cuda.synchronize()  # drain what the unsynchronised timer left queued
    ctx.model = None
    table.add(_phase_row(Row(**{**asdict(base), "timer": "NO SYNC"}), pr))


def xl_memory(table: Table, args: argparse.Namespace) -> None:
    """GPT-2 xl training memory: predict, choose the largest batch predicted to fit, measure."""
    free, total = torch.cuda.mem_get_info()
    batch = None
    lines = []
    for b in (8, 4, 2, 1):
        s = BenchSpec(model=args.xl_model, batch=b, seq=args.seq, matmul_precision="high", devices=("cuda",))
        pred = predict_memory(s, "train")
        lines.append(f"b={b}: {pred.total / GIB:.1f}")
        if batch is None and pred.total <= args.xl_fill * free:
            batch = b
    table.say(
        f"{args.xl_model} train memory predicted (GiB) {', '.join(lines)}; GPU free {free / GIB:.1f} of "
        f"{total / GIB:.1f} GiB; chosen batch {batch} (prediction <= {args.xl_fill:.0%} of free)"
    )
    if batch is None:
        table.say(f"{args.xl_model}: no batch predicted to fit; xl row skipped")
        return
    spec = BenchSpec(
        model=args.xl_model,
        batch=batch,
        seq=args.seq,
        repeats=1,
        warmup=1,
        matmul_precision="high",
        phases=("train",),
        devices=("cuda",),
    )
    base = Row(
        device=_gpu_name(), model=args.xl_model, shape=f"{batch}x{args.seq}", precision="fp32 (tf32 on)", phase="train"
    )
    run_spec_rows(table, spec, base)


def _gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"


def _cpu_has_bf16() -> bool:
    flags = set(fingerprint(with_torch=False).cpu_flags)
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def cuda_rows(table: Table, args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        table.say(
            f"CUDA is not available here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}): "
            "CUDA rows skipped"
        )
        return
    name = _gpu_name()
    table.meta["gpu"] = name
    shape = f"{args.batch}x{args.seq}"
    common = {"model": args.model, "batch": args.batch, "seq": args.seq, "devices": ("cuda",)}
    configs: list[tuple[str, dict[str, object]]] = [
        ("fp32 (tf32 off)", {"dtype": "float32", "matmul_precision": "highest"}),
        ("fp32 (tf32 on)", {"dtype": "float32", "matmul_precision": "high"}),
        ("bf16 autocast", {"dtype": "bfloat16", "precision_mode": "autocast"}),
        ("bf16 cast", {"dtype": "bfloat16", "precision_mode": "cast"}),
    ]
    for label, extra in configs:
        spec = BenchSpec(**common, repeats=args.repeats, warmup=args.warmup, **extra)  # type: ignore[arg-type]
        base = Row(device=name, model=args.model, shape=shape, precision=label, phase="all")
        guarded(table, base, lambda spec=spec, base=base: run_spec_rows(table, spec, base))
    for label, extra in configs[0:1] + configs[2:3]:
        spec = BenchSpec(**common, repeats=args.repeats, warmup=args.warmup, phases=("forward",), **extra)  # type: ignore[arg-type]
        base = Row(device=name, model=args.model, shape=shape, precision=label, phase="forward")
        guarded(table, base, lambda spec=spec, base=base: unsynced_forward(table, spec, base))
    if not args.skip_xl:
        base = Row(device=name, model=args.xl_model, shape="?", precision="fp32 (tf32 on)", phase="train")
        guarded(table, base, lambda: xl_memory(table, args))


def compile_rows(table: Table, args: argparse.Namespace) -> None:
    """bf16 autocast + torch.compile on the GPU (last: compiling can take a minute or two)."""
    if not torch.cuda.is_available():
        return
    name = _gpu_name()
    spec = BenchSpec(
        model=args.model,
        batch=args.batch,
        seq=args.seq,
        devices=("cuda",),
        repeats=args.repeats,
        warmup=args.warmup,
        dtype="bfloat16",
        compile=True,
        phases=("forward", "train"),
    )
    base = Row(
        device=name,
        model=args.model,
        shape=f"{args.batch}x{args.seq}",
        precision="bf16 autocast + compile",
        phase="all",
    )
    guarded(table, base, lambda: run_spec_rows(table, spec, base))


def cpu_rows(table: Table, args: argparse.Namespace) -> None:
    cpu = fingerprint(with_torch=False).cpu_model
    table.meta["cpu"] = cpu
    shape = f"{args.cpu_batch}x{args.cpu_seq}"
    dtypes = ["float32"] + (["bfloat16"] if _cpu_has_bf16() else [])
    if len(dtypes) == 1:
        table.say("host CPU has no AMX / AVX512-BF16: bfloat16 CPU rows skipped (no fast bf16 matmul path)")
    for dtype in dtypes:
        common = {
            "model": args.model,
            "batch": args.cpu_batch,
            "seq": args.cpu_seq,
            "devices": ("cpu",),
            "dtype": dtype,
        }
        label = "fp32" if dtype == "float32" else "bf16 autocast"
        runs = [
            (("init", "forward"), args.cpu_repeats),
            (("train",), args.cpu_train_repeats),
        ]
        for phases, reps in runs:
            spec = BenchSpec(**common, phases=phases, repeats=reps, warmup=1)  # type: ignore[arg-type]
            base = Row(device=f"CPU {cpu}", model=args.model, shape=shape, precision=label, phase="/".join(phases))
            guarded(table, base, lambda spec=spec, base=base: run_spec_rows(table, spec, base))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2", help="model preset for the GPU and CPU rows (gpt2-tiny: smoke test)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cpu-batch", type=int, default=8)
    ap.add_argument("--cpu-seq", type=int, default=1024)
    ap.add_argument("--cpu-repeats", type=int, default=5, help="forward repeats on the CPU")
    ap.add_argument("--cpu-train-repeats", type=int, default=2, help="train steps on the CPU (each is slow)")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-cuda", action="store_true")
    ap.add_argument("--skip-xl", action="store_true")
    ap.add_argument("--xl-model", default="gpt2-xl")
    ap.add_argument("--xl-fill", type=float, default=0.85, help="largest share of free GPU memory to plan for")
    ap.add_argument("--gpu-compile", action="store_true", help="add a bf16 + torch.compile row (slow to compile)")
    ap.add_argument("--out", type=Path, default=None, help="directory for gpu_check.json and gpu_check.md")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    table = Table(args.out)
    table.meta.update(
        torch=torch.__version__, cuda=torch.version.cuda, threads=torch.get_num_threads(), argv=sys.argv[1:]
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.skip_cuda:
        table.say("CUDA rows skipped (--skip-cuda)")
    else:
        cuda_rows(table, args)
    if args.skip_cpu:
        table.say("CPU rows skipped (--skip-cpu)")
    else:
        cpu_rows(table, args)
    if args.gpu_compile and not args.skip_cuda:
        compile_rows(table, args)
    table.meta["wall_s"] = round(time.perf_counter() - t0, 1)
    table.say(f"gpu_check finished in {time.perf_counter() - t0:.1f} s")
    print("\n" + table.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
