"""The CPU memory allocator a job runs with: glibc's malloc with its large blocks kept for reuse.

By default glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap`
and returns it to the kernel on free, and trims the heap top above 128 KiB. A GPT-2 step on a CPU
allocates dozens of such blocks (LM-head logits, 100-200 MB each at 1 x 1024; activations, gradients)
and frees them a few milliseconds later, so every step page-faults the same gigabytes in again, at
a few GB/s in a VM. On a 2-core AMD EPYC Zen 5 (KVM guest, torch 2.13.0, shared with other work),
GPT-2 small at 1 x 1024 took 0.90x the default's time per train step in fp32 and bf16 and 0.91x per
fp32 forward with the blocks kept (benchmarks/allocator.py); a bf16 step's minor page faults went
from about 400,000 to none.

This is the advice PyTorch's CPU performance guide gives (a caching allocator such as jemalloc or
tcmalloc, preloaded), done in-process with `mallopt` so that nothing has to be preloaded: blocks are
taken from the heap and kept there after free, for the next step. The peer a benchmark compares with
runs in the same process, under the same allocator. A phase's peak memory stays its own:
`farm.engine.memory.PeakMemory` returns the kept blocks to the kernel (`malloc_trim`) before it
resets the high-water mark.

`FARM_CPU_ALLOCATOR=default` leaves glibc as it is. Every result records which allocator its phases
ran under (`JobResult.cpu_allocator`).
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import cache

__all__ = ["ALLOCATOR_ENV", "KEPT", "trim", "tune_cpu_allocator"]

ALLOCATOR_ENV = "FARM_CPU_ALLOCATOR"
KEPT = "glibc malloc, large blocks kept for reuse (mmap and trim thresholds raised)"
DEFAULT = "glibc malloc, default thresholds"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 2**31 - 1  # the largest threshold mallopt takes (an int): every tensor from the heap


@cache
def _glibc() -> ctypes.CDLL | None:
    try:  # glibc names itself here; musl and other systems do not (and find_library starts processes)
        if platform.system() != "Linux" or not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError):
        return None
    try:
        lib = ctypes.CDLL("libc.so.6")
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        return lib
    except (OSError, AttributeError):
        return None


@cache
def tune_cpu_allocator() -> str | None:
    """Keep glibc's large blocks for reuse in this process (once; a forked job process inherits it).
    Returns what the process allocates with now (`KEPT`, `DEFAULT`), None where the C library is not
    glibc (macOS, musl: left as it is, and nothing is claimed)."""
    lib = _glibc()
    if lib is None:
        return None
    if os.environ.get(ALLOCATOR_ENV, "").strip().lower() == "default":
        return DEFAULT
    ok = lib.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 and lib.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    return KEPT if ok else DEFAULT


def trim() -> None:
    """Give the heap's free blocks back to the kernel (outside any timed region: a phase's peak RSS
    then starts from what is live, not from what an earlier phase kept)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
