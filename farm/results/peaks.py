"""Ceilings: the peak FLOP/s an MFU is relative to and a result may not beat (docs/ceilings.md).

Every device gets one where it can be had, and every MFU names it (`Peak.source`):

- a GPU in the table of published dense peaks (`GPU_PEAKS_TFLOPS`);
- another NVIDIA GPU: derived from its compute capability, SM count and max SM clock
  (`derived_gpu_peak`: FLOP per SM per cycle by compute capability, the non-halved rate where
  datacenter and consumer parts of one architecture differ, so the ceiling is an upper bound);
- a CPU: its theoretical peak, as HPL's Rpeak (`cpu_theoretical_peak`: cores used x FLOP per cycle
  per core x max clock), the FLOP per cycle from the core table (`farm.results.cpus`: by vendor,
  family and model, or Arm MIDR); a core not in it gets the ISA's upper bound, labelled "upper bound"
  (an MFU against it is a lower bound). When the max clock is not known the ceiling is uncertain
  (`Peak.tolerance` 2): a result above it is `unverified`, one more than 2x above is `invalid`.

No ceiling (AMD and unknown parts, a GPU without the facts to derive from): the phase is
`unverified` (`farm.results.result.measured_phase`).

Memory bandwidth (`Bandwidth`, the ceiling of decoding, docs/generation.md): a GPU's published
memory bandwidth from `GPU_BANDWIDTH_GBS`, exact; a CPU's read bandwidth measured on the machine
(`farm.engine.hardware.cpu_bandwidth`), uncertain (tolerance 2). Beside it the last-level cache
the check needs: a decode step moving less than CACHE_MARGIN x that cache may be served from it.
Pure functions; never imports torch.
"""

from __future__ import annotations

import re
from dataclasses import replace

from pydantic import BaseModel, ConfigDict

from farm.results.cpus import core_rate
from farm.results.machine import MAX_CPU_CORES, CpuId, GpuInfo, MachineFingerprint, gpu_tag

# Published dense peaks, TFLOP/s: fp32 (CUDA cores), tf32, bf16 and fp16 (tensor cores, dense).
# Keyed by GPU tag; a "-pcie" variant is chosen when the name says PCIe. Only datasheet figures
# known for sure; everything else is derived (the RTX 3090 and RTX 6000 Ada are left out on
# purpose: their tags also name the faster 3090 Ti and the Turing Quadro RTX 6000).
GPU_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "a100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    "a800": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},  # A100 compute
    "h100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "h100-pcie": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0},
    "h800": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},  # H100 compute
    "h800-pcie": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0},
    "h200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "gh200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},  # its H100 GPU
    "l4": {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0, "float16": 121.0},
    "l40": {"float32": 90.5, "tf32": 90.5, "bfloat16": 181.05, "float16": 181.05},
    "l40s": {"float32": 91.6, "tf32": 183.0, "bfloat16": 362.1, "float16": 362.1},
    "a10": {"float32": 31.2, "tf32": 62.5, "bfloat16": 125.0, "float16": 125.0},
    # Turing and Volta have no TF32 and no bf16 tensor cores: bf16 is bounded by the fp16 figure.
    "t4": {"float32": 8.1, "tf32": 8.1, "bfloat16": 65.0, "float16": 65.0},
    "v100": {"float32": 15.7, "tf32": 15.7, "bfloat16": 125.0, "float16": 125.0},
    "v100s": {"float32": 16.4, "tf32": 16.4, "bfloat16": 130.0, "float16": 130.0},
    # GeForce: fp16 with fp16 accumulate (330.3) is twice the fp32-accumulate rate (165.2); the
    # ceiling takes the larger, since cuBLAS may choose either.
    "rtx4090": {"float32": 82.6, "tf32": 82.6, "bfloat16": 165.2, "float16": 330.3},
}

# Dense FLOP per SM per clock cycle by compute capability: fp32 on CUDA cores (2 per FMA), tf32,
# bf16 and fp16 on tensor cores. Where an architecture has no tensor path for a dtype, its figure
# is the fastest path it has (bf16 on Volta/Turing: the fp16 figure, as the table does). Checked
# against the table (tests/test_ceilings.py): A100 312 TFLOP/s = 108 SM x 1410 MHz x 2048.
SM_FLOP_PER_CYCLE: dict[str, dict[str, int]] = {
    "6.0": {"float32": 128, "tf32": 128, "bfloat16": 256, "float16": 256},  # P100: 2x fp16 on CUDA cores
    "6.1": {"float32": 256, "tf32": 256, "bfloat16": 256, "float16": 256},  # Pascal consumer / P40
    "7.0": {"float32": 128, "tf32": 128, "bfloat16": 1024, "float16": 1024},  # V100
    "7.2": {"float32": 128, "tf32": 128, "bfloat16": 1024, "float16": 1024},  # Xavier
    "7.5": {"float32": 128, "tf32": 128, "bfloat16": 1024, "float16": 1024},  # Turing
    "8.0": {"float32": 128, "tf32": 1024, "bfloat16": 2048, "float16": 2048},  # A100
    # GA10x / AD10x / GB20x: consumer parts halve tensor rates with fp32 accumulate; not here.
    "8.6": {"float32": 256, "tf32": 512, "bfloat16": 1024, "float16": 1024},
    "8.7": {"float32": 256, "tf32": 512, "bfloat16": 1024, "float16": 1024},  # Orin
    "8.9": {"float32": 256, "tf32": 512, "bfloat16": 1024, "float16": 1024},
    "9.0": {"float32": 256, "tf32": 2048, "bfloat16": 4096, "float16": 4096},  # H100 / H200 / GH200
    "10.0": {"float32": 256, "tf32": 4096, "bfloat16": 8192, "float16": 8192},  # B200
    "12.0": {"float32": 256, "tf32": 512, "bfloat16": 1024, "float16": 1024},  # RTX 50xx, RTX PRO Blackwell
}
SHORT = {"float32": "fp32", "tf32": "tf32", "bfloat16": "bf16", "float16": "fp16"}
NOT_NVIDIA = ("amd", "radeon", "instinct", "intel", "arc ")  # names a CC table must not be applied to

# CPU: when the max clock is not known, results up to this x the ceiling are `unverified`, beyond `invalid`.
UNCERTAIN_TOLERANCE = 2.0
CPU_MAX_MHZ = 6500.0  # no shipping CPU boosts above this: the bound on a clock read from a file


class Peak(BaseModel):
    """The ceiling an MFU is relative to, where it came from, and the measured roofline beside it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flops: float
    source: str  # e.g. "table: h100 bfloat16 dense" or "theoretical: 2 cores x 32 FLOP/cycle ..."
    # A result above flops x tolerance is `invalid`; one above flops but within it `unverified`.
    # 1.0 for a ceiling that is known; UNCERTAIN_TOLERANCE when the CPU's max clock is not.
    tolerance: float = 1.0
    roofline_flops: float | None = None  # the best GEMM measured on this machine (CPU), shown beside
    roofline_source: str | None = None

    @property
    def uncertain(self) -> bool:
        return self.tolerance > 1.0

    @property
    def upper_bound(self) -> bool:
        """The ceiling may be above the device's true peak: an MFU against it is a lower bound."""
        return is_upper_bound(self.source)


UPPER_BOUND = "upper bound"


def is_upper_bound(source: str | None) -> bool:
    """Whether a stored peak source names an upper bound (an MFU against it is at least its value)."""
    return bool(source) and str(source).startswith(UPPER_BOUND)


def _key(dtype: str, matmul_precision: str) -> str:
    if dtype == "float32" and matmul_precision != "highest":
        return "tf32"  # TF32 tensor cores are allowed: the ceiling is theirs
    return dtype


def gpu_peak(name: str, dtype: str, matmul_precision: str) -> Peak | None:
    """Published dense peak of a GPU (by name) for the dtype actually used by its matmuls."""
    tag = gpu_tag(name)
    if f"{tag}-pcie" in GPU_PEAKS_TFLOPS and "pcie" in name.lower():
        tag = f"{tag}-pcie"
    table = GPU_PEAKS_TFLOPS.get(tag)
    if table is None:
        return None
    key = _key(dtype, matmul_precision)
    return Peak(flops=table[key] * 1e12, source=f"table: {tag} {key} dense")


def derived_gpu_peak(
    compute_capability: str, sm_count: int, max_sm_clock_mhz: float, dtype: str, matmul_precision: str
) -> Peak | None:
    """Dense peak of an NVIDIA GPU from its properties; None for a compute capability not known."""
    rates = SM_FLOP_PER_CYCLE.get(compute_capability)
    if rates is None or sm_count <= 0 or max_sm_clock_mhz <= 0:
        return None
    key = _key(dtype, matmul_precision)
    per = rates[key]
    sm = compute_capability.replace(".", "")
    source = f"derived: sm_{sm}, {sm_count} SM x {max_sm_clock_mhz:g} MHz x {per} FLOP/cycle {SHORT[key]} dense"
    return Peak(flops=sm_count * max_sm_clock_mhz * 1e6 * per, source=source)


def gpu_ceiling(gpu: GpuInfo, dtype: str, matmul_precision: str) -> Peak | None:
    """The table peak of a GPU, else one derived from its recorded properties, else None."""
    table = gpu_peak(gpu.name, dtype, matmul_precision)
    if table is not None:
        return table
    if any(w in gpu.name.lower() for w in NOT_NVIDIA):
        return None
    if gpu.compute_capability is None or gpu.sm_count is None or gpu.max_sm_clock_mhz is None:
        return None
    return derived_gpu_peak(gpu.compute_capability, gpu.sm_count, gpu.max_sm_clock_mhz, dtype, matmul_precision)


# -- CPU --------------------------------------------------------------------------------------
def cpu_theoretical_peak(
    *,
    flags: list[str] | tuple[str, ...],
    arch: str,
    cpu_id: CpuId | None = None,
    brand: str = "",
    cores: int,
    clock_mhz: float | None,
    clock_kind: str | None,
    dtype: str,
    matmul_precision: str,
) -> Peak | None:
    """The CPU's theoretical peak (HPL's Rpeak): cores used x FLOP/cycle/core x clock.

    `cores` is the count used, min(threads, physical cores). A clock that is not the max
    (`clock_kind` "current") makes the ceiling uncertain; a clock above CPU_MAX_MHZ is bounded.
    None when the architecture or the clock is not known.
    """
    if clock_mhz is None or clock_mhz <= 0 or cores <= 0:
        return None
    rate = core_rate(cpu_id, flags, arch, dtype, brand)
    if dtype == "float32" and matmul_precision != "highest":
        # torch may run float32 matmuls in bf16 (oneDNN) at a lower precision: the larger bound holds.
        alt = core_rate(cpu_id, flags, arch, "bfloat16", brand)
        if rate is not None and alt is not None and alt.per_cycle > rate.per_cycle:
            rate = replace(alt, how=f"{alt.how} ({matmul_precision} float32 matmul precision)")
    if rate is None:
        return None
    per, how = rate.per_cycle, rate.how
    cores = min(cores, MAX_CPU_CORES)
    clock = min(clock_mhz, CPU_MAX_MHZ)
    if clock_kind == "max":
        clock_note = "max clock"
    elif clock_kind == "bounded":
        clock_note = "clock not recorded: bounded at the fastest shipping CPU"
    elif clock_kind == "implied":
        clock_note = "at least the clock the measured GEMM implies: the max is not known, so the ceiling is uncertain"
    else:
        clock_note = "the current clock: the max is not known, so the ceiling is uncertain"
    if clock < clock_mhz:
        clock_note += f", bounded from {clock_mhz:g} MHz"
    flops = cores * per * clock * 1e6
    # An upper bound (a core not in the table, a SKU not shown) says so first: its MFU is a lower bound.
    kind = "theoretical" if rate.upper_bound is None else f"{UPPER_BOUND} ({rate.upper_bound})"
    source = (
        f"{kind}: {cores} core{'s' if cores != 1 else ''} x {per} FLOP/cycle ({how}) x {clock:g} MHz "
        f"({clock_note}) = {flops / 1e9:.1f} GFLOP/s"
    )
    tolerance = 1.0 if clock_kind in ("max", "bounded") else UNCERTAIN_TOLERANCE
    return Peak(flops=flops, source=source, tolerance=tolerance)


def cores_used(machine: MachineFingerprint, threads: int | None) -> int:
    """min(threads, physical cores): SMT siblings share one core's FMA units."""
    phys = machine.physical_cores or machine.logical_cores or 1
    return max(1, min(threads or phys, phys))


def machine_cpu_ceiling(
    machine: MachineFingerprint, threads: int | None, dtype: str, matmul_precision: str
) -> Peak | None:
    """The theoretical CPU peak of a fingerprint (a worker's or an imported one), clock bounded.

    A fingerprint that records no clock gets CPU_MAX_MHZ: an upper bound nothing ships above.
    """
    clock, kind = machine.cpu_clock_mhz, str(machine.cpu_clock_kind)
    if clock is None:
        clock, kind = CPU_MAX_MHZ, "bounded"
    return cpu_theoretical_peak(
        flags=machine.cpu_flags,
        arch=machine.cpu_arch,
        cpu_id=machine.cpu_id,
        brand=machine.cpu_model,
        cores=cores_used(machine, threads),
        clock_mhz=clock,
        clock_kind=kind,
        dtype=dtype,
        matmul_precision=matmul_precision,
    )


# -- memory bandwidth ---------------------------------------------------------------------------
# Published memory bandwidth, GB/s (10^9 bytes/s), of the fastest variant a tag names (a ceiling
# must not be below the part it is applied to), from NVIDIA's datasheets: A100 80GB SXM 2,039
# (40GB: 1,555; 80GB PCIe: 1,935); H100 SXM 3,350, PCIe 2,000, NVL 3,900; H200 SXM/NVL 4,800;
# GH200 144GB HBM3e 4,900 (96GB HBM3: 4,000); L4 300; L40 and L40S 864; A10 (and AWS's A10G) 600;
# T4 320; V100 SXM2/PCIe 900 (V100S 1,134); GeForce RTX 4090 1,008. A800 and H800 as their A100/H100.
GPU_BANDWIDTH_GBS: dict[str, float] = {
    "a100": 2039.0,
    "a100-40gb": 1555.0,
    "a100-pcie": 1935.0,
    "a800": 2039.0,
    "h100": 3350.0,
    "h100-pcie": 2000.0,
    "h100-nvl": 3900.0,
    "h800": 3350.0,
    "h800-pcie": 2000.0,
    "h200": 4800.0,
    "gh200": 4900.0,
    "l4": 300.0,
    "l40": 864.0,
    "l40s": 864.0,
    "a10": 600.0,
    "a10g": 600.0,
    "t4": 320.0,
    "v100": 900.0,
    "v100s": 1134.0,
    "rtx4090": 1008.0,
}
# L2 cache, bytes, by tag (datasheets / architecture whitepapers), used when torch cannot say.
GPU_L2_BYTES: dict[str, int] = {
    "a100": 40 << 20, "a800": 40 << 20, "h100": 50 << 20, "h800": 50 << 20, "h200": 50 << 20,
    "gh200": 50 << 20, "l4": 48 << 20, "l40": 96 << 20, "l40s": 96 << 20, "a10": 6 << 20,
    "a10g": 6 << 20, "t4": 4 << 20, "v100": 6 << 20, "v100s": 6 << 20, "rtx4090": 72 << 20,
}  # fmt: skip
# A decode step is checked against the bandwidth only when it moves at least this x the last-level
# cache: below, its weights may be served from the cache, faster than memory allows.
CACHE_MARGIN = 4.0
# A cache size that cannot be read is taken as this (the largest shipping: AMD EPYC 9684X, 1,152 MiB
# of L3 per socket, two sockets), so that no model is ruled impossible by a guess.
UNKNOWN_CACHE_BYTES = 2304 << 20


class Bandwidth(BaseModel):
    """The memory-bandwidth ceiling a decode is checked against, and the cache beside it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    bytes_per_s: float
    source: str  # e.g. "table: h100 HBM3 3350 GB/s" or "measured: read of 1024 MiB, best of 5, 2 threads"
    tolerance: float = 1.0  # as Peak.tolerance: UNCERTAIN_TOLERANCE for a measured CPU figure
    cache_bytes: int = UNKNOWN_CACHE_BYTES  # last-level cache (CPU L3, GPU L2)
    cache_source: str = "not known: the largest shipping last-level cache assumed"


def _bandwidth_tag(name: str, memory_bytes: int | None) -> str:
    tag, low = gpu_tag(name), name.lower()
    if f"{tag}-nvl" in GPU_BANDWIDTH_GBS and "nvl" in low:
        return f"{tag}-nvl"
    if f"{tag}-pcie" in GPU_BANDWIDTH_GBS and "pcie" in low:
        return f"{tag}-pcie"
    if tag == "a100" and ("40gb" in low or (memory_bytes is not None and memory_bytes < 48 << 30)):
        return "a100-40gb"
    if tag == "a10" and re.search(r"\ba10g\b", low):
        return "a10g"
    return tag


def gpu_bandwidth(name: str, memory_bytes: int | None = None, l2_bytes: int | None = None) -> Bandwidth | None:
    """The published memory bandwidth of a GPU by name (None when it is not in the table), with its
    L2 (`l2_bytes` as the device reports it, else the table's, else UNKNOWN_CACHE_BYTES)."""
    tag = _bandwidth_tag(name, memory_bytes)
    gbs = GPU_BANDWIDTH_GBS.get(tag)
    if gbs is None:
        return None
    if l2_bytes:
        cache, cache_source = l2_bytes, "L2 as the device reports it"
    elif gpu_tag(name) in GPU_L2_BYTES:
        cache, cache_source = GPU_L2_BYTES[gpu_tag(name)], f"L2 of {gpu_tag(name)} (datasheet)"
    else:
        cache, cache_source = UNKNOWN_CACHE_BYTES, "not known: the largest shipping last-level cache assumed"
    return Bandwidth(
        bytes_per_s=gbs * 1e9, source=f"table: {tag} memory {gbs:g} GB/s", cache_bytes=cache, cache_source=cache_source
    )
