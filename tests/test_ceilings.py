"""A ceiling for every device (docs/ceilings.md): GPUs outside the table derive one from their
properties, CPUs get their theoretical peak, and where none can be had a phase is `unverified`,
never `ok`. The seed's mistake (a GPT-2 small forward of 2.3 TFLOP in 6 ms, about 390 TFLOP/s)
is replayed against each."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from farm.cli.main import app
from farm.engine.hardware import cpu_peak, fingerprint
from farm.engine.runner import run_job
from farm.errors import SpecError
from farm.flops import forward_flops, min_phase_flops
from farm.reports.importer import recheck, validate
from farm.results import synthetic as syn
from farm.results.machine import GpuInfo, MachineFingerprint, gpu_tag
from farm.results.peaks import (
    CPU_MAX_MHZ,
    GPU_PEAKS_TFLOPS,
    SM_FLOP_PER_CYCLE,
    Peak,
    cpu_theoretical_peak,
    derived_gpu_peak,
    gpu_ceiling,
)
from farm.results.result import JobResult, PhaseResult, measured_phase
from farm.spec import PRESETS, BenchSpec, parse_spec

GPT2 = PRESETS["gpt2"]
KEYS = ("float32", "tf32", "bfloat16", "float16")
Dtype = Literal["float32", "bfloat16", "float16"]
HUGE = Peak(flops=1e18, source="table: made up", tolerance=1.0)


def seed_forward(peak: Peak | None) -> PhaseResult:
    """The seed's GPU forward: GPT-2 small at 8 x 1024, 6 ms a repeat (about 390 TFLOP/s)."""
    return measured_phase(
        "forward",
        [0.006] * 5,
        [],
        flops=forward_flops(GPT2, 8, 1024),
        min_flops=min_phase_flops(GPT2, 8, 1024, "forward"),
        tokens=8 * 1024,
        peak=peak,
    )


def gpu(name: str, cc: str | None = None, sms: int | None = None, mhz: int | None = None) -> GpuInfo:
    return GpuInfo(index=0, name=name, tag=gpu_tag(name), compute_capability=cc, sm_count=sms, max_sm_clock_mhz=mhz)


A10G = gpu("NVIDIA A10G", "8.6", 80, 1710)
B200 = gpu("NVIDIA B200", "10.0", 148, 1965)


# -- the derived per-SM rates against the published table --------------------------------------
# (tag, compute capability, SMs, the clock each datasheet figure assumes). NVIDIA's H100 SXM sheet
# quotes CUDA-core figures at its 1980 MHz max boost and tensor-core figures at 1830 MHz.
PUBLISHED = [
    ("a100", "8.0", 108, dict.fromkeys(KEYS, 1410)),
    ("h100", "9.0", 132, {"float32": 1980, "tf32": 1830, "bfloat16": 1830, "float16": 1830}),
    ("l4", "8.9", 58, dict.fromkeys(KEYS, 2040)),
    ("t4", "7.5", 40, dict.fromkeys(KEYS, 1590)),
    ("v100", "7.0", 80, dict.fromkeys(KEYS, 1530)),
    ("a10", "8.6", 72, dict.fromkeys(KEYS, 1695)),
    ("l40s", "8.9", 142, dict.fromkeys(KEYS, 2520)),
]


@pytest.mark.parametrize(("tag", "cc", "sms", "clocks"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_derived_rates_reproduce_the_published_peaks(tag: str, cc: str, sms: int, clocks: dict[str, int]) -> None:
    for key in KEYS:
        dtype, prec = ("float32", "high") if key == "tf32" else (key, "highest")
        derived = derived_gpu_peak(cc, sms, clocks[key], dtype, prec)
        assert derived is not None
        assert derived.flops / 1e12 == pytest.approx(GPU_PEAKS_TFLOPS[tag][key], rel=0.03), (tag, key)


def test_derived_ceiling_is_an_upper_bound_where_consumer_parts_halve_the_rate() -> None:
    """The RTX 4090 and L40 halve tensor rates with fp32 accumulate; the derivation does not."""
    for tag, cc, sms, mhz in (("rtx4090", "8.9", 128, 2520), ("l40", "8.9", 142, 2490)):
        for key in KEYS:
            dtype, prec = ("float32", "high") if key == "tf32" else (key, "highest")
            derived = derived_gpu_peak(cc, sms, mhz, dtype, prec)
            assert derived is not None and derived.flops >= 0.99 * GPU_PEAKS_TFLOPS[tag][key] * 1e12, (tag, key)


def test_every_known_compute_capability_has_every_dtype_and_tensor_rates_dominate() -> None:
    for cc, rates in SM_FLOP_PER_CYCLE.items():
        assert set(rates) == set(KEYS), cc
        assert rates["bfloat16"] >= rates["float32"] and rates["tf32"] >= rates["float32"], cc


def test_derived_source_names_the_properties() -> None:
    p = gpu_ceiling(gpu("NVIDIA H20", "9.0", 132, 1980), "bfloat16", "highest")
    assert p is not None and p.source == "derived: sm_90, 132 SM x 1980 MHz x 4096 FLOP/cycle bf16 dense"
    assert p.flops == 132 * 1980e6 * 4096 and p.tolerance == 1.0
    # The table wins where it knows the part, whatever the properties say.
    tabled = gpu_ceiling(gpu("NVIDIA A100-SXM4-80GB", "8.0", 108, 1410), "bfloat16", "highest")
    assert tabled is not None and tabled.source == "table: a100 bfloat16 dense"


# -- the seed's mistake replayed --------------------------------------------------------------------
def test_seed_on_a_gpu_outside_the_table_is_invalid_against_its_derived_peak() -> None:
    a10g = seed_forward(gpu_ceiling(A10G, "bfloat16", "highest"))  # 80 x 1710 MHz x 1024 = 140 TFLOP/s
    assert a10g.status == "invalid"
    assert "derived: sm_86, 80 SM x 1710 MHz x 1024 FLOP/cycle bf16 dense" in (a10g.invalid_reason or "")
    b200_fp32 = seed_forward(gpu_ceiling(B200, "float32", "highest"))  # 148 x 1965 MHz x 256 = 74 TFLOP/s
    assert b200_fp32.status == "invalid" and "sm_100" in (b200_fp32.invalid_reason or "")
    # In bf16 a B200 (2.38 PFLOP/s dense) could do it: plausible, ok, MFU under 100%.
    b200 = seed_forward(gpu_ceiling(B200, "bfloat16", "highest"))
    assert b200.status == "ok" and b200.mfu is not None and b200.mfu < 1


@pytest.mark.parametrize(
    "card",
    [
        gpu("NVIDIA Future GPU 9000"),  # nothing to derive from
        gpu("NVIDIA Future GPU 9000", "13.0", 200, 2000),  # a compute capability not known
        gpu("AMD Instinct MI300X", "9.4", 304, 2100),  # ROCm's gfx target is no CUDA compute capability
        gpu("NVIDIA B200", "10.0", None, 1965),  # SM count missing
    ],
)
def test_seed_on_a_gpu_with_nothing_to_derive_from_is_unverified(card: GpuInfo) -> None:
    assert gpu_ceiling(card, "bfloat16", "highest") is None
    phase = seed_forward(None)
    assert phase.status == "unverified" and phase.mfu is None and "no ceiling" in (phase.invalid_reason or "")


def test_a_fingerprint_cannot_declare_implausible_properties() -> None:
    with pytest.raises(ValidationError, match="sm_count"):
        gpu("NVIDIA B200", "10.0", 10_000, 1965)
    with pytest.raises(ValidationError, match="max_sm_clock_mhz"):
        gpu("NVIDIA B200", "10.0", 148, 50_000)
    with pytest.raises(ValidationError, match="compute_capability"):
        gpu("NVIDIA B200", "ten", 148, 1965)


# -- imports re-derive the ceiling -------------------------------------------------------------------
SEED_TIMES: dict[str, Sequence[float]] = {"forward": [0.006] * 5}


def _seed_result(
    fp: MachineFingerprint, device: str = "cuda", peak: Peak = HUGE, dtype: Dtype = "bfloat16"
) -> JobResult:
    spec = BenchSpec(model="gpt2", batch=8, seq=1024, repeats=5, dtype=dtype)
    res = syn.result("seed1", 0, device, SEED_TIMES, spec=spec, fingerprint=fp, peak=peak)
    assert res.status == "ok"  # as the file claims: its own (made-up) peak let it pass
    return res


def test_imported_seed_from_an_unknown_gpu_is_unverified() -> None:
    checked = recheck(_seed_result(syn.machine("lab", gpu="NVIDIA Future GPU 9000")), "seed.json")
    assert checked.status == "unverified"
    fwd = checked.phases["forward"]
    assert fwd.peak_flops is None and fwd.mfu is None
    assert "'NVIDIA Future GPU 9000' is not in the table" in (fwd.invalid_reason or "")
    assert "re-checked as unverified" in " ".join(checked.warnings)


def test_imported_seed_from_a_gpu_less_fingerprint_is_unverified() -> None:
    checked = recheck(_seed_result(syn.machine("lab")), "seed.json")
    assert checked.status == "unverified"
    assert "fingerprint lists no GPU" in (checked.phases["forward"].invalid_reason or "")
    assert "fingerprint lists no GPU" in (checked.error or "")


def test_imported_seed_with_a_self_declared_huge_peak_is_invalid() -> None:
    # A tabled GPU: the table's peak, not the file's.
    a100 = recheck(_seed_result(syn.machine("lab", gpu="NVIDIA A100-SXM4-80GB")), "seed.json")
    assert a100.status == "invalid" and "table: a100 bfloat16 dense" in (a100.error or "")
    # A GPU outside the table whose worker recorded its properties: derived again from them.
    fp = syn.machine("lab", gpu="NVIDIA A10G")
    fp = fp.model_copy(update={"gpus": [fp.gpus[0].model_copy(update=A10G.model_dump(exclude={"index"}))]})
    a10g = recheck(_seed_result(fp), "seed.json")
    assert a10g.status == "invalid" and "derived: sm_86, 80 SM x 1710 MHz" in (a10g.error or "")
    # A CPU: its theoretical peak from the fingerprint (2 cores, AVX-512, clock not recorded: 6500 MHz).
    cpu = recheck(_seed_result(syn.machine("lab"), device="cpu", dtype="float32"), "seed.json")
    assert cpu.status == "invalid"
    assert "theoretical: 2 cores x 64 FLOP/cycle" in (cpu.error or "") and "1e+18" not in (cpu.error or "")


def test_none_of_the_seed_imports_comes_back_ok() -> None:
    fps = [syn.machine("a", gpu="NVIDIA Future GPU 9000"), syn.machine("b"), syn.machine("c", gpu="NVIDIA L4")]
    for fp in fps:
        assert recheck(_seed_result(fp), "seed.json").status != "ok"


def test_imported_cpu_clock_is_bounded_and_a_current_clock_uncertain() -> None:
    fp = syn.machine("lab").model_copy(update={"cpu_clock_mhz": 9000.0, "cpu_clock_kind": "max"})
    spec = BenchSpec(model="gpt2", batch=1, seq=128, repeats=5)
    res = syn.result("clk1", 0, "cpu", {"forward": [0.5] * 5}, spec=spec, fingerprint=fp)
    fwd = recheck(res, "x").phases["forward"]
    assert fwd.peak_flops == pytest.approx(2 * 64 * CPU_MAX_MHZ * 1e6)
    assert "bounded from 9000 MHz" in (fwd.peak_source or "")
    fp = fp.model_copy(update={"cpu_clock_mhz": 2445.0, "cpu_clock_kind": "current"})
    # 2 x 64 x 2445 MHz = 313 GFLOP/s, uncertain; 36.5 GFLOP in 0.08 s = 456 GFLOP/s: above, within 2x.
    res = syn.result("clk2", 0, "cpu", {"forward": [0.08] * 5}, spec=spec, fingerprint=fp)
    checked = recheck(res, "x")
    assert checked.status == "unverified" and "uncertain ceiling" in (checked.error or "")


def test_implausible_fingerprint_in_an_import_file_is_refused_naming_the_field() -> None:
    doc = _seed_result(syn.machine("lab", gpu="NVIDIA A10G")).model_dump(mode="json")
    doc["machine"]["gpus"][0].update(compute_capability="8.6", sm_count=10_000, max_sm_clock_mhz=1710)
    with pytest.raises(SpecError) as e:
        validate([doc])
    assert e.value.field == "results[0].machine.gpus.0.sm_count"


# -- CPU ceilings from the ISA -----------------------------------------------------------------------
def _cpu(
    flags: list[str], dtype: str = "float32", prec: str = "highest", kind: str = "max", arch: str = "x86_64"
) -> Peak | None:
    return cpu_theoretical_peak(
        flags=flags, arch=arch, cores=4, clock_mhz=3000.0, clock_kind=kind, dtype=dtype, matmul_precision=prec
    )


def test_cpu_theoretical_peak_from_the_isa() -> None:
    spr = ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "fma"]
    assert _cpu(spr).flops == 4 * 64 * 3000e6  # type: ignore[union-attr]
    assert _cpu(spr, "bfloat16").flops == 4 * 1024 * 3000e6  # type: ignore[union-attr]
    assert _cpu(spr, "float32", "medium").flops == 4 * 1024 * 3000e6  # type: ignore[union-attr]
    assert _cpu(["avx2", "avx512_bf16", "avx512f", "fma"], "bfloat16").flops == 4 * 128 * 3000e6  # type: ignore[union-attr]
    zen3 = _cpu(["avx", "avx2", "fma"], "bfloat16")
    assert zen3 is not None and zen3.flops == 4 * 32 * 3000e6 and "bf16 has no faster path" in zen3.source
    assert _cpu(["avx"]).flops == 4 * 16 * 3000e6  # type: ignore[union-attr]
    assert _cpu(["avx2", "fma"]).tolerance == 1.0  # type: ignore[union-attr]
    uncertain = _cpu(["avx2", "fma"], kind="current")
    assert uncertain is not None and uncertain.tolerance == 2.0 and "max is not known" in uncertain.source
    assert _cpu([], arch="riscv64") is None  # no way to derive: its phases are unverified
    assert cpu_theoretical_peak(
        flags=[], arch="x86_64", cores=1, clock_mhz=None, clock_kind=None, dtype="float32", matmul_precision="highest"
    ) is None  # fmt: skip


# -- on this machine ---------------------------------------------------------------------------------
def _tiny(**kw: object) -> BenchSpec:
    doc = {"model": "gpt2-tiny", "batch": 2, "seq": 64, "repeats": 3, "warmup": 1, "phases": ["forward"]}
    return parse_spec({**doc, **kw, "devices": "cpu"})


def test_cpu_run_here_has_mfu_under_100_percent_of_a_named_theoretical_peak_and_the_roofline_beside() -> None:
    if cpu_peak("float32", "highest", 1) is None:
        pytest.skip("this machine's CPU has no theoretical peak (architecture or clock not known)")
    result = run_job(_tiny(threads=1).expand()[0])
    assert result.status == "ok", result.error
    fwd = result.phases["forward"]
    assert fwd.peak_source is not None and fwd.peak_source.startswith("theoretical: 1 core x ")
    assert fwd.mfu is not None and 0 < fwd.mfu < 1
    assert fwd.roofline_flops is not None and fwd.roofline_flops > 0
    host = fingerprint(with_torch=False).hostname
    assert fwd.roofline_source is not None and f"on {host} at load" in fwd.roofline_source
    assert result.machine is not None and result.machine.cpu_clock_mhz is not None


def test_farm_run_json_carries_the_ceiling_and_the_roofline() -> None:
    if cpu_peak("float32", "highest", 1) is None:
        pytest.skip("this machine's CPU has no theoretical peak")
    args = ["run", "--model", "gpt2-tiny", "--batch", "2", "--seq", "64", "--repeats", "3", "--warmup", "1"]
    res = CliRunner().invoke(app, [*args, "--phases", "forward", "--devices", "cpu", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    fwd = json.loads(res.stdout)[0]["phases"]["forward"]
    assert fwd["status"] == "ok" and 0 < fwd["mfu"] < 1 and fwd["peak_source"].startswith("theoretical:")
    assert fwd["roofline_flops"] > 0 and fwd["roofline_source"].startswith("measured: best GEMM")


def test_roofline_script_prints_the_ceiling_and_every_shape() -> None:
    root = Path(__file__).resolve().parent.parent
    args = ["benchmarks/roofline.py", "--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--threads", "1"]
    proc = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ceiling: " in proc.stdout and "roofline (best shape" in proc.stdout
    assert all(label in proc.stdout for label in ("qkv", "attn proj", "mlp fc", "mlp proj", "lm head"))
    # every share is of the same ceiling a job uses: an uncertain one that a shape beat is raised
    shares = [int(pct) for pct in re.findall(r"(\d+)%(?: of the ceiling)?$", proc.stdout, flags=re.M)]
    assert shares and max(shares) <= 100, proc.stdout


def test_uncertain_cpu_ceiling_is_raised_to_the_clock_the_gemm_implies(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM names its nominal clock (2445 MHz) and hides the max; when the measured GEMM runs faster
    than that clock allows, the ceiling uses the lowest clock consistent with it (50 MHz steps), so
    the roofline never sits above the ceiling it is shown beside, and the ceiling stays uncertain."""
    from farm.engine import hardware
    from farm.engine import roofline as roofline_mod
    from farm.results.cpus import CpuId
    from farm.results.peaks import Peak
    from farm.spec import BenchSpec

    fp = hardware.fingerprint(with_torch=False).model_copy(  # a Zen 3 guest, whatever CPU runs the test
        update={"cpu_flags": ["avx", "avx2", "fma"], "cpu_arch": "x86_64", "physical_cores": 2,
                "logical_cores": 2, "cpu_clock_mhz": 2445.0, "cpu_clock_kind": "current",
                "cpu_model": "AMD EPYC", "cpu_id": CpuId(vendor="AuthenticAMD", family=25, model=1),
                "cpu_core": "amd-zen3"}
    )  # fmt: skip
    monkeypatch.setattr(hardware, "fingerprint", lambda with_torch=True: fp)
    gemm = 2 * 32 * 2810e6  # what 2 AVX2+FMA cores do at 2.81 GHz
    monkeypatch.setattr(
        roofline_mod,
        "roofline",
        lambda spec, threads, refresh=False, on_progress=None: Peak(flops=gemm, source="measured: x"),
    )
    peak = roofline_mod.cpu_ceiling(BenchSpec(model="gpt2-tiny", batch=1, seq=64), threads=2)
    assert peak is not None and peak.uncertain
    assert peak.flops == pytest.approx(2 * 32 * 2850e6)  # 2810 MHz rounded up to 2850
    assert "2850 MHz" in peak.source and "implies" in peak.source
    assert peak.roofline_flops == gemm <= peak.flops
    assert "the OS names 2445 MHz" in (peak.roofline_source or "")
    # A GEMM below the named clock's ceiling leaves the ceiling as it was.
    monkeypatch.setattr(
        roofline_mod, "roofline", lambda spec, threads, refresh=False, on_progress=None: Peak(flops=1e11, source="m")
    )
    low = roofline_mod.cpu_ceiling(BenchSpec(model="gpt2-tiny", batch=1, seq=64), threads=2)
    assert low is not None and low.flops == pytest.approx(2 * 32 * 2445e6)


def test_an_inflated_fingerprint_within_the_bounds_cannot_make_the_seed_ok() -> None:
    """A file declaring an A10G with sm_100, 1024 SMs at 5 GHz (inside GpuInfo's bounds) derives a
    ceiling of about 1,300 TFLOP/s fp32 from its own facts: it cannot vouch for the seed's 390."""
    fp = syn.machine("lab", gpu="NVIDIA A10G")
    inflated = fp.gpus[0].model_copy(update={"compute_capability": "10.0", "sm_count": 1024, "max_sm_clock_mhz": 5000})
    fp = fp.model_copy(update={"gpus": [inflated]})
    checked = recheck(_seed_result(fp, dtype="float32"), "seed.json")
    assert checked.status == "unverified"
    reason = checked.phases["forward"].invalid_reason or ""
    assert "derived: sm_100, 1024 SM x 5000 MHz" in reason and "cannot vouch" in reason


def test_a_gemm_faster_than_the_named_clock_raises_the_ceiling_to_the_implied_clock(monkeypatch) -> None:
    """A VM names its nominal clock (Zen 5 guest here: 2596 MHz) while the cores boost: when the
    measured GEMM runs faster than that clock allows, the ceiling uses the lowest clock consistent with
    it, so no MFU above 100 % is printed; the ceiling stays uncertain and says why."""
    from farm.engine import hardware
    from farm.engine import roofline as roofline_mod
    from farm.results.cpus import CpuId
    from farm.results.machine import MachineFingerprint
    from farm.results.peaks import Peak
    from farm.spec import parse_spec

    fp = MachineFingerprint(
        hostname="vm", machine_tag="vm", os="Linux", python="3.11", cpu_model="AMD EPYC", cpu_arch="x86_64",
        cpu_flags=["avx2", "fma", "avx512f", "avx512_bf16"], cpu_id=CpuId(vendor="AuthenticAMD", family=26, model=2),
        cpu_core="amd-zen5", physical_cores=2, logical_cores=2, cpu_clock_mhz=2596.12, cpu_clock_kind="current",
        memory_bytes=24 << 30, farm_version="0",
    )  # fmt: skip
    monkeypatch.setattr(hardware, "fingerprint", lambda with_torch=True: fp)
    spec = parse_spec({"model": "gpt2-tiny", "dtype": "bfloat16"})
    named = hardware.cpu_peak("bfloat16", spec.matmul_precision, 2)
    assert named is not None and round(named.flops / 1e9, 1) == 664.6  # 2 x 128 x 2596.12 MHz
    measured = Peak(flops=939.6e9, source="measured: best GEMM")
    monkeypatch.setattr(roofline_mod, "roofline", lambda spec, threads, on_progress=None: measured)
    peak = roofline_mod.cpu_ceiling(spec, 2)
    assert peak is not None and peak.flops >= measured.flops  # the GEMM is never above its ceiling
    assert peak.flops < 1.02 * measured.flops  # and the clock is the lowest consistent one (50 MHz steps)
    assert peak.uncertain and "slower than this GEMM ran" in (peak.roofline_source or "")
    assert peak.roofline_flops == measured.flops
