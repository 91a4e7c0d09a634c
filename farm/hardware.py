"""The machine: a fingerprint stored with every result, GPU tags, and peak FLOP/s per device.

GPU peaks come from a table of published dense (non-sparse) figures; CPU peaks are measured by a
short matmul calibration, cached per machine. Every MFU names the peak it used. Nothing here
initialises CUDA: GPU facts come from NVML (nvidia-ml-py), so a worker's parent process can read
them before it forks job processes. torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict

from farm import __version__
from farm.paths import cache_dir


class GpuInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    name: str
    tag: str
    memory_bytes: int | None = None
    driver: str | None = None
    uuid: str | None = None


class MachineFingerprint(BaseModel):
    """What a result was measured on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hostname: str
    machine_tag: str
    os: str
    python: str
    cpu_model: str
    cpu_arch: str
    cpu_flags: list[str] = []  # the SIMD / matrix extensions that change CPU speed
    physical_cores: int | None
    logical_cores: int | None
    memory_bytes: int
    torch_version: str | None = None
    cuda_version: str | None = None
    cudnn_version: str | None = None
    gpus: list[GpuInfo] = []
    farm_version: str
    git_commit: str | None = None


# Published dense peaks, TFLOP/s: fp32 (CUDA cores), tf32, bf16 and fp16 (tensor cores, dense).
# Keyed by GPU tag; a "-pcie" variant is chosen when the name says PCIe.
GPU_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "a100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    "h100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "h100-pcie": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0},
    "h200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "l4": {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0, "float16": 121.0},
    "l40s": {"float32": 91.6, "tf32": 183.0, "bfloat16": 362.1, "float16": 362.1},
    "a10": {"float32": 31.2, "tf32": 62.5, "bfloat16": 125.0, "float16": 125.0},
    # Turing has no TF32 and no bf16 tensor cores: bf16 is bounded by the fp16 figure.
    "t4": {"float32": 8.1, "tf32": 8.1, "bfloat16": 65.0, "float16": 65.0},
    "v100": {"float32": 15.7, "tf32": 15.7, "bfloat16": 125.0, "float16": 125.0},
    "rtx4090": {"float32": 82.6, "tf32": 82.6, "bfloat16": 165.2, "float16": 165.2},
}

# A measured CPU calibration is not a hard ceiling (a run can beat a short calibration by a few
# per cent); a published GPU peak is. Results above peak x tolerance are marked invalid.
TABLE_TOLERANCE = 1.0
MEASURED_TOLERANCE = 1.25


def gpu_tag(name: str) -> str:
    """A short queue-safe tag from a GPU name.

    "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA A100-SXM4-40GB" -> "a100",
    "NVIDIA GeForce RTX 4090" -> "rtx4090", "NVIDIA L40S" -> "l40s", "Tesla T4" -> "t4".
    Rule: lower-case, drop vendor and family words (nvidia, geforce, tesla, quadro), join an
    "rtx"/"gtx" prefix to its number, then take the first word, cut at the first '-'.
    """
    words = re.sub(r"[^a-z0-9 -]", " ", name.lower()).split()
    words = [w for w in words if w not in {"nvidia", "geforce", "tesla", "quadro"}]
    if len(words) >= 2 and words[0] in {"rtx", "gtx"}:
        words = [words[0] + words[1], *words[2:]]
    if not words:
        return "gpu"
    tag = words[0].split("-")[0]
    return re.sub(r"[^a-z0-9_-]", "", tag)[:63] or "gpu"


def machine_tag(hostname: str | None = None) -> str:
    """The narrow CPU tag of this machine (`cpu:<tag>`): its host name, made queue-safe."""
    host = (hostname or socket.gethostname()).lower().split(".")[0]
    return re.sub(r"[^a-z0-9_-]", "-", host).strip("-")[:63] or "host"


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, str, tuple[str, ...]]:
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
        model = info.get("brand_raw") or platform.processor() or "unknown"
        arch = info.get("arch_string_raw") or platform.machine()
        flags = info.get("flags", [])
    except Exception:  # py-cpuinfo can fail in odd containers; the fingerprint still stands
        model, arch, flags = platform.processor() or "unknown", platform.machine(), []
    keep = tuple(sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sve", "neon"))))
    return model, arch, keep


@functools.lru_cache(maxsize=1)
def nvml_gpus() -> tuple[GpuInfo, ...]:
    """GPUs seen by NVML, without initialising CUDA. Empty when there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return ()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            uuid = pynvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            drv = driver.decode() if isinstance(driver, bytes) else driver
            out.append(GpuInfo(index=i, name=name, tag=gpu_tag(name), memory_bytes=mem, driver=drv, uuid=uuid))
        return tuple(out)
    except Exception:
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The farm's git commit when it runs from a checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint(with_torch: bool = True) -> MachineFingerprint:
    """The machine's fingerprint. With `with_torch`, torch/CUDA versions are read (no CUDA init)."""
    cpu_model, arch, flags = _cpu_info()
    torch_v = cuda_v = cudnn_v = None
    if with_torch:
        import torch

        torch_v = torch.__version__
        cuda_v = torch.version.cuda
        try:
            cudnn_v = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
        except Exception:
            cudnn_v = None
    host = socket.gethostname()
    return MachineFingerprint(
        hostname=host,
        machine_tag=machine_tag(host),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        cpu_model=cpu_model,
        cpu_arch=arch,
        cpu_flags=list(flags),
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
        memory_bytes=psutil.virtual_memory().total,
        torch_version=torch_v,
        cuda_version=cuda_v,
        cudnn_version=cudnn_v,
        gpus=list(nvml_gpus()),
        farm_version=__version__,
        git_commit=git_commit(),
    )


class Peak(BaseModel):
    """The peak FLOP/s an MFU is relative to, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flops: float
    source: str  # e.g. "table: h100 bfloat16 dense" or "measured: 2048^3 float32 matmul, 2 threads"
    tolerance: float


def gpu_peak(name: str, dtype: str, matmul_precision: str) -> Peak | None:
    """Published dense peak of a GPU for the dtype actually used by its matmuls."""
    tag = gpu_tag(name)
    if tag == "h100" and "pcie" in name.lower():
        tag = "h100-pcie"
    table = GPU_PEAKS_TFLOPS.get(tag)
    if table is None:
        return None
    key = dtype
    if dtype == "float32" and matmul_precision != "highest":
        key = "tf32"  # TF32 tensor cores are allowed: the ceiling is theirs
    return Peak(flops=table[key] * 1e12, source=f"table: {tag} {key} dense", tolerance=TABLE_TOLERANCE)


def _calibration_file() -> Path:
    return cache_dir() / "calibration.json"


def cpu_peak(dtype: str, matmul_precision: str, threads: int, size: int = 2048, refresh: bool = False) -> Peak:
    """Measured CPU matmul peak for a dtype, cached per CPU model, thread count and torch version.

    The cache keeps the highest rate ever measured: a calibration taken while other work loaded
    the machine is low, and `refresh=True` (used when a phase beats the cached peak) measures
    again and keeps the larger figure, so a busy moment never makes an honest result `invalid`.
    """
    import torch

    cpu_model, _, _ = _cpu_info()
    key = f"{cpu_model}|{torch.__version__}|{threads}|{dtype}|{matmul_precision}|{size}"
    path = _calibration_file()
    cache: dict[str, float] = {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    source = f"measured: {size}^3 {dtype} matmul, {threads} threads, {matmul_precision} precision"
    if key in cache and not refresh:
        return Peak(flops=cache[key], source=source, tolerance=MEASURED_TOLERANCE)
    tdtype = getattr(torch, dtype)
    prev_threads, prev_prec = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        a = torch.randn(size, size, dtype=tdtype)
        b = torch.randn(size, size, dtype=tdtype)
        torch.mm(a, b)  # warm-up: thread pool, packing buffers
        best = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(prev_threads)
        torch.set_float32_matmul_precision(prev_prec)
    best = max(best, cache.get(key, 0.0))
    cache[key] = best
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home still gets a peak, just not cached
    return Peak(flops=best, source=source, tolerance=MEASURED_TOLERANCE)
