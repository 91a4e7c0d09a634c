"""Telemetry per phase: NVML driven by a fake module (clocks, power, throttle reasons, energy, errors,
the sampler thread), the CPU's cpufreq and RAPL from fake sysfs trees (wrap-around included), the
real CPU path through a real gpt2-tiny phase, the `throttled` flag in every report format, `farm
diff`'s explanation, and reports over hostile stored telemetry."""

from __future__ import annotations

import json
import os
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from farm.engine.phases import JobContext, precision_settings, run_forward, run_init
from farm.engine.runner import run_job
from farm.engine.telemetry import (
    CpuSource,
    NvmlProbe,
    NvmlSource,
    UnavailableSource,
    cpu_freqs,
    energy_counters,
    open_nvml,
    telemetry_source,
)
from farm.engine.timing import Timer
from farm.nightly.regress import Point
from farm.reports.diff import environment_diff
from farm.reports.formats import render
from farm.reports.history import point_flags
from farm.reports.report import build_report
from farm.results import synthetic as syn
from farm.results.records import records_from_results
from farm.results.result import JobResult
from farm.results.telemetry import PhaseTelemetry, Range, explain_text, telemetry_facts, throttle_text
from farm.spec import parse_spec

FORMATS = ["terminal", "markdown", "csv", "json", "html"]


class NVMLError(Exception):
    """pynvml's error: the NVML return code in `value`."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml(types.SimpleNamespace):
    """A pynvml stand-in: readings from lists (the last one repeats), an energy counter in mJ,
    and optional failures per call name (a callable of the call's count returning an error or None)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.sm = kw.get("sm", [1980])
        self.mem = kw.get("mem", [2619])
        self.power_mw = kw.get("power_mw", [650_000])
        self.temp = kw.get("temp", [60])
        self.util = kw.get("util", [100])
        self.masks = kw.get("masks", [0])
        self.energy_step = kw.get("energy_step_mj", 250_000)  # each reading is this much above the last
        self.fail: dict[str, Callable[[int], Exception | None]] = kw.get("fail", {})
        self.calls: dict[str, int] = {}
        self.shutdowns = 0
        self.sampled = threading.Event()
        if kw.get("old_api"):
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._reasons
        else:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._reasons
        if not kw.get("no_energy_call"):
            self.nvmlDeviceGetTotalEnergyConsumption = self._energy

    def _call(self, name: str, values: list[Any]) -> Any:
        n = self.calls.get(name, 0)
        self.calls[name] = n + 1
        err = self.fail.get(name, lambda _n: None)(n)
        if err is not None:
            raise err
        return values[min(n, len(values) - 1)]

    def nvmlInit(self) -> None:
        self._call("init", [None])

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"h{i}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return f"h-{uuid}"

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMaxClockInfo(self, h: str, kind: int) -> int:
        return 1980

    def nvmlDeviceGetDefaultApplicationsClock(self, h: str, kind: int) -> int:
        return 1590

    def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
        return 700_000

    def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> int:
        return self._call("clock", self.sm) if kind == 1 else self._call("mem", self.mem)

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return self._call("power", self.power_mw)

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return self._call("temp", self.temp)

    def nvmlDeviceGetUtilizationRates(self, h: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=self._call("util", self.util), memory=50)

    def _reasons(self, h: str) -> int:
        mask = self._call("reasons", self.masks)
        if self.calls["reasons"] >= 3:
            self.sampled.set()
        return mask

    def _energy(self, h: str) -> int:
        n = self.calls.get("energy", 0)
        self._call("energy", [None])
        return 1_000_000 + self.energy_step * n


def _source(fake: FakeNvml, hz: float = 20.0) -> NvmlSource:
    return NvmlSource(fake, "h0", "GPU 0 (fake)", owns_init=False, sample_hz=hz)


def _driven(fake: FakeNvml, samples: int) -> NvmlProbe:
    """A probe sampled `samples` times by the test itself (no thread), then stopped."""
    probe = NvmlProbe(_source(fake))
    probe.start(sampling=False)
    for _ in range(samples):
        probe.sample()
    probe.stop()
    return probe


# -- NVML ---------------------------------------------------------------------------------------
def test_nvml_summary_clocks_power_temperature_and_energy() -> None:
    fake = FakeNvml(sm=[1400, 1980, 1700, 1980, 1600], power_mw=[300_000, 690_000, 700_000, 650_000, 500_000])
    t = _driven(fake, 5).summary([0.02, 0.01, 0.03], tokens_per_repeat=1000)
    assert t.source == "nvml" and t.samples == 5 and t.errors == 0 and t.notes == []
    assert t.sm_clock_mhz == Range(min=1400, median=1700, max=1980)
    assert t.power_w == Range(min=300, median=650, max=700)
    assert t.mem_clock_mhz == Range(min=2619, median=2619, max=2619) and t.temperature_c is not None
    assert (t.max_sm_clock_mhz, t.base_sm_clock_mhz, t.power_limit_w) == (1980, 1590, 700)
    assert t.energy_j == pytest.approx(250.0) and t.energy_source == "NVML total energy counter"
    assert t.window_s is not None and t.window_s > 0 and t.mean_power_w == pytest.approx(250.0 / t.window_s)
    assert t.mean_power_w is not None and t.energy_j_per_repeat is not None
    assert t.energy_j_per_repeat == pytest.approx(t.mean_power_w * 0.02)  # mean power x the median repeat
    assert t.energy_j_per_token == pytest.approx(t.energy_j_per_repeat / 1000)
    assert not t.throttled and t.throttle_reasons == {}
    PhaseTelemetry.model_validate(t.model_dump(mode="json"))  # stores and reads back


def test_throttle_reasons_name_thermal_power_and_hardware_but_not_idle_or_settings() -> None:
    masks = [0x0, 0x4, 0x4 | 0x40, 0x1, 0x2 | 0x10 | 0x100, 0x8 | 0x20 | 0x80, 0x4, 0x0]
    t = _driven(FakeNvml(masks=masks), len(masks)).summary([0.01], 10)
    assert t.throttled
    assert t.throttle_reasons == {
        "power cap": 3 / 8,
        "thermal (hardware)": 1 / 8,
        "hardware slowdown": 1 / 8,
        "thermal (software)": 1 / 8,
        "power brake (hardware)": 1 / 8,
    }
    text = throttle_text(t.model_dump(mode="json"))
    assert text is not None and "power cap 38%" in text and "of 8 samples" in text and "1980" in text
    idle = _driven(FakeNvml(masks=[0x1, 0x2, 0x10, 0x100, 0x0]), 5).summary([0.01], 10)
    assert not idle.throttled and idle.throttle_reasons == {}  # idle and clock settings are not throttling
    assert throttle_text(idle.model_dump(mode="json")) is None


def test_older_pynvml_throttle_call_is_used() -> None:
    t = _driven(FakeNvml(masks=[0x40], old_api=True), 2).summary([0.01], 10)
    assert t.throttle_reasons == {"thermal (hardware)": 1.0}


def test_energy_counter_absent_or_unsupported_leaves_energy_none_with_the_reason() -> None:
    missing = _driven(FakeNvml(no_energy_call=True), 2).summary([0.01], 10)
    assert missing.energy_j is None and missing.energy_j_per_token is None
    assert any("nvmlDeviceGetTotalEnergyConsumption" in n for n in missing.notes)
    pre_volta = FakeNvml(fail={"energy": lambda n: NVMLError(3)})
    t = _driven(pre_volta, 2).summary([0.01], 10)
    assert t.energy_j is None and any("Volta" in n for n in t.notes)
    assert pre_volta.calls["energy"] == 1  # not asked again once it said "not supported"


def test_nvml_errors_mid_phase_are_noted_and_the_rest_is_kept() -> None:
    fake = FakeNvml(
        fail={
            "power": lambda n: NVMLError(999) if n in (1, 2) else None,  # unknown error, twice
            "temp": lambda n: NVMLError(3),  # not supported: asked once, then left out
        },
        power_mw=[400_000, 0, 0, 600_000],
    )
    t = _driven(fake, 4).summary([0.01], 10)
    assert t.errors == 2 and t.samples == 4
    assert t.power_w == Range(min=400, median=500, max=600)  # the two good readings
    assert t.temperature_c is None and fake.calls["temp"] == 1
    assert any(n.startswith("power: reading failed during the phase") for n in t.notes)
    assert any(n == "temperature: not supported by this GPU or driver" for n in t.notes)
    assert t.sm_clock_mhz is not None and t.energy_j == pytest.approx(250.0)


def _samplers() -> list[threading.Thread]:
    return [th for th in threading.enumerate() if th.name == "farm-nvml-sampler"]


def test_sampler_thread_samples_then_stops_and_joins() -> None:
    fake = FakeNvml(masks=[0, 0x4])
    probe = _source(fake, hz=200).begin()
    assert probe.alive and len(_samplers()) == 1
    assert fake.sampled.wait(30), "the sampler took no samples"
    probe.stop()
    assert not probe.alive and _samplers() == []
    n = probe.samples
    probe.stop()  # idempotent
    t = probe.summary([0.01], 10)
    assert t.samples == n >= 3 and t.sampler_cpu_s is not None and t.throttled
    assert fake.calls["energy"] == 2  # before and after, once each


def test_sampler_gives_up_when_every_reading_fails() -> None:
    always = lambda n: NVMLError(15)  # noqa: E731  (NVML_ERROR_GPU_IS_LOST)
    fake = FakeNvml(fail={k: always for k in ("clock", "mem", "power", "temp", "util", "reasons")})
    probe = _source(fake, hz=1000).begin()
    assert probe._thread is not None
    probe._thread.join(60)  # it stops by itself after MAX_CONSECUTIVE_ERRORS
    t = probe.summary([0.01], 10)
    assert any("sampler stopped after" in n for n in t.notes) and t.errors >= 50
    assert t.sm_clock_mhz is None and t.energy_j == pytest.approx(250.0)


def test_open_nvml_without_a_driver_or_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = FakeNvml(fail={"init": lambda n: NVMLError(9)})  # NVML_ERROR_DRIVER_NOT_LOADED
    src = open_nvml(0, nvml=broken)
    assert isinstance(src, UnavailableSource)
    t = src.begin().summary([0.01], 10)
    assert t.source == "nvml" and t.notes[0].startswith("NVML unavailable") and t.energy_j is None
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert isinstance(open_nvml(0), UnavailableSource)
    ok = FakeNvml()
    good = open_nvml(3, uuid="GPU-abc", nvml=ok)
    assert isinstance(good, NvmlSource) and good.handle == "h-GPU-abc" and "H100" in good.label
    good.close()
    good.close()
    assert ok.shutdowns == 1


def _tiny_ctx(**kw: Any) -> tuple[JobContext, Any]:
    spec = parse_spec({"model": "gpt2-tiny", "batch": 1, "seq": 16, "repeats": 3, "warmup": 1, **kw})
    import torch

    return JobContext(spec=spec, device=torch.device("cpu"), timer=Timer(), peak=None), spec


def test_a_real_phase_with_a_failing_fake_nvml_still_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real gpt2-tiny forward observed by the NVML sampler (fake NVML, errors mid-phase): the phase
    is measured as usual and its telemetry notes the errors; the sampler is gone afterwards."""
    fake = FakeNvml(fail={"clock": lambda n: NVMLError(999)}, masks=[0x40])
    ctx, spec = _tiny_ctx()
    ctx.telemetry = _source(fake, hz=200)
    with precision_settings(spec):
        init = run_init(ctx)
        fwd = run_forward(ctx)
    assert _samplers() == []
    assert fwd.status in ("ok", "unverified") and len(fwd.times_s) == 3
    t = fwd.telemetry
    assert t is not None and t.source == "nvml" and t.samples >= 1 and t.throttled
    assert t.errors == t.samples and t.sm_clock_mhz is None and t.power_w is not None
    assert any(n.startswith("SM clock: reading failed during the phase") for n in t.notes)
    assert t.energy_j == pytest.approx(250.0) and t.energy_j_per_token is not None
    assert init.telemetry is not None and init.telemetry.energy_j == pytest.approx(250.0)
    assert init.telemetry.energy_j_per_token is None  # building the model processes no tokens


def test_observe_for_another_phase_and_without_a_source() -> None:
    """`JobContext.observe` (the API the generate phase uses): a summary per block, None without a source."""
    ctx, _ = _tiny_ctx()
    with ctx.observe("generate") as obs:
        pass
    assert obs.summary([0.1], 64) is None
    ctx.telemetry = _source(FakeNvml(), hz=200)
    with pytest.raises(RuntimeError), ctx.observe("generate") as obs:
        raise RuntimeError("the block failed")
    assert _samplers() == []  # stopped and joined although the block raised
    t = obs.summary([0.5, 0.4], 128)
    assert t is not None and t.energy_j_per_token == pytest.approx(t.energy_j_per_repeat / 128)  # type: ignore[operator]


# -- CPU ------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _cpufreq(root: Path, cur_khz: list[int], max_khz: int = 3_500_000, base_khz: int | None = 2_500_000) -> None:
    for i, khz in enumerate(cur_khz):
        d = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        _write(d / "scaling_cur_freq", str(khz))
        _write(d / "cpuinfo_max_freq", str(max_khz))
        if base_khz:
            _write(d / "base_frequency", str(base_khz))


def _rapl(root: Path, zone: str, name: str, uj: int, max_uj: int | None = 262_143_328_850) -> Path:
    d = root / "sys/class/powercap" / zone
    _write(d / "name", name)
    _write(d / "energy_uj", str(uj))
    if max_uj is not None:
        _write(d / "max_energy_range_uj", str(max_uj))
    return d / "energy_uj"


def test_cpufreq_per_cpu_with_max_and_base(tmp_path: Path) -> None:
    _cpufreq(tmp_path, [2_000_000, 3_000_000, 2_400_000])
    mhz, source, note = cpu_freqs(tmp_path)
    assert mhz == [2000.0, 3000.0, 2400.0] and source == "cpufreq scaling_cur_freq" and note is None
    src = CpuSource(tmp_path)
    probe = src.begin()
    _write(tmp_path / "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1200000")  # it slowed down
    t = probe.summary([0.1], 100)
    assert t.cpu_freq_mhz == Range(min=1200, median=2400, max=3000)  # 3 CPUs before + 3 after
    assert (t.cpu_max_freq_mhz, t.cpu_base_freq_mhz) == (3500, 2500)
    facts = telemetry_facts(t.model_dump(mode="json"))
    assert facts["clock"] == "CPU median 2400 MHz, 69% of max 3500, below base 2500"


def test_cpufreq_absent_is_a_note_not_a_number(tmp_path: Path) -> None:
    mhz, source, note = cpu_freqs(tmp_path)
    assert mhz == [] and source is None and note == "CPU frequency not readable (no cpufreq in sysfs)"
    t = CpuSource(tmp_path).begin().summary([0.1], 100)
    assert t.cpu_freq_mhz is None and note in t.notes
    assert "RAPL not exposed (no /sys/class/powercap)" in t.notes and t.energy_j is None


def test_rapl_packages_summed_with_wrap_around_sub_zones_ignored(tmp_path: Path) -> None:
    top = 262_143_328_850
    p0 = _rapl(tmp_path, "intel-rapl:0", "package-0", top - 1_000_000)  # 1 J before it wraps
    p1 = _rapl(tmp_path, "intel-rapl:1", "package-1", 10_000_000)
    core = _rapl(tmp_path, "intel-rapl:0:0", "core", 5)
    _rapl(tmp_path, "intel-rapl:2", "psys", 7)  # platform, not a package
    counters, note = energy_counters(tmp_path)
    assert [c.name for c in counters] == ["intel-rapl:0 package-0", "intel-rapl:1 package-1"] and note is None
    src = CpuSource(tmp_path)
    probe = src.begin()
    p0.write_text("4000000\n")  # wrapped: 1 J + 4 J
    p1.write_text("13000000\n")  # 3 J
    core.write_text("99999999\n")
    t = probe.summary([0.5, 0.25, 0.75], tokens_per_repeat=200)
    assert t.energy_j == pytest.approx(8.0)
    assert t.energy_source is not None and "intel-rapl:0 package-0" in t.energy_source
    assert t.energy_j_per_repeat == pytest.approx(8.0 / t.window_s * 0.5)  # type: ignore[operator]
    assert t.energy_j_per_token == pytest.approx(t.energy_j_per_repeat / 200)  # type: ignore[operator]


def test_rapl_backwards_without_range_and_amd_energy(tmp_path: Path) -> None:
    p0 = _rapl(tmp_path, "intel-rapl:0", "package-0", 50, max_uj=None)
    probe = CpuSource(tmp_path).begin()
    p0.write_text("10\n")
    t = probe.summary([0.1], 10)
    assert t.energy_j is None and any("wrap range is unknown" in n for n in t.notes)
    amd = tmp_path / "amd"
    hw = amd / "sys/class/hwmon/hwmon3"
    _write(hw / "name", "amd_energy")
    _write(hw / "energy1_label", "Ecore000")
    _write(hw / "energy1_input", "1")
    _write(hw / "energy17_label", "Esocket0")
    _write(hw / "energy17_input", "2000000")
    src = CpuSource(amd)
    assert [c.name for c in src.counters] == ["amd_energy Esocket0"]
    probe = src.begin()
    (hw / "energy17_input").write_text("4500000\n")
    assert probe.summary([0.1], 10).energy_j == pytest.approx(2.5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_rapl_root_only_counter_says_so(tmp_path: Path) -> None:
    p0 = _rapl(tmp_path, "intel-rapl:0", "package-0", 50)
    p0.chmod(0o000)
    counters, note = energy_counters(tmp_path)
    assert counters == [] and note is not None and "root-only" in note


def test_rapl_counter_without_a_number_says_so(tmp_path: Path) -> None:
    _rapl(tmp_path, "intel-rapl:0", "package-0", 0).write_text("\n")
    t = CpuSource(tmp_path).begin().summary([0.1], 10)
    assert t.energy_j is None and "RAPL energy not readable (intel-rapl:0: energy_uj holds no number)" in t.notes


def test_real_cpu_phase_carries_frequency_and_energy_or_the_notes() -> None:
    """This machine, a real gpt2-tiny job through run_job: each phase has CPU telemetry; a figure
    where the machine exposes it, else a note that says why."""
    spec = parse_spec(
        {"model": "gpt2-tiny", "batch": 1, "seq": 32, "repeats": 2, "warmup": 1, "phases": "init,forward"}
    )
    res = run_job(spec.expand(run_id="tel")[0])
    assert res.status in ("ok", "unverified"), res.error
    for name in ("init", "forward"):
        t = res.phases[name].telemetry
        assert t is not None and t.source == "cpu" and t.samples == 0  # read before and after only
        assert t.cpu_freq_mhz is not None or any("CPU frequency not readable" in n for n in t.notes)
        if t.cpu_freq_mhz is not None:
            assert t.cpu_freq_source is not None
        assert t.energy_j is not None or any(n.startswith("RAPL") for n in t.notes)
    stored = JobResult.model_validate_json(res.model_dump_json())
    assert stored.phases["forward"].telemetry == res.phases["forward"].telemetry


def test_telemetry_source_by_device() -> None:
    assert isinstance(telemetry_source("cpu"), CpuSource)
    mps = telemetry_source("mps").begin().summary([0.1], 1)
    assert mps.source == "none" and mps.notes == ["no telemetry for mps devices"]


# -- reports and diff -------------------------------------------------------------------------------
T: dict[str, Sequence[float]] = {"forward": [0.0050, 0.0051, 0.0049], "train": [0.020, 0.021, 0.019]}
HOT = PhaseTelemetry(
    source="nvml",
    samples=120,
    sample_hz=20,
    sm_clock_mhz=Range(min=1100, median=1200, max=1500),
    max_sm_clock_mhz=1980,
    base_sm_clock_mhz=1590,
    power_w=Range(min=600, median=690, max=700),
    power_limit_w=700,
    throttled=True,
    throttle_reasons={"thermal (hardware)": 0.75, "power cap": 0.5},
    energy_j=120.0,
    energy_j_per_token=0.0012,
)
COOL = HOT.model_copy(
    update={
        "sm_clock_mhz": Range(min=1970, median=1980, max=1980),
        "throttled": False,
        "throttle_reasons": {},
        "power_w": Range(min=400, median=450, max=480),
    }
)


def _with(res: JobResult, phase: str, t: PhaseTelemetry | dict[str, Any] | Any) -> JobResult:
    res.phases[phase].telemetry = t  # type: ignore[assignment]
    return res


def test_throttled_flag_in_every_format() -> None:
    base = syn.result("r1", 1, "cuda", T)
    hot = _with(syn.result("r1", 2, "cuda:h100", T), "forward", HOT)
    report = build_report(records_from_results([base, hot]))
    fwd = next(r for r in report.rows if r.record.job_id == hot.job_id and r.phase_name == "forward")
    flag = next(f for f in fwd.flags if f.kind == "throttled")
    assert "thermal (hardware) 75%" in flag.text and "power cap 50%" in flag.text and "1200 MHz" in flag.text
    train = next(r for r in report.rows if r.record.job_id == hot.job_id and r.phase_name == "train")
    assert all(f.kind != "throttled" for f in train.flags)
    for fmt in FORMATS:
        out = render(report, fmt)
        assert "throttled" in out, fmt
        assert "thermal (hardware) 75%" in out, fmt
    rows = {(r["job_id"], r["phase"]): r for r in json.loads(render(report, "json"))["rows"]}
    assert rows[(hot.job_id, "forward")]["throttled"] is True
    assert "thermal (hardware) 75%" in rows[(hot.job_id, "forward")]["throttled_reason"]
    assert rows[(hot.job_id, "train")]["throttled"] is False and rows[(base.job_id, "forward")]["throttled"] is False
    assert "throttled,throttled_reason" in render(report, "csv").splitlines()[0]
    stored = JobResult.model_validate_json(hot.model_dump_json())
    point = Point(result=stored, phase="forward", times_s=tuple(stored.phases["forward"].times_s))
    assert "throttled" in point_flags(point)  # the history plot marks it too


def test_a_throttled_baseline_is_named_on_the_speedup_row() -> None:
    slower: dict[str, Sequence[float]] = {k: [t * 100 for t in v] for k, v in T.items()}
    base = _with(syn.result("r1", 1, "cpu", slower), "forward", HOT)
    other = syn.result("r1", 2, "cuda", T)
    report = build_report(records_from_results([base, other]))
    row = next(r for r in report.rows if r.record.job_id == other.job_id and r.phase_name == "forward")
    assert any(f.kind == "baseline" and "throttled" in f.text for f in row.flags)


HOSTILE: list[Any] = [
    "throttled",
    ["throttled", True],
    {"throttled": "yes"},
    {"throttled": 1},
    {"throttled": True},
    {"throttled": True, "throttle_reasons": [1, 2]},
    {"throttled": True, "throttle_reasons": {"<script>alert(1)</script>": 1.0, "power cap": "nan"}},
    {"throttled": True, "throttle_reasons": {"power cap": float("inf")}, "samples": True},
    {"throttled": True, "sm_clock_mhz": {"median": "fast"}, "max_sm_clock_mhz": [1]},
    {"throttled": True, "sm_clock_mhz": [1, 2], "samples": -5, "power_w": {"median": None}},
    {"throttled": True, "sm_clock_mhz": {"median": 1e308}, "max_sm_clock_mhz": 1e-308},
    {"source": "nvml", "samples": 10**30, "energy_j": "lots", "energy_j_per_token": {}},
]


@pytest.mark.parametrize("bad", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_stored_telemetry_never_breaks_a_report(bad: Any) -> None:
    res = syn.result("r1", 1, "cuda", T)
    records = records_from_results([res])
    records[0].phases["forward"].telemetry = bad  # as read from the store: not validated
    report = build_report(records)
    for fmt in FORMATS:
        out = render(report, fmt)
        assert "<script>alert" not in out, fmt  # an unknown reason name is never shown
    fwd = next(r for r in report.rows if r.phase_name == "forward")
    thr = [f for f in fwd.flags if f.kind == "throttled"]
    assert len(thr) == (1 if isinstance(bad, dict) and bad.get("throttled") is True else 0)
    assert isinstance(explain_text(bad), str) and isinstance(telemetry_facts(bad), dict)


def test_diff_explains_a_throttled_slow_result() -> None:
    fast = _with(syn.result("r1", 1, "cuda", T), "forward", COOL)
    slow = _with(syn.result("r2", 1, "cuda", {**T, "forward": [0.008, 0.0081, 0.0079]}), "forward", HOT)
    rows = {(s, k): (a, b) for s, k, a, b in environment_diff(fast, slow).rows}
    assert rows["measurement", "forward.throttled"] == ("no", "thermal (hardware) 75%, power cap 50% of 120 samples")
    assert rows["measurement", "forward.clock"] == (
        "SM median 1980 MHz, 100% of max 1980",
        "SM median 1200 MHz, 61% of max 1980, below base 1590",
    )
    assert rows["measurement", "forward.power"] == ("median 450 W of 700 W limit", "median 690 W of 700 W limit")
    assert ("measurement", "forward.energy") not in rows  # equal on both sides
    assert ("measurement", "train.clock") not in rows  # no telemetry on either side: "-" both


def test_telemetry_model_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Range(min=2, median=1, max=3)
    with pytest.raises(ValueError):
        PhaseTelemetry(source="nvml", throttle_reasons={"power cap": 1.5})
    with pytest.raises(ValueError):
        PhaseTelemetry(source="cpu", energy_j=float("nan"))
    with pytest.raises(ValueError):
        PhaseTelemetry(source="cpu", surprise=1)  # type: ignore[call-arg]
    assert Range.of([float("nan")]) is None and Range.of([3, 1, 2]) == Range(min=1, median=2, max=3)
