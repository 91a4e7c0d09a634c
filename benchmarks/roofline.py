"""This machine's CPU ceiling and the measured GEMM roofline of a model's shapes (docs/ceilings.md).

    .venv/bin/python benchmarks/roofline.py [--model gpt2] [--batch 8] [--seq 1024] [--threads N]
                                            [--dtype float32] [--matmul-precision highest]

Prints the theoretical peak (what an MFU is relative to and a result may not beat), each GEMM
shape of the model with its measured best FLOP/s and its share of the peak, and the 1-minute load
average before and the CPU time other processes used during the measurement. Where the clock the
OS names is uncertain and a shape ran faster than it allows, the peak is raised to the clock that
shape implies, as a farm job's ceiling is (`farm.engine.roofline.beside`), so no share is above
100%. Measures afresh (the farm's cache is not read or written).
"""

from __future__ import annotations

import argparse
import socket

import torch

from farm.engine.hardware import _cpu_info, cpu_clock, cpu_peak
from farm.engine.roofline import beside, measure_roofline, roofline_peak
from farm.spec import parse_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"])
    args = ap.parse_args()
    spec = parse_spec(
        {
            "model": args.model,
            "batch": args.batch,
            "seq": args.seq,
            "dtype": args.dtype,
            "matmul_precision": args.matmul_precision,
            "devices": "cpu",
        }
    )
    model, arch, flags = _cpu_info()
    clock, kind = cpu_clock()
    print(f"host {socket.gethostname()}: {model} ({arch}), flags {' '.join(flags) or '-'}")
    print(f"clock: {clock} MHz ({kind or 'not known'}); torch {torch.__version__}, {args.threads} threads")
    peak = cpu_peak(args.dtype, args.matmul_precision, args.threads)
    entry = measure_roofline(spec, args.threads)
    if peak is not None:
        peak = beside(peak, roofline_peak(entry, spec, args.threads), spec, args.threads)
    print(f"ceiling: {peak.source if peak else 'none (architecture or clock not known)'}")
    print(f"\n{'shape':<10} {'M x K x N':>20} {'rows timed':>10} {'GFLOP/s':>9} {'of peak':>8}")
    for label, s in entry["shapes"].items():
        share = f"{s['flops'] / peak.flops:.0%}" if peak else "-"
        dims = f"{s['m']}x{s['k']}x{s['n']}"
        print(f"{label:<10} {dims:>20} {s['rows']:>10} {s['flops'] / 1e9:>9.1f} {share:>8}")
    best = entry["flops"]
    share = f" = {best / peak.flops:.0%} of the ceiling" if peak else ""
    print(f"\nroofline (best shape, {entry['best']}): {best / 1e9:.1f} GFLOP/s{share}")
    print(
        f"load average (1 min) before: {entry['load_avg_1m']:.2f}; other processes used "
        f"{entry['other_cpu_s']:.2f} CPU s meanwhile{' (under load)' if entry['loaded'] else ''}"
    )


if __name__ == "__main__":
    main()
