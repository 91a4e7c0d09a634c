"""The ceiling a result's own fingerprint allows, derived exactly as a worker derives it, never taken
from the peak the result recorded: `derive_ceiling` (one device), `group_ceiling` (a DDP train phase
over `world_size` devices), `published_bandwidth` (a GPU's memory bandwidth by name) and `vouches`
(whether a ceiling is a published one). `farm import` (farm.reports.importer) and every read from
the store (farm.results.verify) share them. Never imports torch.
"""

from __future__ import annotations

from typing import Protocol

from farm.results.machine import GpuInfo, MachineFingerprint
from farm.results.peaks import Bandwidth, Peak, gpu_bandwidth, gpu_ceiling, machine_cpu_ceiling
from farm.spec import BenchSpec


class Subject(Protocol):
    """What a ceiling is derived from: a `JobResult`, or `verify.Facts` read from a stored one."""

    @property
    def spec(self) -> BenchSpec: ...
    @property
    def device(self) -> str: ...
    @property
    def torch_device(self) -> str | None: ...
    @property
    def machine(self) -> MachineFingerprint | None: ...
    @property
    def threads(self) -> int | None: ...


def gpu_of(res: Subject) -> GpuInfo | None:
    """The GPU a CUDA result ran on: the one whose properties the worker recorded, else by index."""
    if res.machine is None or not res.machine.gpus:
        return None
    gpus = res.machine.gpus
    with_facts = [g for g in gpus if g.sm_count is not None]
    if len(with_facts) == 1:
        return with_facts[0]
    index = 0
    if res.torch_device and res.torch_device.startswith("cuda:") and res.torch_device[5:].isdigit():
        index = int(res.torch_device[5:])
    return next((g for g in gpus if g.index == index), gpus[0])


def derive_ceiling(res: Subject) -> tuple[Peak | None, str | None]:
    """(ceiling, why there is none) for a result, derived from its fingerprint, never its recorded peak."""
    kind = res.device.split(":")[0]
    if res.machine is None:
        return None, "the result has no machine fingerprint to derive a ceiling from"
    if kind == "cuda":
        gpu = gpu_of(res)
        if gpu is None:
            return None, "a CUDA result whose fingerprint lists no GPU: no ceiling can be derived"
        peak = gpu_ceiling(gpu, res.spec.dtype, res.spec.matmul_precision)
        if peak is None:
            return None, (
                f"{gpu.name!r} is not in the table of published peaks and its fingerprint lacks the "
                "compute capability, SM count or max clock to derive one"
            )
        return peak, None
    if kind == "cpu":
        peak = machine_cpu_ceiling(res.machine, res.threads, res.spec.dtype, res.spec.matmul_precision)
        if peak is None:
            return None, f"no theoretical peak is known for a {res.machine.cpu_arch!r} CPU"
        return peak, None
    return None, f"no ceiling is known for {kind!r} devices"


def group_ceiling(res: Subject, peak: Peak | None) -> Peak | None:
    """The ceiling of a DDP train phase over `world_size` devices: n x one GPU's, or the CPU at every
    rank's threads together (cores bounded by the machine's, as on the worker)."""
    n = res.spec.world_size
    if peak is None or n == 1:
        return peak
    if res.device.split(":")[0] == "cuda":
        return Peak(flops=n * peak.flops, source=f"{n} x {peak.source}", tolerance=peak.tolerance)
    if res.machine is None:
        return None
    return machine_cpu_ceiling(res.machine, n * (res.threads or 1), res.spec.dtype, res.spec.matmul_precision)


def published_bandwidth(res: Subject) -> Bandwidth | None:
    """A GPU's published memory bandwidth by name; a CPU's is measured on its own machine, which a
    record cannot vouch for (None)."""
    gpu = gpu_of(res) if res.device.split(":")[0] == "cuda" else None
    return gpu_bandwidth(gpu.name, gpu.memory_bytes) if gpu else None


def vouches(peak: Peak) -> bool:
    """A ceiling an imported result can be `ok` against: a published peak looked up by the GPU's name.
    One derived from the file's recorded properties (GPU SMs and clock, CPU cores, ISA and clock)
    only bounds it."""
    return peak.source.startswith("table:")
