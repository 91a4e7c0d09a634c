"""This machine: its fingerprint, its GPUs (NVML, and torch in the job process), its CPU's ceiling
and the measured GEMM roofline beside it (docs/ceilings.md), its last-level cache and measured
memory read bandwidth (the ceiling of decoding, docs/generation.md).

The data models (`MachineFingerprint`, `GpuInfo`) live in `farm.results.machine`; the ceilings
themselves (published table, derivation from GPU properties, the CPU's theoretical peak) in
`farm.results.peaks`, as pure functions that `farm import` applies to a file's fingerprint too.
Here the facts are read: the CPU's identity (CPUID family/model or Arm MIDR, which row of the core
table `farm.results.cpus` applies), ISA flags, cores and max clock; a GPU's compute capability
and max SM clock from NVML and its SM count from `torch.cuda.get_device_properties` (only in the
job process: NVML never initialises CUDA, so a worker's parent reads it before it forks). torch is
imported only inside the functions that need it.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import platform
import re
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil

from farm import __version__
from farm.engine.hostlock import CpuSnapshot, host_load
from farm.paths import cache_dir
from farm.results.cpus import core_row, flags_of_cpuinfo, parse_cpuinfo
from farm.results.machine import MAX_SM_CLOCK_MHZ, MAX_SM_COUNT, CpuId, GpuInfo, MachineFingerprint, gpu_tag
from farm.results.peaks import (
    UNCERTAIN_TOLERANCE,
    Bandwidth,
    Peak,
    machine_cpu_ceiling,
)
from farm.settings import get_settings


def machine_tag(hostname: str | None = None) -> str:
    """The narrow CPU tag of this machine (`cpu:<tag>`): its host name, made queue-safe; without a
    host name given, FARM_MACHINE where set (`farm worker --machine`: a second machine on one host)."""
    if hostname is None and get_settings().machine:
        return str(get_settings().machine)
    host = (hostname or socket.gethostname()).lower().split(".")[0]
    return re.sub(r"[^a-z0-9_-]", "-", host).strip("-")[:63] or "host"


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, str, tuple[str, ...]]:
    """(brand, architecture, speed flags): from /proc/cpuinfo on Linux (py-cpuinfo elsewhere: it
    probes in a child Python process, a second or more per call)."""
    arch = platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    if text:
        brand = next(iter(re.findall(r"^model name\s*:\s*(\S.*?)\s*$", text, flags=re.M)), "")
        return brand or platform.processor() or "unknown", arch, tuple(flags_of_cpuinfo(text, speed_flag))
    try:
        import cpuinfo  # lazily: py-cpuinfo takes a while to import and is needed once per process

        info = cpuinfo.get_cpu_info()
        model = info.get("brand_raw") or platform.processor() or "unknown"
        arch = info.get("arch_string_raw") or arch
        flags = info.get("flags", [])
    except Exception:  # py-cpuinfo can fail in odd containers; the fingerprint still stands
        model, flags = platform.processor() or "unknown", []
    return model, arch, tuple(sorted(f for f in flags if speed_flag(f)))


def speed_flag(flag: str) -> bool:
    """A flag that changes CPU speed: x86 AVX/AMX/FMA, Arm NEON (asimd), SVE, BF16, FP16, I8MM, SME."""
    arm = flag.startswith(("asimd", "sme")) and flag != "smep"  # x86's smep is a security feature
    return arm or flag.startswith(("avx", "amx", "fma", "sve", "neon")) or flag in ("bf16", "i8mm", "fphp")


SVE_DEFAULT_VL = "/proc/sys/abi/sve_default_vector_length"


@functools.lru_cache(maxsize=1)
def cpu_id() -> CpuId | None:
    """This CPU's identity (vendor/family/model, or Arm MIDR and SVE length) from /proc; None off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    try:
        sve: str | None = Path(SVE_DEFAULT_VL).read_text()
    except OSError:
        sve = None
    return parse_cpuinfo(text, sve)


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
            cc, clock = _nvml_cc_and_clock(pynvml, h)
            out.append(
                GpuInfo(
                    index=i,
                    name=name,
                    tag=gpu_tag(name),
                    memory_bytes=mem,
                    driver=drv,
                    uuid=uuid,
                    compute_capability=cc,
                    max_sm_clock_mhz=clock,
                )
            )
        return tuple(out)
    except Exception:
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _nvml_cc_and_clock(pynvml: object, handle: object) -> tuple[str | None, int | None]:
    """A GPU's compute capability and max SM clock from NVML (None where the driver has no answer)."""
    cc = clock = None
    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)  # type: ignore[attr-defined]
        cc = f"{int(major)}.{int(minor)}"
    except Exception:
        pass
    try:
        mhz = int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))  # type: ignore[attr-defined]
        clock = mhz if 0 < mhz <= MAX_SM_CLOCK_MHZ else None
    except Exception:
        pass
    return cc, clock


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
    ident = cpu_id()
    row, _ = core_row(ident, cpu_model)
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
    clock, clock_kind = cpu_clock()
    return MachineFingerprint(
        hostname=host,
        machine_tag=machine_tag(),  # FARM_MACHINE where set, else the host name's
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        cpu_model=cpu_model,
        cpu_arch=arch,
        cpu_flags=list(flags),
        cpu_id=ident,
        cpu_core=row.core if row is not None else None,
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
        memory_bytes=psutil.virtual_memory().total,
        cpu_clock_mhz=clock,
        cpu_clock_kind=clock_kind,
        torch_version=torch_v,
        cuda_version=cuda_v,
        cudnn_version=cudnn_v,
        gpus=list(nvml_gpus()),
        farm_version=__version__,
        git_commit=git_commit(),
    )


# -- CPU clock and ceiling ----------------------------------------------------------------------
SYSFS_MAX_FREQ = "/sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq"


@functools.lru_cache(maxsize=1)
def cpu_clock() -> tuple[float | None, Literal["max", "current"] | None]:
    """(MHz, kind) of the clock a CPU ceiling uses: kind "max" from cpufreq's cpuinfo_max_freq (or
    psutil's max), else "current" from /proc/cpuinfo "cpu MHz" (a VM without cpufreq: the max boost
    is not known); (None, None) when none can be read."""
    khz = []
    for path in glob.glob(SYSFS_MAX_FREQ):
        try:
            khz.append(int(Path(path).read_text().strip()))
        except (OSError, ValueError):
            continue
    if khz and max(khz) > 0:
        return max(khz) / 1000.0, "max"
    try:
        freq = psutil.cpu_freq()
    except Exception:  # psutil raises on platforms without the counters
        freq = None
    if freq is not None and freq.max and freq.max > 0:
        return float(freq.max), "max"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", text, flags=re.M)]
    if mhz and max(mhz) > 0:
        return max(mhz), "current"
    return None, None


def cpu_peak(dtype: str, matmul_precision: str, threads: int) -> Peak | None:
    """This CPU's theoretical peak for a dtype at `threads` threads (`farm.results.peaks`); None
    when its architecture or clock is not known."""
    return machine_cpu_ceiling(fingerprint(with_torch=False), threads, dtype, matmul_precision)


# -- GPU facts in the job process ----------------------------------------------------------------
@functools.cache
def cuda_gpu_info(index: int) -> GpuInfo:
    """The GPU a job runs on, from torch (name, compute capability, SM count) and NVML (max SM clock,
    matched by UUID). Call it in the job process only, after the timed device set-up."""
    import torch  # lazily: this module is read by processes that never load torch (see above)

    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "") or "") or None
    nv = next((g for g in nvml_gpus() if uuid and g.uuid and g.uuid.removeprefix("GPU-") == uuid), None)
    if nv is None and len(nvml_gpus()) == 1 and torch.cuda.device_count() == 1:
        nv = nvml_gpus()[0]  # one GPU each way: the same one, whatever CUDA_VISIBLE_DEVICES says
    cuda = torch.version.hip is None  # ROCm reports its gfx target as a "compute capability"
    clock = nv.max_sm_clock_mhz if nv else None
    khz = getattr(props, "clock_rate", None)  # kHz, where torch exposes it
    if clock is None and isinstance(khz, int) and khz > 0:
        clock = khz // 1000
    sms = int(props.multi_processor_count)
    return GpuInfo(
        index=nv.index if nv else index,
        name=props.name,
        tag=gpu_tag(props.name),
        memory_bytes=int(props.total_memory),
        driver=nv.driver if nv else None,
        uuid=nv.uuid if nv else (f"GPU-{uuid}" if uuid else None),
        compute_capability=f"{props.major}.{props.minor}" if cuda else None,
        sm_count=sms if 0 < sms <= MAX_SM_COUNT else None,
        max_sm_clock_mhz=clock if clock and 0 < clock <= MAX_SM_CLOCK_MHZ else None,
    )


def with_gpu(machine: MachineFingerprint | None, gpu: GpuInfo) -> MachineFingerprint | None:
    """The fingerprint with `gpu` in place of its NVML entry (same UUID, else same index), so that
    the SM count the ceiling was derived from is stored with the result (and `farm import` can
    derive it again)."""
    if machine is None:
        return None
    gpus = list(machine.gpus)
    at = next((i for i, g in enumerate(gpus) if gpu.uuid and g.uuid == gpu.uuid), None)
    if at is None:
        at = next((i for i, g in enumerate(gpus) if g.index == gpu.index), None)
    if at is None:
        gpus.append(gpu)
    else:
        gpus[at] = gpu
    return machine.model_copy(update={"gpus": gpus})


# -- measurement caches ----------------------------------------------------------------------------
REMEASURE_LOADED_AFTER_S = 600.0  # a figure taken under load is measured again once this old


def read_cache(path: Path) -> dict[str, Any]:
    """A measurement cache file's entries; empty when it is missing, unreadable or not a mapping
    (the entries themselves are checked where they are used)."""
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_cache(path: Path, cache: dict[str, Any]) -> None:
    """Replace a measurement cache file atomically (a temporary file, then rename); a read-only home
    still gets its figure, just not cached."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass


# -- memory bandwidth and the last-level cache ---------------------------------------------------
SYSFS_CACHE = "/sys/devices/system/cpu/cpu*/cache/index*"
BANDWIDTH_MIN_BYTES = 1 << 30  # the buffer read: at least 1 GiB and BANDWIDTH_CACHE_MULTIPLE x the LLC
BANDWIDTH_CACHE_MULTIPLE = 16
BANDWIDTH_PASSES = 5


def _size_bytes(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*(?:i?B)?\s*", text, flags=re.I)
    if m is None:
        return None
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]


@functools.lru_cache(maxsize=1)
def last_level_cache() -> tuple[int, str] | None:
    """(bytes, how) of the CPU's last-level cache over the whole machine (every instance of the
    highest cache level in sysfs, counted once per set of CPUs sharing it); None where sysfs has none."""
    seen: dict[tuple[int, str], int] = {}
    for d in glob.glob(SYSFS_CACHE):
        try:
            level = int(Path(d, "level").read_text())
            if Path(d, "type").read_text().strip() == "Instruction":
                continue
            size = _size_bytes(Path(d, "size").read_text())
            shared = Path(d, "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if size:
            seen[(level, shared)] = size
    if not seen:
        return None
    top = max(level for level, _ in seen)
    parts = [size for (level, _), size in seen.items() if level == top]
    return sum(parts), f"L{top} {sum(parts) >> 20} MiB in {len(parts)} instance{'s' if len(parts) != 1 else ''} (sysfs)"


def _bandwidth_file() -> Path:
    return cache_dir() / "bandwidth.json"


def measure_cpu_bandwidth(threads: int) -> dict[str, Any]:
    """Read bandwidth now: `torch.sum` over a float32 buffer of max(1 GiB, 16 x the LLC) (smaller
    where free memory is short), best of BANDWIDTH_PASSES passes after one untimed, at `threads`
    threads. A sum reads each byte once and writes nothing: the bound a decode step's reads meet."""
    import torch  # lazily: see the module docstring

    llc = last_level_cache()
    want = max(BANDWIDTH_MIN_BYTES, BANDWIDTH_CACHE_MULTIPLE * (llc[0] if llc else 0))
    size = max(1 << 26, min(want, psutil.virtual_memory().available // 4))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = CpuSnapshot.now()
    load_before = psutil.getloadavg()[0]
    try:
        buf = torch.ones(size // 4, dtype=torch.float32)  # written once: every page is resident
        torch.sum(buf)
        best = math.inf
        for _ in range(BANDWIDTH_PASSES):
            t0 = time.perf_counter()
            torch.sum(buf)
            best = min(best, time.perf_counter() - t0)
        del buf
    finally:
        torch.set_num_threads(prev)
    load = host_load(start, CpuSnapshot.now(), cores=threads)
    return {
        "bytes_per_s": size / best if best > 0 else 0.0,
        "buffer_bytes": size,
        "hostname": socket.gethostname(),
        "load_avg_1m": load_before,
        "loaded": load.contended,
        "measured_at": time.time(),
    }


def cpu_bandwidth(threads: int, refresh: bool = False) -> Bandwidth | None:
    """This CPU's measured read bandwidth at `threads` threads as a `Bandwidth` ceiling (uncertain:
    tolerance UNCERTAIN_TOLERANCE), with the last-level cache; cached per host, CPU, torch and threads
    like the roofline, and measured again when `refresh` or when the cached figure was taken under
    load more than REMEASURE_LOADED_AFTER_S ago. None when nothing could be read."""
    import torch  # lazily: see the module docstring

    key = f"{socket.gethostname()}|{_cpu_info()[0]}|{torch.__version__}|{threads}"
    path = _bandwidth_file()
    cache = read_cache(path)
    found = cache.get(key)
    old: dict[str, Any] | None = None
    if isinstance(found, dict) and isinstance(found.get("bytes_per_s"), int | float) and found["bytes_per_s"] > 0:
        old = found
    stale = old is not None and old.get("loaded") and time.time() - old.get("measured_at", 0) > REMEASURE_LOADED_AFTER_S
    entry = old
    if entry is None or refresh or stale:
        entry = measure_cpu_bandwidth(threads)
        if old is not None and entry["loaded"] and entry["bytes_per_s"] <= old["bytes_per_s"]:
            entry = old
        cache[key] = entry
        write_cache(path, cache)
    if not entry["bytes_per_s"] > 0:
        return None
    when = datetime.fromtimestamp(entry["measured_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = (
        f"measured: read (torch.sum) of a {entry['buffer_bytes'] >> 20} MiB float32 buffer, best of "
        f"{BANDWIDTH_PASSES}; {threads} threads; on {entry['hostname']} at load {entry['load_avg_1m']:.2f}"
        f"{', under load' if entry['loaded'] else ''}, {when}"
    )
    bw = Bandwidth(bytes_per_s=float(entry["bytes_per_s"]), source=source, tolerance=UNCERTAIN_TOLERANCE)
    llc = last_level_cache()
    return bw.model_copy(update={"cache_bytes": llc[0], "cache_source": llc[1]}) if llc else bw
