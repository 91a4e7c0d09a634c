"""Peak memory of a phase: CUDA's max allocated bytes, or the process's peak RSS on a CPU.

On Linux the CPU peak costs nothing inside the timed region: writing "5" to /proc/self/clear_refs
resets the kernel's high-water mark of the resident set (VmHWM), which is read back from
/proc/self/status when the phase ends. Elsewhere a daemon thread samples the RSS every
`interval_s` (it wakes inside timed work, which costs short CPU phases a few per cent).
"""

from __future__ import annotations

import re
import threading
from types import TracebackType
from typing import Any

import psutil

from farm.engine.allocator import trim

_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _reset_hwm() -> bool:
    """Reset the process's peak-RSS mark; False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_hwm() is not None
    except OSError:
        return False


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = _HWM.search(f.read())
    except OSError:
        return None
    return int(m[1]) * 1024 if m else None


class PeakMemory:
    """Context manager measuring the peak memory of the code it wraps on `device`.

    CUDA: resets and reads `torch.cuda.max_memory_allocated` (tensors only, no context).
    CPU: the process's peak RSS over the block (kernel high-water mark, else a sampling thread).
    """

    def __init__(self, device: Any, interval_s: float = 0.02) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.kind = "cuda max allocated" if device.type == "cuda" else "process RSS peak"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = psutil.Process()
        self._hwm = False

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes or 0, self._proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import torch  # lazily: CPU-only use of PeakMemory never loads torch

            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        trim()  # what earlier phases kept for reuse goes back first: the peak is this block's own
        self.peak_bytes = self._proc.memory_info().rss
        self._hwm = _reset_hwm()
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, name="farm-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            import torch  # lazily, as in __enter__

            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        if self._hwm:
            self.peak_bytes = max(self.peak_bytes or 0, _read_hwm() or 0)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
        self.peak_bytes = max(self.peak_bytes or 0, self._proc.memory_info().rss)
