"""The measured GEMM roofline of a CPU job: the best GEMM of the model's own shapes, timed on the
library the model's linears run on (`farm.engine.linear`: oneDNN for float32 where MKL is slow),
cached per host, CPU, torch, threads, dtype, precision, shapes and library (docs/ceilings.md).
`cpu_ceiling` sets it beside the theoretical peak (`farm.engine.hardware.cpu_peak`) and raises
that peak where the GEMM ran faster than the clock the OS names allows. It runs in job processes,
which have torch loaded (through `farm.engine.linear`).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import torch

from farm.engine import hardware
from farm.engine.hardware import REMEASURE_LOADED_AFTER_S, _cpu_info, read_cache, write_cache
from farm.engine.hostlock import CpuSnapshot, host_load
from farm.engine.linear import fp32_onednn, onednn_nt, routed
from farm.paths import cache_dir
from farm.results.peaks import Peak, cores_used, cpu_theoretical_peak
from farm.spec import BenchSpec

ROOFLINE_TARGET_CALL_S = 0.05  # a shape's rows grow (x4, up to the model's) until one GEMM takes this long
ROOFLINE_SHAPE_BUDGET_S = 0.5  # timed calls per shape stop after this, once ROOFLINE_REPS are done
ROOFLINE_REPS = 3
ROOFLINE_START_ROWS = 16
ROOFLINE_MIN_ROWS = 256
ShapeProgress = Callable[[int, int], None]  # (shapes measured, shapes), before the first and after each


def roofline_shapes(spec: BenchSpec) -> list[tuple[str, int, int, int]]:
    """The model's GEMMs (label, M, K, N) for M = batch x seq tokens and d = n_embd."""
    m, d, v = spec.batch * spec.seq, spec.shape.n_embd, spec.shape.vocab_size
    return [
        ("qkv", m, d, 3 * d),
        ("attn proj", m, d, d),
        ("mlp fc", m, d, 4 * d),
        ("mlp proj", m, 4 * d, d),
        ("lm head", m, d, v),
    ]


def _roofline_file() -> Path:
    return cache_dir() / "roofline.json"


def _roofline_key(spec: BenchSpec, threads: int) -> str:
    cpu_model, _, _ = _cpu_info()
    shapes = ",".join(f"{m}x{k}x{n}" for _, m, k, n in roofline_shapes(spec))
    host = socket.gethostname()
    gemm = "onednn" if fp32_onednn() else "default"  # which library the float32 GEMMs are timed on
    return f"{host}|{cpu_model}|{torch.__version__}|{threads}|{spec.dtype}|{spec.matmul_precision}|{shapes}|{gemm}"


def _measure_shape(m: int, k: int, n: int, dtype: object) -> tuple[float, int]:
    """(best FLOP/s, rows used) of one GEMM shape: rows grow until a call takes ROOFLINE_TARGET_CALL_S."""
    rows = min(m, ROOFLINE_START_ROWS)
    # Constant operands: a GEMM's speed does not depend on the values (no denormals), and filling
    # a 768 x 50257 matrix with randn alone costs a third of a second.
    # float32 where the model's linears run on oneDNN (farm.engine.linear) is timed there too, or
    # the model would beat its roofline by half again (MKL's AVX2 kernels on an AMD CPU)
    probe = torch.empty(0, dtype=dtype)  # type: ignore[call-overload]
    on_onednn = dtype == torch.float32 and routed(probe, probe)
    # the right operand as each library takes it: a weight (n, k) for oneDNN's linear, (k, n) for mm
    rhs = torch.full((n, k) if on_onednn else (k, n), 0.5, dtype=dtype)  # type: ignore[call-overload]

    def gemm(a: torch.Tensor, out: torch.Tensor) -> None:
        if on_onednn:
            onednn_nt(a, rhs)
        else:
            torch.mm(a, rhs, out=out)

    while True:
        a = torch.full((rows, k), 0.5, dtype=dtype)  # type: ignore[call-overload]
        out = torch.empty(rows, n, dtype=dtype)  # type: ignore[call-overload]
        t0 = time.perf_counter()
        gemm(a, out)  # warm-up at this size: thread pool, packing buffers
        dt = time.perf_counter() - t0
        # Grow to a call of ROOFLINE_TARGET_CALL_S, and past ROOFLINE_MIN_ROWS where that stays in
        # twice the budget: a wide, short GEMM (the vocab head) is bound by reading its weights until M is.
        short = rows < ROOFLINE_MIN_ROWS and dt * 4 < 2 * ROOFLINE_SHAPE_BUDGET_S
        if rows >= m or (dt >= ROOFLINE_TARGET_CALL_S and not short):
            break
        rows = min(m, rows * 4)
    best, spent, reps = 0.0, 0.0, 0
    while reps < ROOFLINE_REPS or spent < min(ROOFLINE_SHAPE_BUDGET_S, 20 * max(dt, 1e-4)):
        t0 = time.perf_counter()
        gemm(a, out)
        dt = time.perf_counter() - t0
        spent += dt
        reps += 1
        if dt > 0:
            best = max(best, 2 * rows * k * n / dt)
        if spent >= ROOFLINE_SHAPE_BUDGET_S and reps >= 1:
            break
    return best, rows


def measure_roofline(spec: BenchSpec, threads: int, on_progress: ShapeProgress | None = None) -> dict[str, Any]:
    """Measure the best GEMM of the model's shapes now: the cache entry `roofline` stores.
    `on_progress(done, total)` hears 0 before the first shape and each shape as it ends."""
    tdtype = getattr(torch, spec.dtype)
    prev_threads, prev_prec = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(spec.matmul_precision)
    load_before = psutil.getloadavg()[0]
    start = CpuSnapshot.now()
    per_shape: dict[str, dict[str, float | int]] = {}
    shapes = roofline_shapes(spec)
    try:
        for i, (label, m, k, n) in enumerate(shapes):
            if on_progress is not None and i == 0:
                on_progress(0, len(shapes))
            rate, rows = _measure_shape(m, k, n, tdtype)
            per_shape[label] = {"flops": rate, "rows": rows, "m": m, "k": k, "n": n}
            if on_progress is not None:
                on_progress(i + 1, len(shapes))
    finally:
        torch.set_num_threads(prev_threads)
        torch.set_float32_matmul_precision(prev_prec)
    load = host_load(start, CpuSnapshot.now(), cores=threads)
    best_label = max(per_shape, key=lambda x: float(per_shape[x]["flops"]))
    return {
        "flops": float(per_shape[best_label]["flops"]),
        "best": best_label,
        "shapes": per_shape,
        "hostname": socket.gethostname(),
        "load_avg_1m": load_before,
        "other_cpu_s": load.other_cpu_s,
        "loaded": load.contended,
        "measured_at": time.time(),
    }


def _roofline_source(entry: dict[str, Any], spec: BenchSpec, threads: int) -> str:
    best = entry["best"]
    shape = entry["shapes"][best]
    rows = "" if shape["rows"] == shape["m"] else f", {shape['rows']} of its {shape['m']} rows"
    when = datetime.fromtimestamp(entry["measured_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    loaded = ", under load" if entry["loaded"] else ""
    return (
        f"measured: best GEMM of {len(entry['shapes'])} model shapes, best of {ROOFLINE_REPS}+ each: {best} "
        f"{shape['m']}x{shape['k']}x{shape['n']}{rows}; {threads} threads, {spec.dtype} {spec.matmul_precision}; "
        f"on {entry['hostname']} at load {entry['load_avg_1m']:.2f}{loaded}, {when}"
    )


def roofline_peak(entry: dict[str, Any], spec: BenchSpec, threads: int) -> Peak:
    """A measurement (`measure_roofline`, or a cache entry) as the Peak a ceiling is shown beside."""
    return Peak(flops=float(entry["flops"]), source=_roofline_source(entry, spec, threads))


def roofline(spec: BenchSpec, threads: int, refresh: bool = False, on_progress: ShapeProgress | None = None) -> Peak:
    """The measured GEMM roofline for a spec's CPU job, cached per host, CPU, torch, threads, dtype,
    precision and shapes. Measured when not cached, when `refresh`, or when the cached one was taken
    under load (others used the CPU meanwhile) more than REMEASURE_LOADED_AFTER_S ago; a new figure
    replaces the old unless it was itself taken under load and is lower."""
    key = _roofline_key(spec, threads)
    path = _roofline_file()
    cache = read_cache(path)
    old = cache.get(key)
    stale = (
        isinstance(old, dict)
        and old.get("loaded")
        and time.time() - old.get("measured_at", 0) > REMEASURE_LOADED_AFTER_S
    )
    if not isinstance(old, dict) or "flops" not in old or refresh or stale:
        new = measure_roofline(spec, threads, on_progress)
        if isinstance(old, dict) and "flops" in old and new["loaded"] and float(new["flops"]) <= old["flops"]:
            new = old
        cache[key] = new
        write_cache(path, cache)
        old = new
    return roofline_peak(old, spec, threads)


def cpu_ceiling(spec: BenchSpec, threads: int, on_progress: ShapeProgress | None = None) -> Peak | None:
    """The CPU ceiling of a spec's job (theoretical peak) with the measured GEMM roofline beside it
    (`on_progress` as in `measure_roofline`, when it is measured now)."""
    peak = hardware.cpu_peak(spec.dtype, spec.matmul_precision, threads)
    if peak is None:
        return None
    roof = roofline(spec, threads, on_progress=on_progress)
    return beside(peak, roof, spec, threads)


def beside(peak: Peak, roof: Peak, spec: BenchSpec, threads: int) -> Peak:
    """`peak` with the measured roofline `roof` beside it; an uncertain peak that the roofline beat
    raised to the lowest clock consistent with it (also what benchmarks/roofline.py prints)."""
    source = roof.source
    fp = hardware.fingerprint(with_torch=False)
    if roof.flops > peak.flops and peak.uncertain and fp.cpu_clock_mhz:
        # The clock the OS names is not the max (a VM's nominal clock; boost unseen): the GEMM ran faster
        # than that clock allows, so the ceiling uses the lowest clock consistent with it (50 MHz steps).
        implied = math.ceil(fp.cpu_clock_mhz * roof.flops / peak.flops / 50) * 50
        raised = cpu_theoretical_peak(
            flags=fp.cpu_flags, arch=fp.cpu_arch, cpu_id=fp.cpu_id, brand=fp.cpu_model,
            cores=cores_used(fp, threads), clock_mhz=implied,
            clock_kind="implied", dtype=spec.dtype, matmul_precision=spec.matmul_precision,
        )  # fmt: skip
        if raised is not None:
            source += f"; the OS names {fp.cpu_clock_mhz:g} MHz, slower than this GEMM ran"
            peak = raised
    return peak.model_copy(update={"roofline_flops": roof.flops, "roofline_source": source})
