"""CPU linear layers on oneDNN where PyTorch's default GEMM leaves the CPU half idle.

PyTorch runs a float32 `F.linear` on a CPU through its BLAS, MKL in the x86 wheels, and a bfloat16
one through oneDNN. MKL picks its AVX-512 kernels only on Intel CPUs: on a 2-core AMD EPYC Zen 5
(torch 2.13.0, MKL 2024.2, oneDNN 3.12) the GPT-2 small float32 GEMMs at 1 x 1024 ran at 225
GFLOP/s through MKL and 500 through oneDNN (`torch.ops.mkldnn._linear_pointwise`, the kernel
inductor's CPU backend calls), the same float32 arithmetic (largest difference 2e-6 against a
float64 reference, MKL's 1e-6). So on a CPU that is not Intel's, float32 linears, their gradients
and the LM head go through oneDNN here: forward, `dX = dY W` and `dW = dY^T X`
(`OneDNNLinear`). Intel CPUs keep MKL, whose AVX-512 kernels are the ones inductor keeps for
float32 there.

In inference the tanh GELU after the MLP's first linear runs inside the GEMM (oneDNN's eltwise
post-op; bfloat16 and float32), instead of a pass over the (tokens, 4C) activations: 5.7 against
7.5 ms for GPT-2 small's 1024 x 768 -> 3072 in bf16 on that Zen 5. A bfloat16 linear with autograd
keeps `F.linear`, which is oneDNN already.

`FARM_CPU_GEMM=default` leaves every linear to PyTorch. Every CPU result records which one ran
(`JobResult.cpu_gemm`).
"""

from __future__ import annotations

import math
import os
import platform
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from farm.engine.hardware import cpu_id
from farm.results.result import CPU_GEMM_DEFAULT, CPU_GEMM_ONEDNN

__all__ = [
    "GEMM_ENV",
    "OneDNNLinear",
    "cpu_gemm",
    "fp32_onednn",
    "linear",
    "linear_gelu",
    "matmul_nt",
    "onednn_available",
    "onednn_nt",
    "routed",
]

GEMM_ENV = "FARM_CPU_GEMM"


@cache
def onednn_available() -> bool:
    """oneDNN's linear can be called here (an x86 build with it), and FARM_CPU_GEMM does not say no."""
    if os.environ.get(GEMM_ENV, "").strip().lower() == "default":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@cache
def fp32_onednn() -> bool:
    """float32 linears go through oneDNN: a CPU that is not Intel's (MKL's AVX-512 dispatch is Intel's)."""
    ident = cpu_id()
    return onednn_available() and ident is not None and ident.vendor not in ("", "GenuineIntel")


def cpu_gemm() -> str:
    """What this process's CPU linears run on (`JobResult.cpu_gemm`)."""
    return CPU_GEMM_ONEDNN if fp32_onednn() else CPU_GEMM_DEFAULT


def routed(x: torch.Tensor, w: torch.Tensor) -> bool:
    """x @ w^T goes to oneDNN's linear: on a CPU, outside autocast, float32 (where fp32_onednn) or
    bfloat16 (oneDNN's already)."""
    if x.device.type != "cpu" or x.dtype != w.dtype or torch.is_autocast_enabled("cpu"):
        return False
    if x.dtype == torch.float32:  # full float32 only: a lower matmul precision is PyTorch's to apply
        return fp32_onednn() and torch.get_float32_matmul_precision() == "highest"
    return x.dtype == torch.bfloat16 and onednn_available()


def _lp(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attr: str = "none", algo: str = "") -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algo)
    return out


def onednn_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b^T on oneDNN, whatever `routed` says (benchmarks/cpu_roofline_goal.py times both libraries)."""
    return _lp(a, b, None)


def _linear_flops(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of x @ w^T for torch.utils.flop_counter, which counts aten's matmuls but not oneDNN's."""
    return 2 * math.prod(x_shape) * w_shape[0]


if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    register_flop_formula(torch.ops.mkldnn._linear_pointwise)(_linear_flops)


def _grad_wanted(*ts: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


class OneDNNLinear(torch.autograd.Function):
    """x @ w^T + b with its gradients on oneDNN: dX = dY w, dW = dY^T x, db = sum of dY."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _lp(x, w, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _lp(g, w.t(), None)  # (.., N) @ (N, K)
        g2 = g.reshape(-1, g.shape[-1])
        if ctx.needs_input_grad[1]:
            dw = _lp(g2.t(), x.reshape(-1, x.shape[-1]).t(), None)  # (N, M) @ (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, w, b)`, on oneDNN where `routed` says so (with its gradients in float32)."""
    if not routed(x, w):
        return F.linear(x, w, b)
    if _grad_wanted(x, w, b):
        return OneDNNLinear.apply(x, w, b) if x.dtype == torch.float32 else F.linear(x, w, b)
    return _lp(x, w, b)


def linear_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """`F.gelu(F.linear(x, w, b), approximate="tanh")`: in inference on oneDNN, the GELU inside the GEMM."""
    if routed(x, w) and not _grad_wanted(x, w, b):
        return _lp(x, w, b, "gelu", "tanh")
    return F.gelu(linear(x, w, b), approximate="tanh")


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b^T of two matrices, no autograd: oneDNN where `routed`, else `torch.mm`."""
    return _lp(a, b, None) if routed(a, b) else torch.mm(a, b.t())
