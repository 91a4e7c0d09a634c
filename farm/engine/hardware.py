"""This machine: its fingerprint, its GPUs (NVML), its tag, and the measured CPU peak FLOP/s.

The data models (`MachineFingerprint`, `GpuInfo`) live in `farm.results.machine`; the published
GPU peaks in `farm.results.peaks`. CPU peaks are measured here by a short matmul calibration,
cached per machine. Nothing here
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

from farm import __version__
from farm.paths import cache_dir
from farm.results.machine import GpuInfo, MachineFingerprint, gpu_tag
from farm.results.peaks import MEASURED_TOLERANCE, Peak


def machine_tag(hostname: str | None = None) -> str:
    """The narrow CPU tag of this machine (`cpu:<tag>`): its host name, made queue-safe."""
    host = (hostname or socket.gethostname()).lower().split(".")[0]
    return re.sub(r"[^a-z0-9_-]", "-", host).strip("-")[:63] or "host"


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, str, tuple[str, ...]]:
    try:
        import cpuinfo  # lazily: py-cpuinfo takes a while to import and is needed once per process

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
        import pynvml  # lazily: only machines with an NVIDIA driver have anything to read

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
        import torch  # lazily: a worker's parent and the CLI fingerprint without loading torch

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


def _calibration_file() -> Path:
    return cache_dir() / "calibration.json"


def cpu_peak(dtype: str, matmul_precision: str, threads: int, size: int = 2048, refresh: bool = False) -> Peak:
    """Measured CPU matmul peak for a dtype, cached per CPU model, thread count and torch version.

    The cache keeps the highest rate ever measured: a calibration taken while other work loaded
    the machine is low, and `refresh=True` (used when a phase beats the cached peak) measures
    again and keeps the larger figure, so a busy moment never makes an honest result `invalid`.
    """
    import torch  # lazily: this module is read by processes that never load torch (see above)

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
