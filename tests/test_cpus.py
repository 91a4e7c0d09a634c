"""The CPU core table (farm.results.cpus, docs/ceilings.md): every row is reached from a /proc/cpuinfo
text in the kernel's format (one recorded on a real machine, tests/data/cpuinfo/), with its FLOP per
cycle for fp32, bf16 and fp16 and its label; a core not in the table keeps the ISA's upper bound,
labelled so, and its MFU is shown as a lower bound."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.engine.hardware import speed_flag
from farm.reports.cells import mfu_text
from farm.reports.importer import recheck
from farm.reports.report import Row, peak_kind
from farm.results import synthetic as syn
from farm.results.cpus import NOT_IN_TABLE, ROWS, SOURCES, core_rate, flags_of_cpuinfo, parse_cpuinfo
from farm.results.machine import CpuId
from farm.results.peaks import cpu_theoretical_peak, is_upper_bound
from farm.results.records import records_from_results

DATA = Path(__file__).parent / "data" / "cpuinfo"
AVX2 = "fpu sse sse2 avx fma f16c avx2 smep"
AVX512 = f"{AVX2} avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
SPR = f"{AVX512} avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"


def x86(vendor: str, family: int, model: int, brand: str, flags: str, stepping: int = 1) -> str:
    """Two processors of /proc/cpuinfo as an x86 Linux kernel writes it (tabs before the colons)."""
    one = (
        f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: {brand}\n"
        f"stepping\t: {stepping}\ncpu MHz\t\t: 2600.000\nflags\t\t: {flags}\n"
    )
    return "".join(f"processor\t: {i}\n{one}\n" for i in range(2))


def arm(implementer: int, parts: list[int], features: str) -> str:
    """/proc/cpuinfo as an arm64 kernel writes it: one block per core, no model name."""
    return "".join(
        f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: {implementer:#x}\n"
        f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part:#05x}\nCPU revision\t: 1\n\n"
        for i, part in enumerate(parts)
    )


@dataclass(frozen=True)
class Case:
    row: str | None  # the expected row of the table; None: not in it
    text: str
    brand: str
    rates: tuple[int, int, int]  # FLOP/cycle/core for fp32, bf16, fp16
    bound: str | None = None  # a phrase of the upper-bound reason, None: an exact rate
    arch: str = "x86_64"
    sve_bytes: str | None = None


def _x(row: str | None, vendor: str, fam: int, model: int, brand: str, flags: str, rates: tuple[int, int, int],
       bound: str | None = None, stepping: int = 1) -> Case:  # fmt: skip
    return Case(row, x86(vendor, fam, model, brand, flags, stepping), brand, rates, bound)


def _a(row: str | None, imp: int, parts: list[int], feats: str, rates: tuple[int, int, int],
       bound: str | None = None, sve: str | None = None) -> Case:  # fmt: skip
    return Case(row, arm(imp, parts, feats), "", rates, bound, arch="aarch64", sve_bytes=sve)


INTEL, AMD = "GenuineIntel", "AuthenticAMD"
NEON = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
CASES = {
    "haswell-xeon": _x("intel-haswell", INTEL, 6, 63, "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", AVX2, (32, 32, 32)),
    "coffee-lake": _x("intel-skylake", INTEL, 6, 158, "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", AVX2, (32, 32, 32)),
    "skylake-silver": _x("intel-skylake-sp-1fma", INTEL, 6, 85, "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz",
                         AVX512, (32, 32, 32), stepping=4),
    "cascade-gold-5218": _x("intel-skylake-sp-1fma", INTEL, 6, 85, "Intel(R) Xeon(R) Gold 5218 CPU @ 2.30GHz",
                            AVX512, (32, 32, 32), stepping=7),
    "skylake-gold-6148": _x("intel-skylake-sp-2fma", INTEL, 6, 85, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
                            AVX512, (64, 64, 64), stepping=4),
    "skylake-gold-5122": _x("intel-skylake-sp-2fma", INTEL, 6, 85, "Intel(R) Xeon(R) Gold 5122 CPU @ 3.60GHz",
                            AVX512, (64, 64, 64), stepping=4),
    "cooper-lake": _x("intel-skylake-sp-2fma", INTEL, 6, 85, "Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz",
                      f"{AVX512} avx512_bf16", (64, 128, 64), stepping=11),
    "cascade-vm": _x("intel-skylake-sp-2fma", INTEL, 6, 85, "Intel Xeon Processor (Cascadelake)", AVX512,
                     (64, 64, 64), bound="SKU", stepping=7),
    "icelake-sp": _x("intel-icelake-sp", INTEL, 6, 106, "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
                     AVX512, (64, 64, 64)),
    "tiger-lake": _x("intel-icelake-client", INTEL, 6, 140, "11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz",
                     AVX512, (32, 32, 32)),
    "sapphire-rapids": _x("intel-sapphire-rapids", INTEL, 6, 143, "Intel(R) Xeon(R) Platinum 8480+", SPR,
                          (64, 1024, 128)),
    "emerald-rapids": _x("intel-sapphire-rapids", INTEL, 6, 207, "INTEL(R) XEON(R) PLATINUM 8592+", SPR,
                         (64, 1024, 128)),
    "spr-vm-no-amx": _x("intel-sapphire-rapids", INTEL, 6, 143, "Intel Xeon Processor (SapphireRapids)", AVX512,
                        (64, 64, 64)),
    "granite-rapids": _x("intel-granite-rapids", INTEL, 6, 173, "Intel(R) Xeon(R) 6980P", f"{SPR} amx_fp16",
                         (64, 1024, 1024)),
    "alder-lake": _x("intel-hybrid", INTEL, 6, 151, "12th Gen Intel(R) Core(TM) i9-12900K", AVX2, (32, 32, 32),
                     bound="hybrid"),
    "sierra-forest": _x("intel-e-core", INTEL, 6, 175, "Intel(R) Xeon(R) 6780E", AVX2, (16, 16, 16)),
    "zen1-naples": _x("amd-zen", AMD, 23, 1, "AMD EPYC 7601 32-Core Processor", AVX2, (16, 16, 16)),
    "hygon": _x("amd-zen", "HygonGenuine", 24, 0, "Hygon C86 7185 32-core Processor", AVX2, (16, 16, 16)),
    "zen2-rome": _x("amd-zen2", AMD, 23, 49, "AMD EPYC 7742 64-Core Processor", AVX2, (32, 32, 32)),
    "zen3-recorded": Case("amd-zen3", (DATA / "amd-epyc-zen3-kvm.txt").read_text(), "AMD EPYC", (32, 32, 32)),
    "zen4-genoa": _x("amd-zen4", AMD, 25, 17, "AMD EPYC 9654 96-Core Processor", f"{AVX512} avx512_bf16",
                     (32, 64, 32)),
    "zen4-vm": _x("amd-zen4", AMD, 25, 17, "AMD EPYC", f"{AVX512} avx512_bf16", (32, 64, 32)),
    "zen5-turin": _x("amd-zen5", AMD, 26, 2, "AMD EPYC 9755 128-Core Processor", f"{AVX512} avx512_bf16",
                     (64, 128, 64)),
    "zen5-strix": _x("amd-zen5-mobile", AMD, 26, 36, "AMD Ryzen AI 9 HX 370 w/ Radeon 890M",
                     f"{AVX512} avx512_bf16", (32, 64, 32), bound="hybrid"),
    "neoverse-n1": _a("arm-neoverse-n1", 0x41, [0xD0C] * 2, NEON, (16, 16, 32)),
    "neoverse-n2": _a("arm-neoverse-n2", 0x41, [0xD49] * 2, f"{NEON} sve sve2 bf16 i8mm", (16, 64, 32),
                      bound="bf16 bounded", sve="16"),
    "neoverse-v1": _a("arm-neoverse-v1", 0x41, [0xD40] * 2, f"{NEON} sve bf16 i8mm", (32, 128, 64),
                      bound="bf16 bounded", sve="32"),
    "neoverse-v2": _a("arm-neoverse-v2", 0x41, [0xD4F] * 2, f"{NEON} sve sve2 bf16 i8mm", (32, 128, 64),
                      bound="bf16 bounded", sve="16"),
    "a64fx": _a("fujitsu-a64fx", 0x46, [0x001] * 2, f"{NEON} sve", (64, 64, 128), sve="64"),
    "apple-m1": _a("apple-m", 0x61, [0x22, 0x23], NEON, (32, 32, 64), bound="several core types"),
    # Not in the table: the ISA's upper bound, labelled.
    "future-intel": _x(None, INTEL, 6, 0xFE, "Intel(R) Xeon(R) Future", SPR, (64, 1024, 128), bound=NOT_IN_TABLE),
    "future-amd": _x(None, AMD, 0x1B, 1, "AMD EPYC Next", AVX2, (32, 32, 32), bound=NOT_IN_TABLE),
    "neoverse-n3": _a(None, 0x41, [0xD8E] * 2, f"{NEON} sve sve2 bf16", (32, 128, 128), bound=NOT_IN_TABLE,
                      sve="16"),
    "arm-mixed-unknown": _a(None, 0x41, [0xD0C, 0xD99], NEON, (32, 128, 128), bound=NOT_IN_TABLE),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_every_row_from_its_cpuinfo(name: str) -> None:
    case = CASES[name]
    cpu = parse_cpuinfo(case.text, case.sve_bytes)
    flags = flags_of_cpuinfo(case.text, speed_flag)
    for dtype, want in zip(("float32", "bfloat16", "float16"), case.rates, strict=True):
        rate = core_rate(cpu, flags, case.arch, dtype, case.brand)
        assert rate is not None and rate.row == case.row and rate.per_cycle == want, (dtype, rate)
        if case.bound is None and not (dtype == "bfloat16" and "bf16" in flags and case.arch == "aarch64"):
            assert rate.upper_bound is None, (dtype, rate.upper_bound)
        if case.row is not None:
            assert ROWS[case.row].name in rate.how and SOURCES[ROWS[case.row].source] in rate.how
    fp32 = core_rate(cpu, flags, case.arch, "float32", case.brand)
    assert fp32 is not None
    if case.bound is not None and case.bound != "bf16 bounded":
        assert fp32.upper_bound is not None and case.bound in fp32.upper_bound


def test_the_table_is_covered_and_cited() -> None:
    """A new row without a cpuinfo case above, or without a source, fails here."""
    assert {c.row for c in CASES.values()} - {None} == set(ROWS)
    for row in ROWS.values():
        assert row.source in SOURCES and row.fp32 > 0
        assert (row.bf16 is None) == (row.bf16_flag is None) and (row.fp16 is None) == (row.fp16_flag is None)


def test_zen4_ceiling_reads_32_flop_per_cycle_with_its_source() -> None:
    """The issue's machine: a 2-core Zen 4 VM at 2596 MHz is 2 x 32 x 2596 MHz for fp32, 2 x 64 in bf16."""
    case = CASES["zen4-vm"]
    cpu = parse_cpuinfo(case.text)
    flags = flags_of_cpuinfo(case.text, speed_flag)
    kw = {"flags": flags, "arch": "x86_64", "cpu_id": cpu, "brand": "AMD EPYC", "cores": 2, "clock_mhz": 2596.0,
          "clock_kind": "max", "matmul_precision": "highest"}  # fmt: skip
    fp32 = cpu_theoretical_peak(dtype="float32", **kw)  # type: ignore[arg-type]
    bf16 = cpu_theoretical_peak(dtype="bfloat16", **kw)  # type: ignore[arg-type]
    assert fp32 is not None and bf16 is not None
    assert fp32.flops == pytest.approx(2 * 32 * 2596e6) and bf16.flops == pytest.approx(2 * 64 * 2596e6)
    assert fp32.source.startswith("theoretical: 2 cores x 32 FLOP/cycle (AMD Zen 4: ")
    assert "57647" in fp32.source and not fp32.upper_bound
    assert "AVX512_BF16" in bf16.source


def test_a_core_not_in_the_table_is_an_upper_bound_and_its_mfu_a_floor() -> None:
    """The ISA figure stays (so `invalid` stays safe), labelled; the MFU reads `≥ x% of upper bound`."""
    machine = syn.machine("lab").model_copy(update={"cpu_id": None, "cpu_core": None})
    res = syn.result("r1", 0, "cpu", {"forward": [0.5] * 5}, fingerprint=machine)
    checked = recheck(res, "old.json")  # an old file without CPUID facts: re-derived on import
    ph = checked.phases["forward"]
    assert ph.peak_source is not None and ph.peak_source.startswith(f"upper bound ({NOT_IN_TABLE}): 2 cores x ")
    assert is_upper_bound(ph.peak_source) and peak_kind(ph.peak_source) == "upper bound"
    rec = records_from_results([checked])[0]
    text = mfu_text(Row(record=rec, phase=rec.phases["forward"]))
    assert text.startswith("≥ ") and "of upper bound" in text


def test_import_re_derives_the_row_from_the_cpuid_facts() -> None:
    """A file claiming a faster core than its CPUID facts show gets the row the facts give."""
    zen3 = parse_cpuinfo(CASES["zen3-recorded"].text)
    machine = syn.machine("lab").model_copy(
        update={"cpu_id": zen3, "cpu_core": "amd-zen5", "cpu_model": "AMD EPYC", "cpu_flags": ["avx", "avx2", "fma"]}
    )
    res = syn.result("r2", 0, "cpu", {"forward": [0.5] * 5}, fingerprint=machine)
    checked = recheck(res, "claims.json")
    assert checked.machine is not None and checked.machine.cpu_core == "amd-zen3"
    assert any("re-derived from its CPUID facts" in w for w in checked.warnings)
    ph = checked.phases["forward"]
    assert ph.peak_source is not None and "AMD Zen 3" in ph.peak_source and "32 FLOP/cycle" in ph.peak_source


@pytest.mark.parametrize(
    "text",
    [
        "cpu family\t: 99999\nmodel\t: -3\nvendor_id\t: Genuine<script>\nstepping\t: x\n",
        "CPU implementer\t: 0x1ff\nCPU part\t: zz\nCPU part\t: 0x10000\n",
        "\x00\x01 garbage\nmodel : 1e9\n",
        "",
    ],
)
def test_untrusted_cpuinfo_leaves_out_what_does_not_parse(text: str) -> None:
    cpu = parse_cpuinfo(text, sve_default_bytes="17")
    assert cpu == CpuId() or (cpu.vendor is None and cpu.family is None and cpu.model is None)
    rate = core_rate(cpu, [], "x86_64", "float32")
    assert rate is not None and rate.row is None and rate.upper_bound == NOT_IN_TABLE


def test_sve_length_sets_an_unknown_cores_bound() -> None:
    wide = parse_cpuinfo(arm(0x41, [0xD8E], f"{NEON} sve"), sve_default_bytes="64\n")
    assert wide.sve_bits == 512
    rate = core_rate(wide, ["sve"], "aarch64", "float32")
    assert rate is not None and rate.per_cycle == 4 * 16 * 2 and "512-bit" in rate.how


def test_speed_flags_keep_arm_features_and_drop_x86_smep() -> None:
    assert [f for f in ["smep", "sme", "sme2", "asimdhp", "bf16", "avx2", "sse2"] if speed_flag(f)] == [
        "sme", "sme2", "asimdhp", "bf16", "avx2",
    ]  # fmt: skip


def test_this_machine_has_a_row_or_says_it_is_a_bound() -> None:
    """The worker's own fingerprint names its row (or none), and the peak's label agrees."""
    from farm.engine.hardware import cpu_peak, fingerprint

    fp = fingerprint(with_torch=False)
    peak = cpu_peak("float32", "highest", 1)
    if peak is None:
        pytest.skip("no clock or ISA known here")
    if fp.cpu_core is None:
        assert peak.source.startswith(f"upper bound ({NOT_IN_TABLE}): ")
    else:
        assert ROWS[fp.cpu_core].name in peak.source
