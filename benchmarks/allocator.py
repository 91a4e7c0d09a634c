"""The CPU allocator's share of a GPT-2 step: glibc's defaults against farm's (large blocks kept).

    .venv/bin/python benchmarks/allocator.py                      # GPT-2 small 1 x 1024, fp32 and bf16
    .venv/bin/python benchmarks/allocator.py --model gpt2-tiny --seq 128 --rounds 2

The allocator is a property of the process (glibc reads `mallopt` for all of it), so the two
cannot be interleaved in one process: each round runs one child per setting, alternating
(`FARM_CPU_ALLOCATOR=default`, then farm's), each timing `--repeats` forward passes (inference mode)
and train steps (AdamW fused, the chunked LM-head loss) after two warm-up steps, the median kept.
The table gives the median over rounds of each and the ratio farm / default (below 1: faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, statistics, sys, time, torch
sys.path.insert(0, {root!r})
from farm.engine.allocator import tune_cpu_allocator
from farm.engine.model import GPT
from farm.engine.phases import TrainStep
import contextlib
alloc = tune_cpu_allocator()
torch.set_num_threads({threads})
torch.manual_seed(0)
dt = getattr(torch, {dtype!r})
m = GPT({model!r}, dtype=dt)
opt = torch.optim.AdamW(m.parameters(), lr=3e-4, fused=True)
tok = torch.randint(0, m.config.vocab_size, ({batch}, {seq} + 1))
step = TrainStep(m, opt, tok[:, :-1], tok[:, 1:], contextlib.nullcontext())
def fwd():
    with torch.inference_mode():
        m(tok[:, :-1])
def med(f, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
m.train(); step(); step()
train = med(step, {repeats})
m.eval(); fwd()
forward = med(fwd, {repeats})
print(json.dumps({{"allocator": alloc, "train": train, "forward": forward}}))
"""


def child(args: argparse.Namespace, dtype: str, setting: str) -> dict:
    env = {**os.environ, "FARM_CPU_ALLOCATOR": setting}
    code = CHILD.format(root=str(ROOT), threads=args.threads, dtype=dtype, model=args.model, batch=args.batch,
                        seq=args.seq, repeats=args.repeats)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from farm.engine.hardware import _cpu_info, fingerprint

    cpu, arch, _ = _cpu_info()
    core = fingerprint(with_torch=False).cpu_core or "core not in the table"
    print(f"{cpu} ({arch}, {core}), {args.threads} threads; {args.model} {args.batch} x {args.seq}")
    print(f"{args.rounds} rounds, each a child per setting in turn")
    print(f"{'dtype':10} {'phase':8} {'default s':>10} {'farm s':>8} {'farm/default':>13}")
    t0 = time.monotonic()
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        got: dict[str, list[dict]] = {"default": [], "kept": []}
        for _ in range(args.rounds):
            for setting in ("default", "kept"):
                got[setting].append(child(args, dtype, setting))
        for phase in ("forward", "train"):
            d = statistics.median(r[phase] for r in got["default"])
            k = statistics.median(r[phase] for r in got["kept"])
            print(f"{dtype:10} {phase:8} {d:10.3f} {k:8.3f} {k / d:13.2f}")
    print(f"allocator in the farm rows: {got['kept'][0]['allocator']}; {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
