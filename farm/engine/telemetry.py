"""Telemetry around a phase: NVML sampled during a GPU phase; cpufreq and RAPL read around a CPU one.

A `TelemetrySource` belongs to a job (`telemetry_source`); `source.begin()` takes the readings
before a phase and returns a `Probe`, whose `stop()` takes those after it and whose
`summary(times_s, tokens_per_repeat)` is the phase's `PhaseTelemetry`. Nothing here may fail a
phase: every failed reading becomes a note (and `errors`) on the telemetry.

- NVIDIA: a daemon thread samples SM and memory clocks, power, temperature, utilisation and the
  clock event (throttle) reasons at `SAMPLE_HZ`; the total energy counter (mJ, Volta and newer) is
  read before and after. pynvml is imported lazily: it may be absent or fail to initialise.
- CPU: no thread (it would run inside the CPU-timed region): cpufreq's scaling_cur_freq per CPU
  (else psutil.cpu_freq) and the package energy counters (powercap RAPL, Intel or AMD, with the
  counter's wrap-around; else hwmon amd_energy) are read before and after only.

Energy covers the whole window (warm-up included); per repeat it is the window's mean power times
the median repeat, per token that divided by the repeat's tokens.
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from farm.results.telemetry import MAX_NOTES, THROTTLE_REASONS, PhaseTelemetry, Range

SAMPLE_HZ = 20.0  # NVML samples per second during a GPU phase (benchmarks/telemetry_overhead.py: its cost)
MAX_SAMPLES = 200_000  # a bound on the samples kept per phase (~2.8 h at SAMPLE_HZ); later ones are counted only
MAX_CONSECUTIVE_ERRORS = 50  # the sampler gives up after this many failed samples in a row
NVML_ERROR_NOT_SUPPORTED = 3  # pynvml.NVML_ERROR_NOT_SUPPORTED
_CLOCK_SM, _CLOCK_MEM, _TEMPERATURE_GPU = 1, 2, 0  # NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU


def _median(times_s: Sequence[float]) -> float | None:
    vals = sorted(t for t in times_s if t > 0)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def _energy_figures(t: PhaseTelemetry, times_s: Sequence[float], tokens_per_repeat: int) -> None:
    """Mean power, energy per repeat and per token from `t.energy_j` over `t.window_s`."""
    if t.energy_j is None or not t.window_s:
        return
    t.mean_power_w = t.energy_j / t.window_s
    med = _median(times_s)
    if med is not None:
        t.energy_j_per_repeat = t.mean_power_w * med
        if tokens_per_repeat > 0:
            t.energy_j_per_token = t.energy_j_per_repeat / tokens_per_repeat


def _note(notes: list[str], text: str) -> None:
    if text not in notes and len(notes) < MAX_NOTES:
        notes.append(text)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]


class Probe(Protocol):
    """One phase's telemetry in progress: `stop()` after the phase, then `summary(...)`."""

    def stop(self) -> None: ...

    def summary(self, times_s: Sequence[float], tokens_per_repeat: int) -> PhaseTelemetry: ...


class TelemetrySource(Protocol):
    """Where a job's telemetry comes from (one per job, `telemetry_source`)."""

    def begin(self) -> Probe: ...

    def close(self) -> None: ...


# -- NVIDIA (NVML) --------------------------------------------------------------------------------
def _not_supported(e: BaseException) -> bool:
    return getattr(e, "value", None) == NVML_ERROR_NOT_SUPPORTED


class NvmlSource:
    """A GPU's NVML handle, with the limits read once (max and base SM clock, power limit)."""

    def __init__(self, nvml: Any, handle: Any, label: str, *, owns_init: bool, sample_hz: float = SAMPLE_HZ) -> None:
        self.nvml, self.handle, self.label, self.sample_hz = nvml, handle, label, sample_hz
        self._owns_init = owns_init
        self.notes: list[str] = []
        self.max_sm = self._once(lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, _CLOCK_SM), "max SM clock")
        self.base_sm = self._once(
            lambda: nvml.nvmlDeviceGetDefaultApplicationsClock(handle, _CLOCK_SM), "base (default applications) clock"
        )
        limit = self._once(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle), "power limit")
        self.power_limit_w = limit / 1000.0 if limit else None
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        self.reasons_fn: Callable[[Any], int] | None = reasons or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        if self.reasons_fn is None:
            _note(self.notes, "throttle reasons: this pynvml has no clock event reason call")
        self.energy_ok = hasattr(nvml, "nvmlDeviceGetTotalEnergyConsumption")
        if not self.energy_ok:
            _note(self.notes, "energy: this pynvml has no nvmlDeviceGetTotalEnergyConsumption")

    def _once(self, fn: Callable[[], Any], what: str) -> float | None:
        try:
            v = float(fn())
            return v if v > 0 else None
        except Exception as e:
            why = "not supported" if _not_supported(e) else _err(e)
            _note(self.notes, f"{what}: {why}")
            return None

    def energy_mj(self, notes: list[str]) -> float | None:
        """The device's total energy counter (mJ since the driver loaded); None with a note when absent."""
        if not self.energy_ok:
            return None
        try:
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception as e:
            if _not_supported(e):
                self.energy_ok = False
                _note(notes, "energy: the total energy counter is not supported (it needs a Volta or newer GPU)")
            else:
                _note(notes, f"energy: reading the counter failed: {_err(e)}")
            return None

    def begin(self) -> NvmlProbe:
        probe = NvmlProbe(self)
        probe.start()
        return probe

    def close(self) -> None:
        if self._owns_init:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self._owns_init = False


@dataclass
class _Readings:
    sm: list[float] = field(default_factory=list)
    mem: list[float] = field(default_factory=list)
    power: list[float] = field(default_factory=list)
    temp: list[float] = field(default_factory=list)
    util: list[float] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> samples that showed it
    reason_samples: int = 0  # samples whose reasons were read


class NvmlProbe:
    """NVML during one phase: the energy counter around it, a sampling thread during it."""

    def __init__(self, src: NvmlSource) -> None:
        self.src = src
        self.notes: list[str] = list(src.notes)
        self.readings = _Readings()
        self.samples = 0
        self.errors = 0
        self.sampler_cpu_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._disabled: set[str] = set()
        self._e0: float | None = None
        self._e1: float | None = None
        self._t0 = self._t1 = 0.0
        self._started = self._stopped = False
        self._quantities_now = self._quantities()

    def _quantities(self) -> list[tuple[str, Callable[[], float], list[float]]]:
        nv, h, r = self.src.nvml, self.src.handle, self.readings
        return [
            ("SM clock", lambda: float(nv.nvmlDeviceGetClockInfo(h, _CLOCK_SM)), r.sm),
            ("memory clock", lambda: float(nv.nvmlDeviceGetClockInfo(h, _CLOCK_MEM)), r.mem),
            ("power", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0, r.power),
            ("temperature", lambda: float(nv.nvmlDeviceGetTemperature(h, _TEMPERATURE_GPU)), r.temp),
            ("utilisation", lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu), r.util),
        ]

    def start(self, sampling: bool = True) -> None:
        """Read the energy counter and start the sampling thread (`sampling=False`: no thread; the
        caller takes the samples with `sample`, as tests do)."""
        self._e0 = self.src.energy_mj(self.notes)
        self._t0 = time.perf_counter()
        self._started = True
        if sampling:
            self._thread = threading.Thread(target=self._run, name="farm-nvml-sampler", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        c0 = time.thread_time()
        period = 1.0 / self.src.sample_hz
        failed_in_row = 0
        while True:
            ok = self.sample()
            failed_in_row = 0 if ok else failed_in_row + 1
            if failed_in_row >= MAX_CONSECUTIVE_ERRORS:
                _note(self.notes, f"sampler stopped after {failed_in_row} failed samples in a row")
                break
            if self._stop.wait(period):
                break
        self.sampler_cpu_s = time.thread_time() - c0

    def sample(self) -> bool:
        """One sample of every quantity still enabled; False when every reading failed."""
        self.samples += 1
        keep = self.samples <= MAX_SAMPLES
        got = tried = 0
        for name, read, out in self._quantities_now:
            if name in self._disabled:
                continue
            tried += 1
            try:
                v = read()
                got += 1
                if keep:
                    out.append(v)
            except Exception as e:
                self._failed(name, e)
        fn = self.src.reasons_fn
        if fn is not None and "throttle reasons" not in self._disabled:
            tried += 1
            try:
                mask = int(fn(self.src.handle))
                got += 1
                self.readings.reason_samples += 1
                for bit, reason in THROTTLE_REASONS.items():
                    if mask & bit:
                        self.readings.reasons[reason] = self.readings.reasons.get(reason, 0) + 1
            except Exception as e:
                self._failed("throttle reasons", e)
        return got > 0 or tried == 0

    def _failed(self, name: str, e: BaseException) -> None:
        if _not_supported(e):
            self._disabled.add(name)
            _note(self.notes, f"{name}: not supported by this GPU or driver")
            return
        self.errors += 1
        _note(self.notes, f"{name}: reading failed during the phase ({_err(e)})")

    def stop(self) -> None:
        """Stop and join the sampler, then read the energy counter again. Idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._t1 = time.perf_counter()
        self._e1 = self.src.energy_mj(self.notes)

    @property
    def alive(self) -> bool:
        """The sampling thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def summary(self, times_s: Sequence[float], tokens_per_repeat: int) -> PhaseTelemetry:
        self.stop()
        r = self.readings
        shares = {k: n / r.reason_samples for k, n in r.reasons.items()} if r.reason_samples else {}
        t = PhaseTelemetry(
            source="nvml",
            device=self.src.label,
            window_s=max(self._t1 - self._t0, 0.0),
            samples=self.samples,
            sample_hz=self.src.sample_hz,
            sampler_cpu_s=self.sampler_cpu_s,
            sm_clock_mhz=Range.of(r.sm),
            mem_clock_mhz=Range.of(r.mem),
            power_w=Range.of(r.power),
            temperature_c=Range.of(r.temp),
            utilization_pct=Range.of(r.util),
            max_sm_clock_mhz=self.src.max_sm,
            base_sm_clock_mhz=self.src.base_sm,
            power_limit_w=self.src.power_limit_w,
            throttled=bool(shares),
            throttle_reasons=shares,
            errors=self.errors,
            notes=self.notes,
        )
        if self.samples > MAX_SAMPLES:
            _note(t.notes, f"only the first {MAX_SAMPLES} of {self.samples} samples are summarised")
        if self._e0 is not None and self._e1 is not None:
            if self._e1 >= self._e0:
                t.energy_j, t.energy_source = (self._e1 - self._e0) / 1000.0, "NVML total energy counter"
            else:
                _note(t.notes, "energy: the counter went backwards (driver reloaded?)")
        _energy_figures(t, times_s, tokens_per_repeat)
        return t


def open_nvml(index: int, uuid: str | None = None, nvml: Any = None) -> NvmlSource | UnavailableSource:
    """The NVML source of GPU `index` (NVML's numbering), matched by `uuid` where given; an
    `UnavailableSource` saying why when pynvml is absent or fails. `nvml`: a module to use instead
    of pynvml (tests pass a fake)."""
    owns = False
    try:
        if nvml is None:
            import pynvml  # lazily: only machines with an NVIDIA driver have NVML to read

            nvml = pynvml
        nvml.nvmlInit()
        owns = True
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        return NvmlSource(nvml, handle, f"GPU {index} ({name})", owns_init=True)
    except Exception as e:
        if owns:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
        return UnavailableSource("nvml", f"NVML unavailable: {_err(e)}")


class UnavailableSource:
    """A device whose telemetry cannot be had: each phase carries the reason as a note."""

    def __init__(self, source: str, why: str) -> None:
        self.source, self.why = source, why

    def begin(self) -> _NoteProbe:
        return _NoteProbe(self.source, self.why)

    def close(self) -> None:
        pass


class _NoteProbe:
    def __init__(self, source: str, why: str) -> None:
        self.source, self.why = source, why

    def stop(self) -> None:
        pass

    def summary(self, times_s: Sequence[float], tokens_per_repeat: int) -> PhaseTelemetry:
        return PhaseTelemetry(source="nvml" if self.source == "nvml" else "none", notes=[self.why])


# -- CPU (cpufreq, RAPL) ----------------------------------------------------------------------------
def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class EnergyCounter:
    """One package energy counter: its file, the wrap range (µJ; None: does not wrap) and its name."""

    path: Path
    max_uj: int | None
    name: str


def cpu_freqs(root: Path = Path("/")) -> tuple[list[float], str | None, str | None]:
    """(MHz per CPU, source, note) now: cpufreq's scaling_cur_freq, else psutil.cpu_freq.

    On a VM without cpufreq psutil reads /proc/cpuinfo's "cpu MHz", which the hypervisor reports as
    a fixed nominal figure: it is kept, with a source that says so. `root`: a fake sysfs in tests.
    """
    files = sorted(glob.glob(str(root / "sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")))
    khz = [v for v in (_read_int(Path(f)) for f in files) if v is not None and v > 0]
    if khz:
        return [k / 1000.0 for k in khz], "cpufreq scaling_cur_freq", None
    if root != Path("/"):
        return [], None, "CPU frequency not readable (no cpufreq in sysfs)"
    try:
        per_cpu = psutil.cpu_freq(percpu=True) or []
    except Exception as e:  # psutil raises where the platform has no counters
        return [], None, f"CPU frequency not readable (no cpufreq in sysfs; psutil: {_err(e)})"
    mhz = [float(f.current) for f in per_cpu if f.current and f.current > 0]
    if not mhz:
        return [], None, "CPU frequency not readable (no cpufreq in sysfs, psutil.cpu_freq reports nothing)"
    sysfs = ("/sys/devices/system/cpu/cpufreq/policy0", "/sys/devices/system/cpu/cpu0/cpufreq")
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in sysfs):  # psutil's own test
        return (
            mhz,
            "psutil.cpu_freq from /proc/cpuinfo 'cpu MHz'",
            "no cpufreq in sysfs: the CPU frequency is /proc/cpuinfo's 'cpu MHz', on a VM the hypervisor's "
            "fixed nominal figure, not the running clock",
        )
    return mhz, "psutil.cpu_freq", None


def cpu_freq_limits(root: Path = Path("/")) -> tuple[float | None, float | None]:
    """(max, base) MHz from cpufreq's cpuinfo_max_freq and base_frequency (intel_pstate); None unread."""
    cpu = root / "sys/devices/system/cpu"
    maxes = [v for v in (_read_int(Path(p)) for p in glob.glob(str(cpu / "cpu[0-9]*/cpufreq/cpuinfo_max_freq"))) if v]
    bases = [v for v in (_read_int(Path(p)) for p in glob.glob(str(cpu / "cpu[0-9]*/cpufreq/base_frequency"))) if v]
    return (max(maxes) / 1000.0 if maxes else None, max(bases) / 1000.0 if bases else None)


def energy_counters(root: Path = Path("/")) -> tuple[list[EnergyCounter], str | None]:
    """The package energy counters and a note when there are none: powercap RAPL zones
    (`intel-rapl:N`, also AMD's, or `amd-rapl:N`) whose name is package-N, else hwmon amd_energy's
    socket counters (`Esocket*`, 64-bit: no wrap). `root`: a fake sysfs in tests."""
    powercap = root / "sys/class/powercap"
    zones = sorted(
        p for p in glob.glob(str(powercap / "*-rapl:*")) if Path(p).name.count(":") == 1
    )  # top-level zones only: intel-rapl:0, not its sub-zones intel-rapl:0:0 (core, dram)
    found: list[EnergyCounter] = []
    denied: list[str] = []
    unreadable: list[str] = []
    for z in map(Path, zones):
        name = _read_text(z / "name") or z.name
        if not name.startswith("package"):
            continue  # psys or dram at the top level: not the package
        if not os.access(z / "energy_uj", os.R_OK):
            denied.append(z.name)
            continue
        if _read_int(z / "energy_uj") is None:
            unreadable.append(z.name)
            continue
        found.append(EnergyCounter(z / "energy_uj", _read_int(z / "max_energy_range_uj"), f"{z.name} {name}"))
    if found:
        return found, None
    for hw in sorted(glob.glob(str(root / "sys/class/hwmon/hwmon*"))):
        if _read_text(Path(hw) / "name") != "amd_energy":
            continue
        for label in sorted(glob.glob(f"{hw}/energy*_label")):
            if (_read_text(Path(label)) or "").startswith("Esocket"):
                inp = Path(label.removesuffix("_label") + "_input")
                if _read_int(inp) is not None:
                    found.append(EnergyCounter(inp, None, f"amd_energy {_read_text(Path(label))}"))
    if found:
        return found, None
    if denied:
        return [], f"RAPL energy not readable ({', '.join(denied)}: energy_uj is root-only on this kernel)"
    if unreadable:
        return [], f"RAPL energy not readable ({', '.join(unreadable)}: energy_uj holds no number)"
    if not powercap.is_dir():
        return [], "RAPL not exposed (no /sys/class/powercap)"
    return [], "RAPL not exposed (no package zone under /sys/class/powercap)"


class CpuSource:
    """The CPU's clock and package energy, read before and after each phase (no thread)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        self.counters, self.energy_note = energy_counters(root)
        self.max_mhz, self.base_mhz = cpu_freq_limits(root)

    def read_energy(self) -> list[int | None]:
        return [_read_int(c.path) for c in self.counters]

    def begin(self) -> CpuProbe:
        return CpuProbe(self)

    def close(self) -> None:
        pass


class CpuProbe:
    """The CPU's readings before a phase (taken at creation) and after it (`stop`)."""

    def __init__(self, src: CpuSource) -> None:
        self.src = src
        self.notes: list[str] = []
        self.freqs, self.freq_source, note = cpu_freqs(src.root)
        if note:
            _note(self.notes, note)
        self._e0 = src.read_energy()
        self._t0 = time.perf_counter()
        self._e1: list[int | None] | None = None
        self._t1 = self._t0

    def stop(self) -> None:
        if self._e1 is not None:
            return
        self._e1 = self.src.read_energy()
        self._t1 = time.perf_counter()
        after, _, _ = cpu_freqs(self.src.root)
        self.freqs = self.freqs + after

    def energy_j(self) -> float | None:
        """Joules over the window, summed over packages, each counter's wrap-around undone."""
        if not self.src.counters:
            _note(self.notes, self.src.energy_note or "RAPL not exposed")
            return None
        total = 0
        after = self._e1 if self._e1 is not None else [None] * len(self._e0)
        for c, a, b in zip(self.src.counters, self._e0, after, strict=True):
            if a is None or b is None:
                _note(self.notes, f"energy: {c.name} could not be read before and after the phase")
                return None
            d = b - a
            if d < 0:
                if not c.max_uj:
                    _note(self.notes, f"energy: {c.name} went backwards and its wrap range is unknown")
                    return None
                d += c.max_uj  # the counter wrapped once (a typical 262 kJ range wraps every ~45 min at 100 W)
            total += d
        return total / 1e6

    def summary(self, times_s: Sequence[float], tokens_per_repeat: int) -> PhaseTelemetry:
        self.stop()
        energy = self.energy_j()
        t = PhaseTelemetry(
            source="cpu",
            device="cpu",
            window_s=max(self._t1 - self._t0, 0.0),
            cpu_freq_mhz=Range.of(self.freqs),
            cpu_freq_source=self.freq_source,
            cpu_max_freq_mhz=self.src.max_mhz,
            cpu_base_freq_mhz=self.src.base_mhz,
            energy_j=energy,
            energy_source=(
                "RAPL package energy (whole socket: other processes included): "
                + ", ".join(c.name for c in self.src.counters)
            )
            if energy is not None
            else None,
            notes=self.notes,
        )
        _energy_figures(t, times_s, tokens_per_repeat)
        return t


def telemetry_source(device_type: str, nvml_index: int | None = None, uuid: str | None = None) -> TelemetrySource:
    """The telemetry source of a job's device: NVML for a CUDA GPU, the CPU's counters for the CPU,
    and for any other device an `UnavailableSource` naming it."""
    if device_type == "cuda":
        return open_nvml(nvml_index or 0, uuid)
    if device_type == "cpu":
        return CpuSource()
    return UnavailableSource("none", f"no telemetry for {device_type} devices")
