"""What a result was measured on: the machine's fingerprint, its GPUs and their tags.

Plain data, read by every layer; `farm.engine.hardware` fills it in on a worker. Never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Plausibility bounds on what a fingerprint may declare (an import file cannot claim 10,000 SMs).
# Today's largest: 148 SMs (B200), 3.1 GHz max SM clock (consumer Ada), 192 cores per socket.
MAX_SM_COUNT = 1024
MAX_SM_CLOCK_MHZ = 5000
MAX_CPU_CORES = 4096
MAX_CPU_MHZ = 10_000


class GpuInfo(BaseModel):
    """One GPU. The compute capability, SM count and max SM clock are what a ceiling is derived from
    for a GPU outside the table of published peaks (`farm.results.peaks.gpu_ceiling`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    index: int
    name: str
    tag: str
    memory_bytes: int | None = None
    driver: str | None = None
    uuid: str | None = None
    compute_capability: str | None = Field(default=None, pattern=r"^[1-9][0-9]?\.[0-9]$")  # "9.0"; CUDA only
    sm_count: int | None = Field(default=None, ge=1, le=MAX_SM_COUNT)
    max_sm_clock_mhz: int | None = Field(default=None, ge=1, le=MAX_SM_CLOCK_MHZ)


class CpuId(BaseModel):
    """What the OS shows of a CPU's identity, the key of the core table (`farm.results.cpus`).

    x86: CPUID vendor, family, model and stepping as /proc/cpuinfo shows them (decimal there). Arm:
    the MIDR implementer and the part numbers of the cores present, and SVE's default vector length.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vendor: str | None = Field(default=None, pattern=r"^[A-Za-z0-9 _-]{1,32}$")  # "GenuineIntel"
    family: int | None = Field(default=None, ge=0, le=0x1FF)
    model: int | None = Field(default=None, ge=0, le=0xFF)
    stepping: int | None = Field(default=None, ge=0, le=0xF)
    implementer: int | None = Field(default=None, ge=0, le=0xFF)  # Arm MIDR: 0x41 Arm, 0x46 Fujitsu, 0x61 Apple
    parts: list[Annotated[int, Field(ge=0, le=0xFFF)]] = Field(
        default=[], max_length=16
    )  # Arm MIDR part numbers: 0xd0c Neoverse N1, ...
    sve_bits: int | None = Field(default=None, ge=128, le=2048, multiple_of=128)


class MachineFingerprint(BaseModel):
    """What a result was measured on."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    hostname: str
    machine_tag: str
    os: str
    python: str
    cpu_model: str
    cpu_arch: str
    cpu_flags: list[str] = []  # the SIMD / matrix extensions that change CPU speed
    cpu_id: CpuId | None = None  # vendor/family/model or Arm MIDR: which row of the core table applies
    # The row of the core table (`farm.results.cpus.ROWS`) the CPU ceiling used; None: not in the table
    # (the ISA's upper bound). Re-derived from cpu_id on import.
    cpu_core: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,40}$")
    physical_cores: int | None = Field(ge=1, le=MAX_CPU_CORES)
    logical_cores: int | None = Field(ge=1, le=2 * MAX_CPU_CORES)
    # The CPU clock a theoretical peak uses: "max" (cpufreq's cpuinfo_max_freq, or psutil's max) or
    # "current" (/proc/cpuinfo "cpu MHz": the max boost is not known, so the ceiling is uncertain).
    cpu_clock_mhz: float | None = Field(default=None, gt=0, le=MAX_CPU_MHZ)
    cpu_clock_kind: Literal["max", "current"] | None = None
    memory_bytes: int
    torch_version: str | None = None
    cuda_version: str | None = None
    cudnn_version: str | None = None
    gpus: list[GpuInfo] = []
    farm_version: str
    git_commit: str | None = None


def gpu_tag(name: str) -> str:
    """A short queue-safe tag from a GPU name.

    "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA A100-SXM4-40GB" -> "a100",
    "NVIDIA GeForce RTX 4090" -> "rtx4090", "NVIDIA L40S" -> "l40s", "Tesla T4" -> "t4".
    Rule: lower-case, drop vendor and family words (nvidia, geforce, tesla, quadro), join an
    "rtx"/"gtx" prefix to its number, then take the first word, cut at the first '-'.
    """
    words = re.sub(r"[^a-z0-9 -]", " ", name.lower()).split()
    words = [w for w in words if w not in {"nvidia", "geforce", "tesla", "quadro"}]
    if len(words) >= 2 and words[0] in {"rtx", "gtx"}:
        words = [words[0] + words[1], *words[2:]]
    if not words:
        return "gpu"
    tag = words[0].split("-")[0]
    return re.sub(r"[^a-z0-9_-]", "", tag)[:63] or "gpu"


def gpu_ran_on(device: str, torch_device: str | None, gpus: Sequence[Mapping[str, Any]]) -> str | None:
    """The model tag of the GPU a CUDA result ran on, from its fingerprint's GPUs (as JSON): the one
    whose properties the job recorded (`sm_count`, `farm.engine.hardware.with_gpu`), else the one of
    its `cuda:N` index, else the first; None for a result on another device or with no GPU listed.
    Read leniently (a stored result's JSON): an entry without a string tag is passed over."""
    if not device.startswith("cuda") or not gpus:
        return None
    listed = [g for g in gpus if isinstance(g, Mapping) and isinstance(g.get("tag"), str) and g["tag"]]
    with_facts = [g for g in listed if g.get("sm_count") is not None]
    if len(with_facts) == 1:
        return str(with_facts[0]["tag"])
    index = 0
    if torch_device and torch_device.startswith("cuda:") and torch_device[5:].isdigit():
        index = int(torch_device[5:])
    found = next((g for g in listed if g.get("index") == index), listed[0] if listed else None)
    return str(found["tag"]) if found is not None else None
