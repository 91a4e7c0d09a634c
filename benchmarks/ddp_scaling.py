"""DDP train scaling: step time, total tokens/s, efficiency and all-reduce share for world_size 1..N.

    python benchmarks/ddp_scaling.py --model gpt2 --batch 1 --seq 256 --max-world 2          # CPU, gloo
    python benchmarks/ddp_scaling.py --device cuda --model gpt2 --batch 8 --seq 1024         # every GPU, NCCL

Each world size runs the farm's own DDP rank (`farm.engine.distributed.train_rank`, the code
behind `--world-size`) in one process per device; world 1 is one process without DDP. Every world
uses the same per-device batch and, on the CPU, the same threads per process (default
max(1, cores // max world)), so efficiency = t1 / tN is weak scaling. all-reduce share =
1 - t(no_sync) / t(synced): the gradient communication backward did not hide. Prints a table
(and `--json PATH` writes the figures). Name the machine beside any figure you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from farm.engine.distributed import TRAIN_TARGET, launch, rank_devices
from farm.engine.hardware import fingerprint
from farm.spec import parse_spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="gpt2-tiny")
    ap.add_argument("--batch", type=int, default=1, help="per device")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-world", type=int, default=None, help="default: every GPU, or 2 CPU processes")
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads per process")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    if a.device == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            print("no CUDA device: nothing to measure (use --device cpu)", file=sys.stderr)
            return 2
        top = a.max_world or count
        if top > count:
            print(f"--max-world {top}: only {count} GPU(s) here", file=sys.stderr)
            return 2
        threads = None
        where = ", ".join(torch.cuda.get_device_name(i) for i in range(top))
    else:
        top = a.max_world or 2
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = a.threads or max(1, cores // top)
        where = f"{fingerprint(with_torch=False).cpu_model}, {cores} cores, {threads} thread(s) per process"
    spec = parse_spec(
        {
            "model": a.model, "batch": a.batch, "seq": a.seq, "dtype": a.dtype, "repeats": a.repeats,
            "warmup": a.warmup, "phases": ["train"], "devices": [a.device], "threads": threads,
        }
    )  # fmt: skip
    print(f"DDP scaling: {spec.model_name}, batch {a.batch} per device x seq {a.seq}, {a.dtype}, on {where}")
    rows: list[dict[str, Any]] = []
    t1: float | None = None
    with tempfile.TemporaryDirectory(prefix="farm-ddp-bench-") as tmp:
        for n in range(1, top + 1):
            devices = rank_devices(a.device, n)
            outs = launch(
                TRAIN_TARGET, {"spec": spec.model_dump(mode="json")}, devices=devices, threads=threads,
                workdir=Path(tmp) / f"w{n}",
            )  # fmt: skip
            step = statistics.median(outs[0]["times_s"])
            t1 = t1 or step
            no_sync = outs[0].get("no_sync_times_s") or []
            share = max(0.0, 1 - statistics.median(no_sync) / step) if no_sync else None
            row = {
                "world_size": n,
                "backend": "nccl" if a.device == "cuda" else "gloo",
                "step_s": step,
                "tokens_per_s": n * a.batch * a.seq / step,
                "efficiency": t1 / step,
                "allreduce_share": share,
                "times_s": outs[0]["times_s"],
            }
            rows.append(row)
            allreduce = f"{share:6.1%}" if share is not None else "     -"
            print(
                f"  world {n:2d} ({row['backend']}): step {step * 1e3:9.2f} ms  {row['tokens_per_s']:12,.0f} tokens/s  "
                f"efficiency {row['efficiency']:6.1%}  all-reduce {allreduce}"
            )
    if a.json:
        doc = {"model": spec.model_name, "batch": a.batch, "seq": a.seq, "dtype": a.dtype, "on": where, "rows": rows}
        a.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
