"""CPU cores and their FLOP per cycle: the table a CPU's theoretical peak is read from (docs/ceilings.md).

A core is identified by what the OS shows of its CPUID (x86: vendor, family, model; `/proc/cpuinfo`)
or its MIDR (Arm: implementer, part), not by its instruction flags: AMD Zen 4 runs AVX-512 on 256-bit
pipes (half the FLOP/cycle the flag suggests), many Skylake-SP Xeons have one AVX-512 FMA unit, Arm
SVE is 128, 256 or 512 bits wide. Each row's rates carry their published source (`CoreRow.source`).

A core not in the table keeps the upper bound the ISA allows (`isa_rate`), labelled as such, so that
the MFU against it is a lower bound and a ceiling can still only rule numbers out.
Pure functions; never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from farm.results.machine import CpuId

NOT_IN_TABLE = "microarchitecture not in the table"  # the reason a peak is "upper bound (...)"
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# Sources, cited by key from the rows (what each says: docs/ceilings.md).
SOURCES = {
    "intel-opt": "Intel Optimization Reference Manual 248966",
    "intel-ark": "Intel ARK: AVX-512 FMA units per SKU",
    "intel-amx": "Intel Optimization Reference Manual 248966, AMX",
    "amd-55723": "AMD Software Optimization Guide 55723",
    "amd-56305": "AMD Software Optimization Guide 56305",
    "amd-56665": "AMD Software Optimization Guide 56665",
    "amd-57647": "AMD Software Optimization Guide 57647",
    "amd-58455": "AMD Software Optimization Guide 58455",
    "arm-n1": "Arm Neoverse N1 Software Optimization Guide",
    "arm-n2": "Arm Neoverse N2 Software Optimization Guide",
    "arm-v1": "Arm Neoverse V1 Software Optimization Guide",
    "arm-v2": "Arm Neoverse V2 Software Optimization Guide",
    "a64fx": "Fujitsu A64FX Microarchitecture Manual",
    "apple": "Apple Silicon CPU Optimization Guide",
}


@dataclass(frozen=True)
class CoreRow:
    """One row of the table: FLOP per cycle per core for fp32, bf16 and fp16, and why.

    `bf16`/`fp16` apply only where the OS shows the instruction (`bf16_flag`/`fp16_flag`): a VM that
    hides AVX512_BF16 gets the fp32 figure. `bound` names why a row's rate is only an upper bound
    (a hybrid part counted at its big cores, a bf16 figure from a matrix instruction's width).
    """

    core: str  # the row's id, recorded as `MachineFingerprint.cpu_core`
    name: str
    fp32: int
    how: str
    source: str
    bf16: int | None = None
    bf16_flag: str | None = None
    bf16_how: str = ""
    fp16: int | None = None
    fp16_flag: str | None = None
    fp16_how: str = ""
    bound: str | None = None
    bf16_bound: str | None = None


@dataclass(frozen=True)
class CoreRate:
    """The FLOP per cycle per core a ceiling uses: the row it came from (None: not in the table) and
    whether it is only an upper bound (`upper_bound` names why, and the MFU is then a lower bound)."""

    per_cycle: int
    how: str
    row: str | None
    upper_bound: str | None = None


# Rates are dense FMA throughput x lanes x 2 FLOP per FMA.
AVX2_2FMA = "2 FMA units x 8 fp32 lanes x 2"
AVX512_2FMA = "2 AVX-512 FMA units x 16 fp32 lanes x 2"
AMX = "AMX-BF16 tiles: 1024 bf16 FLOP/cycle"
ARM_BF16 = "BFMMLA: 4x the fp32 rate, bounded by the instruction's width"
ARM_BF16_BOUND = "bf16 bounded by BFMMLA's width"


ROWS: dict[str, CoreRow] = {
    r.core: r
    for r in [
        CoreRow(core="intel-haswell", name="Intel Haswell/Broadwell", fp32=32, how=AVX2_2FMA, source="intel-opt"),
        CoreRow(core="intel-skylake", name="Intel Skylake..Comet Lake (client)", fp32=32, how=AVX2_2FMA,
                source="intel-opt"),
        CoreRow(core="intel-skylake-sp-1fma", name="Intel Skylake-SP/Cascade Lake, 1 AVX-512 FMA unit", fp32=32,
             how="1 AVX-512 FMA unit x 16 fp32 lanes x 2", source="intel-ark"),
        CoreRow(core="intel-skylake-sp-2fma", name="Intel Skylake-SP/Cascade Lake/Cooper Lake, 2 AVX-512 FMA units",
             fp32=64, how=AVX512_2FMA, source="intel-ark", bf16=128, bf16_flag="avx512_bf16",
             bf16_how="AVX512_BF16 (Cooper Lake): 2 units x 32 bf16 lanes x 2"),
        CoreRow(core="intel-icelake-sp", name="Intel Ice Lake-SP", fp32=64, how=AVX512_2FMA, source="intel-ark"),
        CoreRow(core="intel-icelake-client", name="Intel Ice Lake/Tiger Lake/Rocket Lake (client)", fp32=32,
             how="1 AVX-512 FMA unit (ports 0+1) x 16 fp32 lanes x 2", source="intel-opt"),
        CoreRow(core="intel-sapphire-rapids", name="Intel Sapphire/Emerald Rapids", fp32=64, how=AVX512_2FMA,
             source="intel-amx", bf16=1024, bf16_flag="amx_bf16", bf16_how=AMX, fp16=128, fp16_flag="avx512_fp16",
             fp16_how="AVX512_FP16: 2 units x 32 fp16 lanes x 2"),
        CoreRow(core="intel-granite-rapids", name="Intel Granite Rapids", fp32=64, how=AVX512_2FMA, source="intel-amx",
             bf16=1024, bf16_flag="amx_bf16", bf16_how=AMX, fp16=1024, fp16_flag="amx_fp16",
             fp16_how="AMX-FP16 tiles: 1024 fp16 FLOP/cycle"),
        CoreRow(core="intel-hybrid", name="Intel Alder Lake..Arrow Lake (hybrid, no AVX-512)", fp32=32,
             how=f"P-core: {AVX2_2FMA}", source="intel-opt", bound="hybrid, every core counted at the P-core rate"),
        CoreRow(core="intel-e-core", name="Intel Sierra Forest (E-cores)", fp32=16,
             how="2 FMA units x 4 fp32 lanes x 2", source="intel-opt"),
        CoreRow(core="amd-zen", name="AMD Zen/Zen+", fp32=16, how="2 x 128-bit FMA pipes: 2 x 4 fp32 lanes x 2",
             source="amd-55723"),
        CoreRow(core="amd-zen2", name="AMD Zen 2", fp32=32, how=AVX2_2FMA, source="amd-56305"),
        CoreRow(core="amd-zen3", name="AMD Zen 3", fp32=32, how=AVX2_2FMA, source="amd-56665"),
        CoreRow(core="amd-zen4", name="AMD Zen 4", fp32=32,
             how="AVX-512 on 2 x 256-bit FMA pipes (double-pumped): 2 x 8 fp32 lanes x 2", source="amd-57647",
             bf16=64, bf16_flag="avx512_bf16", bf16_how="AVX512_BF16: 2x the fp32 rate (2 bf16 per fp32 lane)"),
        CoreRow(core="amd-zen5", name="AMD Zen 5 (512-bit datapath: EPYC, Ryzen desktop, Strix Halo)", fp32=64,
             how=AVX512_2FMA, source="amd-58455", bf16=128, bf16_flag="avx512_bf16",
             bf16_how="AVX512_BF16: 2x the fp32 rate"),
        CoreRow(core="amd-zen5-mobile", name="AMD Zen 5 (256-bit datapath: Strix/Krackan Point)", fp32=32,
             how="AVX-512 on 2 x 256-bit FMA pipes: 2 x 8 fp32 lanes x 2", source="amd-58455", bf16=64,
             bf16_flag="avx512_bf16", bf16_how="AVX512_BF16: 2x the fp32 rate",
             bound="hybrid Zen 5/Zen 5c, every core counted at the Zen 5 rate"),
        CoreRow(core="arm-neoverse-n1", name="Arm Neoverse N1 / Cortex-A76", fp32=16,
             how="2 x 128-bit FMA pipes: 2 x 4 fp32 lanes x 2", source="arm-n1", fp16=32, fp16_flag="asimdhp",
             fp16_how="FP16 ASIMD: 8 lanes per pipe"),
        CoreRow(core="arm-neoverse-n2", name="Arm Neoverse N2", fp32=16, how="2 x 128-bit SVE2 pipes: 2 x 4 x 2",
             source="arm-n2", bf16=64, bf16_flag="bf16", bf16_how=ARM_BF16, bf16_bound=ARM_BF16_BOUND, fp16=32,
             fp16_flag="asimdhp", fp16_how="FP16: 8 lanes per pipe"),
        CoreRow(core="arm-neoverse-v1", name="Arm Neoverse V1", fp32=32,
             how="2 x 256-bit SVE (or 4 x 128-bit ASIMD) pipes: 32 fp32 FLOP", source="arm-v1", bf16=128,
             bf16_flag="bf16", bf16_how=ARM_BF16, bf16_bound=ARM_BF16_BOUND, fp16=64, fp16_flag="asimdhp",
             fp16_how="FP16: 2x the fp32 lanes"),
        CoreRow(core="arm-neoverse-v2", name="Arm Neoverse V2 (NVIDIA Grace, AWS Graviton4)", fp32=32,
             how="4 x 128-bit SVE2 pipes: 4 x 4 fp32 lanes x 2", source="arm-v2", bf16=128, bf16_flag="bf16",
             bf16_how=ARM_BF16, bf16_bound=ARM_BF16_BOUND, fp16=64, fp16_flag="asimdhp",
             fp16_how="FP16: 2x the fp32 lanes"),
        CoreRow(core="fujitsu-a64fx", name="Fujitsu A64FX", fp32=64, how="2 x 512-bit SVE pipes: 2 x 16 fp32 lanes x 2",
             source="a64fx", fp16=128, fp16_flag="asimdhp", fp16_how="FP16 SVE: 32 lanes per pipe"),
        CoreRow(core="apple-m", name="Apple M-series", fp32=32, how="P-core: 4 x 128-bit FMA pipes: 4 x 4 x 2",
             source="apple", bf16=128, bf16_flag="bf16", bf16_how=ARM_BF16, bf16_bound=ARM_BF16_BOUND, fp16=64,
             fp16_flag="asimdhp", fp16_how="FP16: 2x the fp32 lanes",
             bound="hybrid, every core counted at the P-core rate"),
    ]
}  # fmt: skip

# x86: (vendor, family) -> [(models, row key)] (Linux's "cpu family" and "model", decimal there).
Models = range | frozenset[int]
X86: dict[tuple[str, int], list[tuple[Models, str]]] = {
    ("GenuineIntel", 6): [
        (frozenset({0x3C, 0x3F, 0x45, 0x46, 0x3D, 0x47, 0x4F, 0x56}), "intel-haswell"),
        (frozenset({0x4E, 0x5E, 0x8E, 0x9E, 0xA5, 0xA6}), "intel-skylake"),
        (frozenset({0x55}), "intel-skylake-sp"),  # resolved to 1 or 2 FMA units by SKU (`skylake_sp_units`)
        (frozenset({0x6A, 0x6C}), "intel-icelake-sp"),
        (frozenset({0x7D, 0x7E, 0x8C, 0x8D, 0xA7}), "intel-icelake-client"),
        (frozenset({0x8F, 0xCF}), "intel-sapphire-rapids"),
        (frozenset({0xAD, 0xAE}), "intel-granite-rapids"),
        (frozenset({0x97, 0x9A, 0xB7, 0xBA, 0xBF, 0xAA, 0xAC, 0xBD, 0xC5, 0xC6}), "intel-hybrid"),
        (frozenset({0xAF}), "intel-e-core"),
    ],
    ("AuthenticAMD", 0x17): [(range(0x00, 0x30), "amd-zen"), (range(0x30, 0x100), "amd-zen2")],
    ("HygonGenuine", 0x18): [(range(0x00, 0x100), "amd-zen")],  # Hygon Dhyana: a licensed Zen
    ("AuthenticAMD", 0x19): [
        (range(0x00, 0x10), "amd-zen3"),
        (range(0x20, 0x30), "amd-zen3"),
        (range(0x40, 0x60), "amd-zen3"),  # Rembrandt (Zen 3+), Cezanne
        (range(0x10, 0x20), "amd-zen4"),  # Genoa (0x11), Storm Peak
        (range(0x60, 0x80), "amd-zen4"),  # Raphael, Phoenix, Hawk Point
        (range(0xA0, 0xB0), "amd-zen4"),  # Bergamo, Siena
    ],
    ("AuthenticAMD", 0x1A): [
        (range(0x00, 0x20), "amd-zen5"),  # Turin (0x02), Turin dense (0x11)
        (range(0x40, 0x50), "amd-zen5"),  # Granite Ridge
        (range(0x70, 0x80), "amd-zen5"),  # Strix Halo
        (range(0x20, 0x30), "amd-zen5-mobile"),  # Strix Point
        (range(0x60, 0x70), "amd-zen5-mobile"),  # Krackan Point
    ],
}
# Arm: (MIDR implementer, part) -> row key ("CPU implementer" / "CPU part" in /proc/cpuinfo).
ARM: dict[tuple[int, int], str] = {
    (0x41, 0xD0B): "arm-neoverse-n1",  # Cortex-A76, the N1's core
    (0x41, 0xD0C): "arm-neoverse-n1",
    (0x41, 0xD49): "arm-neoverse-n2",
    (0x41, 0xD40): "arm-neoverse-v1",
    (0x41, 0xD4F): "arm-neoverse-v2",
    (0x46, 0x001): "fujitsu-a64fx",
    **{(0x61, part): "apple-m" for part in (0x22, 0x23, 0x24, 0x25, 0x28, 0x29, 0x32, 0x33, 0x34, 0x35, 0x38, 0x39)},
}

# Skylake-SP / Cascade Lake Xeon SKUs by their AVX-512 FMA units (Intel ARK): Platinum and Gold 6xxx
# have 2; Gold 5xxx 1, except Gold 5122 and 5222; Silver and Bronze 1.
_XEON_SKU = re.compile(r"\b(platinum|gold|silver|bronze)\s+(\d{4})", re.I)


def skylake_sp_units(brand: str) -> int | None:
    """AVX-512 FMA units per core of a Skylake-SP/Cascade Lake Xeon from its brand string; None when
    the string names no SKU (a VM's "Intel Xeon Processor (Cascadelake)")."""
    m = _XEON_SKU.search(brand)
    if m is None:
        return None
    tier, sku = m.group(1).lower(), m.group(2)
    if tier == "platinum":
        return 2
    if tier == "gold":
        return 2 if sku.startswith("6") or sku in ("5122", "5222") else 1
    return 1


def _x86_row(cpu: CpuId, brand: str) -> tuple[str | None, str | None]:
    """(row key, upper-bound reason) of an x86 core; (None, None) when it is not in the table."""
    if cpu.vendor is None or cpu.family is None or cpu.model is None:
        return None, None
    for models, key in X86.get((cpu.vendor, cpu.family), []):
        if cpu.model in models:
            if key != "intel-skylake-sp":
                return key, None
            units = skylake_sp_units(brand)
            if units is None:
                return "intel-skylake-sp-2fma", "the SKU (1 or 2 AVX-512 FMA units) is not shown, 2 assumed"
            return f"intel-skylake-sp-{units}fma", None
    return None, None


def core_row(cpu: CpuId | None, brand: str = "") -> tuple[CoreRow | None, str | None]:
    """The table row of a CPU and, where only an upper bound can be had, why; (None, None) if not in it.

    An Arm machine with several core types (big.LITTLE) gets its fastest known one, as an upper bound.
    """
    if cpu is None:
        return None, None
    if cpu.implementer is not None:
        rows = [ROWS[ARM[(cpu.implementer, p)]] for p in cpu.parts if (cpu.implementer, p) in ARM]
        if not rows or len(rows) < len(set(cpu.parts)):
            return None, None  # a core type not in the table: the whole machine is bounded by the ISA
        best = max(rows, key=lambda r: r.fp32)
        mixed = "several core types, every core counted at the fastest" if len(set(cpu.parts)) > 1 else None
        return best, mixed or best.bound
    key, why = _x86_row(cpu, brand)
    if key is None:
        return None, None
    row = ROWS[key]
    return row, why or row.bound


def isa_rate(flags: Iterable[str], arch: str, dtype: str, sve_bits: int | None = None) -> tuple[int, str] | None:
    """The ISA's upper bound on FLOP per cycle per core: what a core not in the table is given.

    x86: AVX-512 2 FMA units x 16 fp32 lanes x 2; AVX2+FMA 2 x 8 x 2; AVX 8 lanes x (1 add + 1 mul);
    SSE 4 x 2. bf16: AMX tiles 1024 where `amx_bf16` shows, AVX512_BF16 twice the AVX-512 rate; fp16
    likewise with `amx_fp16` / `avx512_fp16`. aarch64: NEON 4 pipes x 4 lanes x 2; SVE 4 pipes x the
    vector length (512 bits when not known); bf16/fp16 bounded at 4x the fp32 figure (BFMMLA).
    """
    f = {x.lower() for x in flags}
    a = arch.lower()
    if a in ("x86_64", "amd64", "x86", "i686", "i386") or a.startswith("x86"):
        if "avx512f" in f:
            fp32, how = 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2"
        elif "avx2" in f and "fma" in f:
            fp32, how = 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2"
        elif "avx" in f:
            fp32, how = 16, "AVX: 8 fp32 lanes x (1 add + 1 mul)"
        else:
            fp32, how = 8, "SSE: 4 fp32 lanes x (1 add + 1 mul)"
        if dtype == "bfloat16":
            if "amx_bf16" in f:
                return 1024, "AMX-BF16 tiles: 1024 bf16 FLOP/cycle"
            if "avx512_bf16" in f and fp32 == 64:
                return 128, "AVX512_BF16: 2 FMA units x 32 bf16 lanes x 2"
        if dtype == "float16":
            if "amx_fp16" in f:
                return 1024, "AMX-FP16 tiles: 1024 fp16 FLOP/cycle"
            if "avx512_fp16" in f and fp32 == 64:
                return 128, "AVX512_FP16: 2 FMA units x 32 fp16 lanes x 2"
        if dtype != "float32":
            how += f" ({SHORT.get(dtype, dtype)} has no faster path: the fp32 figure)"
        return fp32, how
    if a in ("aarch64", "arm64"):
        if "sve" in f:
            bits = sve_bits or 512
            fp32, how = 4 * (bits // 32) * 2, f"SVE: 4 pipes x {bits // 32} fp32 lanes ({bits}-bit) x 2"
        else:
            fp32, how = 32, "NEON: 4 pipes x 4 lanes x 2"
        if dtype != "float32":
            return 4 * fp32, f"{how}, x4 for {SHORT.get(dtype, dtype)} (BFMMLA / FMLA bound)"
        return fp32, how
    return None


def _row_rate(row: CoreRow, flags: set[str], dtype: str) -> tuple[int, str, str | None]:
    """(FLOP/cycle, how, bound) of a row for a dtype: its bf16/fp16 path where the OS shows it."""
    if dtype == "bfloat16" and row.bf16 is not None and row.bf16_flag in flags:
        return row.bf16, row.bf16_how, row.bf16_bound
    if dtype == "float16" and row.fp16 is not None and row.fp16_flag in flags:
        return row.fp16, row.fp16_how, None
    if dtype != "float32":
        return row.fp32, f"{row.how}; {SHORT.get(dtype, dtype)} has no faster path: the fp32 figure", None
    return row.fp32, row.how, None


def core_rate(cpu: CpuId | None, flags: Iterable[str], arch: str, dtype: str, brand: str = "") -> CoreRate | None:
    """FLOP per cycle per core for a dtype: the table's row for this core, else the ISA's upper bound
    (labelled "upper bound (microarchitecture not in the table)"); None for an architecture with neither."""
    f = {x.lower() for x in flags}
    row, bound = core_row(cpu, brand)
    if row is not None:
        per, how, dtype_bound = _row_rate(row, f, dtype)
        return CoreRate(per, f"{row.name}: {how}; {SOURCES[row.source]}", row.core, bound or dtype_bound)
    isa = isa_rate(f, arch, dtype, cpu.sve_bits if cpu else None)
    if isa is None:
        return None
    return CoreRate(isa[0], isa[1], None, NOT_IN_TABLE)


# -- /proc/cpuinfo ----------------------------------------------------------------------------------
def _field(text: str, name: str) -> list[str]:
    return re.findall(rf"^{re.escape(name)}\s*:\s*(\S.*?)\s*$", text, flags=re.M)


def _int(values: list[str], base: int = 10) -> int | None:
    for v in values:
        try:
            return int(v, base)
        except ValueError:
            continue
    return None


def parse_cpuinfo(text: str, sve_default_bytes: str | None = None) -> CpuId:
    """The CPU's identity from the text of /proc/cpuinfo (and /proc/sys/abi/sve_default_vector_length,
    in bytes). Untrusted text: fields that do not parse are left out, never guessed."""
    parts = sorted({p for v in _field(text, "CPU part") if (p := _int([v], 0)) is not None and 0 <= p <= 0xFFF})
    implementer = _int(_field(text, "CPU implementer"), 0)
    sve = _int([sve_default_bytes.strip()]) if sve_default_bytes else None
    vendor = next(iter(_field(text, "vendor_id")), None)
    doc = {
        "vendor": vendor if vendor and re.fullmatch(r"[A-Za-z0-9 _-]{1,32}", vendor) else None,
        "family": _int(_field(text, "cpu family")),
        "model": _int(_field(text, "model")),
        "stepping": _int(_field(text, "stepping")),
        "implementer": implementer if implementer is not None and 0 <= implementer <= 0xFF else None,
        "parts": parts if implementer is not None else [],
        "sve_bits": sve * 8 if sve and 16 <= sve <= 256 and sve % 16 == 0 else None,
    }
    return CpuId.model_validate({k: v for k, v in doc.items() if v is not None and _in_range(k, v)})


def _in_range(key: str, value: object) -> bool:
    limits: dict[str, tuple[int, int]] = {"family": (0, 0x1FF), "model": (0, 0xFF), "stepping": (0, 0xF)}
    if key in limits and isinstance(value, int):
        lo, hi = limits[key]
        return lo <= value <= hi
    return True


def flags_of_cpuinfo(text: str, keep: Callable[[str], bool]) -> list[str]:
    """The flags (x86 "flags", Arm "Features") of /proc/cpuinfo's first processor that `keep` selects."""
    line = next(iter(_field(text, "flags") or _field(text, "Features")), "")
    return sorted({f for f in line.lower().split() if keep(f)})
