"""The machine: GPU tags from real GPU names, published peaks, the CPU calibration and the fingerprint."""

from __future__ import annotations

import json

import pytest

from farm.engine.hardware import cpu_peak, fingerprint, machine_tag
from farm.paths import cache_dir
from farm.results.machine import MachineFingerprint, gpu_tag
from farm.results.peaks import GPU_PEAKS_TFLOPS, MEASURED_TOLERANCE, TABLE_TOLERANCE, gpu_peak
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
    for tag in ("a100", "h100", "h200", "l4", "l40s", "a10", "t4", "rtx4090"):
        assert set(GPU_PEAKS_TFLOPS[tag]) == {"float32", "tf32", "bfloat16", "float16"}
        # Dense tensor-core bf16 is never below the CUDA-core fp32 figure.
        assert GPU_PEAKS_TFLOPS[tag]["bfloat16"] >= GPU_PEAKS_TFLOPS[tag]["float32"]


def test_gpu_peak_chooses_the_right_figure() -> None:
    p = gpu_peak("NVIDIA A100-SXM4-80GB", "bfloat16", "highest")
    assert p is not None
    assert (p.flops, p.source, p.tolerance) == (312e12, "table: a100 bfloat16 dense", TABLE_TOLERANCE)
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


def test_cpu_peak_is_measured_once_and_cached() -> None:
    first = cpu_peak("float32", "highest", threads=1, size=256)
    assert first.flops > 0
    assert first.tolerance == MEASURED_TOLERANCE
    assert first.source.startswith("measured: 256^3 float32 matmul, 1 threads")
    cache = json.loads((cache_dir() / "calibration.json").read_text())
    key = next(k for k in cache if k.endswith("|1|float32|highest|256"))
    assert cache[key] == first.flops
    # Cached: the same figure comes back without measuring again.
    cache[key] = 12345.0
    (cache_dir() / "calibration.json").write_text(json.dumps(cache))
    assert cpu_peak("float32", "highest", threads=1, size=256).flops == 12345.0


def test_cpu_peak_restores_torch_settings() -> None:
    import torch

    threads, prec = torch.get_num_threads(), torch.get_float32_matmul_precision()
    cpu_peak("bfloat16", "high", threads=1, size=128)
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, prec)


def test_fingerprint() -> None:
    import torch

    fp = fingerprint()
    assert fp.hostname and fp.machine_tag == machine_tag(fp.hostname)
    assert fp.memory_bytes > 0
    assert fp.logical_cores is not None and fp.logical_cores >= 1
    assert fp.torch_version == torch.__version__
    assert fp.python.count(".") == 2
    assert fp.farm_version
    assert MachineFingerprint.model_validate_json(fp.model_dump_json()) == fp
    assert fingerprint(with_torch=False).torch_version is None


def test_machine_tag_is_queue_safe() -> None:
    assert machine_tag("Box_7.lab.example.org") == "box_7"
    assert machine_tag("weird host!") == "weird-host"
    assert queue_for(f"cpu:{machine_tag('GPU-Node.01')}") == "cpu.gpu-node"
