"""Peak FLOP/s: the ceiling an MFU is relative to, and the published table of GPU peaks.

A result faster than its device's peak x tolerance is `invalid`. Every MFU names the peak it used
(`Peak.source`). CPU peaks are measured (`farm.engine.hardware.cpu_peak`). Never imports torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from farm.results.machine import gpu_tag

# Published dense peaks, TFLOP/s: fp32 (CUDA cores), tf32, bf16 and fp16 (tensor cores, dense).
# Keyed by GPU tag; a "-pcie" variant is chosen when the name says PCIe.
GPU_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "a100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    "h100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "h100-pcie": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0},
    "h200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "l4": {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0, "float16": 121.0},
    "l40s": {"float32": 91.6, "tf32": 183.0, "bfloat16": 362.1, "float16": 362.1},
    "a10": {"float32": 31.2, "tf32": 62.5, "bfloat16": 125.0, "float16": 125.0},
    # Turing has no TF32 and no bf16 tensor cores: bf16 is bounded by the fp16 figure.
    "t4": {"float32": 8.1, "tf32": 8.1, "bfloat16": 65.0, "float16": 65.0},
    "v100": {"float32": 15.7, "tf32": 15.7, "bfloat16": 125.0, "float16": 125.0},
    "rtx4090": {"float32": 82.6, "tf32": 82.6, "bfloat16": 165.2, "float16": 165.2},
}

# A measured CPU calibration is not a hard ceiling (a run can beat a short calibration by a few
# per cent); a published GPU peak is. Results above peak x tolerance are marked invalid.
TABLE_TOLERANCE = 1.0
MEASURED_TOLERANCE = 1.25


class Peak(BaseModel):
    """The peak FLOP/s an MFU is relative to, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flops: float
    source: str  # e.g. "table: h100 bfloat16 dense" or "measured: 2048^3 float32 matmul, 2 threads"
    tolerance: float


def gpu_peak(name: str, dtype: str, matmul_precision: str) -> Peak | None:
    """Published dense peak of a GPU for the dtype actually used by its matmuls."""
    tag = gpu_tag(name)
    if tag == "h100" and "pcie" in name.lower():
        tag = "h100-pcie"
    table = GPU_PEAKS_TFLOPS.get(tag)
    if table is None:
        return None
    key = dtype
    if dtype == "float32" and matmul_precision != "highest":
        key = "tf32"  # TF32 tensor cores are allowed: the ceiling is theirs
    return Peak(flops=table[key] * 1e12, source=f"table: {tag} {key} dense", tolerance=TABLE_TOLERANCE)
