"""The machine: GPU tags from real GPU names, published peaks, the CPU's theoretical peak and the fingerprint."""

from __future__ import annotations

import pytest

from farm.engine.hardware import _cpu_info, cpu_clock, cpu_id, cpu_peak, fingerprint, machine_tag
from farm.results.cpus import core_rate
from farm.results.machine import MachineFingerprint, gpu_tag
from farm.results.peaks import GPU_PEAKS_TFLOPS, gpu_peak
from farm.spec import queue_for

# Names as torch.cuda.get_device_name / nvidia-smi print them.
REAL_NAMES = {
    "NVIDIA A100-SXM4-40GB": "a100",
    "NVIDIA A100-SXM4-80GB": "a100",
    "NVIDIA A100 80GB PCIe": "a100",
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA H100 PCIe": "h100",
    "NVIDIA H200": "h200",
    "NVIDIA L4": "l4",
    "NVIDIA L40S": "l40s",
    "NVIDIA A10": "a10",
    "NVIDIA A10G": "a10g",
    "Tesla T4": "t4",
    "Tesla V100-SXM2-16GB": "v100",
    "NVIDIA GeForce RTX 4090": "rtx4090",
    "NVIDIA GeForce RTX 3090 Ti": "rtx3090",
    "NVIDIA B200": "b200",
    "NVIDIA GH200 480GB": "gh200",
    "NVIDIA A800-SXM4-80GB": "a800",
    "NVIDIA H800 PCIe": "h800",
    "Tesla V100S-PCIE-32GB": "v100s",
    "NVIDIA L40": "l40",
    "NVIDIA RTX 6000 Ada Generation": "rtx6000",
    "NVIDIA RTX A6000": "rtxa6000",
    "Quadro RTX 8000": "rtx8000",
}


@pytest.mark.parametrize(("name", "tag"), list(REAL_NAMES.items()))
def test_gpu_tag_of_real_names(name: str, tag: str) -> None:
    assert gpu_tag(name) == tag
    assert queue_for(f"cuda:{tag}") == f"cuda.{tag}"  # every tag is a valid device tag


def test_gpu_tag_of_odd_names() -> None:
    assert gpu_tag("") == "gpu"
    assert gpu_tag("NVIDIA") == "gpu"
    assert gpu_tag("  NVIDIA   H100  ") == "h100"


def test_issue_gpus_have_published_peaks() -> None:
    for tag in GPU_PEAKS_TFLOPS:
        assert set(GPU_PEAKS_TFLOPS[tag]) == {"float32", "tf32", "bfloat16", "float16"}
        # Dense tensor-core bf16 is never below the CUDA-core fp32 figure.
        assert GPU_PEAKS_TFLOPS[tag]["bfloat16"] >= GPU_PEAKS_TFLOPS[tag]["float32"]


def test_gpu_peak_chooses_the_right_figure() -> None:
    p = gpu_peak("NVIDIA A100-SXM4-80GB", "bfloat16", "highest")
    assert p is not None
    assert (p.flops, p.source, p.tolerance) == (312e12, "table: a100 bfloat16 dense", 1.0)
    strict = gpu_peak("NVIDIA H100 80GB HBM3", "float32", "highest")
    tf32 = gpu_peak("NVIDIA H100 80GB HBM3", "float32", "high")
    assert strict is not None and tf32 is not None
    assert strict.flops == 67e12 and tf32.flops == pytest.approx(494.7e12)
    assert "tf32" in tf32.source
    # Lower precision dtypes ignore the float32 matmul setting.
    assert gpu_peak("NVIDIA H100 80GB HBM3", "bfloat16", "high").flops == pytest.approx(989.4e12)  # type: ignore[union-attr]
    pcie = gpu_peak("NVIDIA H100 PCIe", "bfloat16", "highest")
    assert pcie is not None and pcie.source == "table: h100-pcie bfloat16 dense"
    assert gpu_peak("Some Future GPU 9000", "float32", "highest") is None
    # Parts with the compute of a tabled one: A800 = A100, H800 = H100 (PCIe variant too), GH200 = H100 SXM.
    assert gpu_peak("NVIDIA A800-SXM4-80GB", "bfloat16", "highest").flops == 312e12  # type: ignore[union-attr]
    assert gpu_peak("NVIDIA H800 PCIe", "bfloat16", "highest").source == "table: h800-pcie bfloat16 dense"  # type: ignore[union-attr]
    assert gpu_peak("NVIDIA GH200 480GB", "float32", "high").flops == pytest.approx(494.7e12)  # type: ignore[union-attr]
    # Tags shared by faster parts are left to derivation: "rtx3090" also names the 3090 Ti,
    # "rtx6000" both the Turing Quadro RTX 6000 and the RTX 6000 Ada.
    assert gpu_peak("NVIDIA GeForce RTX 3090", "float16", "highest") is None
    assert gpu_peak("NVIDIA RTX 6000 Ada Generation", "float16", "highest") is None


def test_cpu_peak_is_the_theoretical_one_of_this_machine() -> None:
    """cores used x FLOP/cycle of this core's table row (or the ISA bound) x clock; the clock's kind
    decides whether it is certain."""
    brand, arch, flags = _cpu_info()
    clock, kind = cpu_clock()
    rate = core_rate(cpu_id(), flags, arch, "float32", brand)
    if clock is None or rate is None:
        pytest.skip("this machine's clock or ISA is not known")
    one = cpu_peak("float32", "highest", threads=1)
    assert one is not None and one.flops == pytest.approx(rate.per_cycle * clock * 1e6)
    head = "theoretical" if rate.upper_bound is None else "upper bound"
    assert one.source.startswith(f"{head}") and " 1 core x " in one.source and f"{clock:g} MHz" in one.source
    assert fingerprint(with_torch=False).cpu_core == rate.row
    assert one.tolerance == (1.0 if kind == "max" else 2.0)
    phys = fingerprint(with_torch=False).physical_cores or 1
    many = cpu_peak("float32", "highest", threads=phys * 4)  # SMT threads and oversubscription add no FMA units
    assert many is not None and many.flops == pytest.approx(phys * one.flops)


def test_fingerprint() -> None:
    import torch

    fp = fingerprint()
    assert fp.hostname and fp.machine_tag == machine_tag(fp.hostname)
    assert fp.memory_bytes > 0
    assert fp.logical_cores is not None and fp.logical_cores >= 1
    assert fp.torch_version == torch.__version__
    assert fp.python.count(".") == 2
    assert fp.farm_version
    assert (fp.cpu_clock_mhz, fp.cpu_clock_kind) == cpu_clock()
    assert MachineFingerprint.model_validate_json(fp.model_dump_json()) == fp
    assert fingerprint(with_torch=False).torch_version is None


def test_machine_tag_is_queue_safe() -> None:
    assert machine_tag("Box_7.lab.example.org") == "box_7"
    assert machine_tag("weird host!") == "weird-host"
    assert queue_for(f"cpu:{machine_tag('GPU-Node.01')}") == "cpu.gpu-node"
