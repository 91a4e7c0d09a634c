"""Peak memory of a phase: CUDA's max allocated bytes, or the process RSS peak on a CPU."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import psutil


class PeakMemory:
    """Context manager measuring the peak memory of the code it wraps on `device`.

    On CUDA it resets and reads `torch.cuda.max_memory_allocated` (tensors only, no context).
    On a CPU a daemon thread samples the process RSS every `interval_s`; it sleeps between
    samples, so it costs the timed code a few microseconds per sample.
    """

    def __init__(self, device: Any, interval_s: float = 0.02) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.kind = "cuda max allocated" if device.type == "cuda" else "process RSS peak"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes or 0, self._proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, name="farm-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes or 0, self._proc.memory_info().rss)
