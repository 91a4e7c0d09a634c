"""Causal self-attention: PyTorch's fused kernel, or, for bfloat16 on a CPU, blocks of query rows.

On a CPU, `F.scaled_dot_product_attention` runs its flash kernel, whose inner products in bfloat16
go through a generic path unless the CPU has AMX: on a 2-core AMD EPYC Zen 5 (AVX512_BF16, no AMX;
torch 2.13.0) it took 14 ms per GPT-2 small layer at 1 x 1024, a third of the whole bf16 forward,
while the same products as two bf16 GEMMs run at the GEMM rate (oneDNN's AVX512_BF16 kernels).
`blocked_causal` computes attention a block of query rows at a time: scores against the keys up to
the block's end only (the causal half, never the masked upper triangle), the softmax in bfloat16
storage with float32 arithmetic (what PyTorch's CPU softmax does inside), then the values. Each
block's probabilities are kept for the backward, (B, heads, rows, keys) in bfloat16: at 1 x 1024,
12 MB per layer (at 8 x 1024, 126 MB per layer, 1.5 GB for GPT-2 small's 12). On that Zen 5,
benchmarks/attention.py (both interleaved) gave 7.0 ms against 13.5 ms forward, 22.1 against 34.5 ms
forward + backward; largest error against float32 0.019 (the fused kernel's 0.011: probabilities
rounded to bf16 before the values). float32 stays on the fused kernel (1.12x slower blocked). A CPU
with AMX keeps the fused kernel too: its bf16 products use the tiles there (not measured here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from farm.engine.hardware import _cpu_info

__all__ = ["BLOCK_ROWS", "blocked_causal", "causal_attention"]

# Query rows per block: 256 kept the GEMMs large and the skipped triangle fine-grained on a Zen 5
# (benchmarks/attention.py); sequences shorter than two blocks take the fused kernel.
BLOCK_ROWS = 256


def blocked_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = BLOCK_ROWS) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, a block of query rows at a time. q, k, v: (B, nh, T, hs)."""
    T, hs = q.shape[-2], q.shape[-1]
    # Contiguous (B, nh, T, hs) once: the heads of a (B, T, 3C) projection are strided views, and
    # matmul copies a strided operand every block (the last block's q k^T took 720 against 423 us;
    # the three copies together about 50 us). q is scaled once: cheaper than scaling every score.
    q = q.mul(1.0 / math.sqrt(hs)).contiguous()
    k, v = k.contiguous(), v.contiguous()
    # -inf on a later key in the block, added in place (64 against 297 us for masked_fill_ of a bool mask)
    later = torch.zeros(block, block, dtype=q.dtype, device=q.device)
    later.masked_fill_(torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    outs = []
    for s in range(0, T, block):
        e = min(s + block, T)
        scores = q[:, :, s:e] @ k[:, :, :e].transpose(-1, -2)  # (B, nh, e - s, e): keys up to the block's end
        scores[..., s:e].add_(later[: e - s, : e - s])  # in place: the GEMM keeps no output
        outs.append(torch.softmax(scores, dim=-1) @ v[:, :, :e])  # (B, nh, e - s, hs)
    return torch.cat(outs, dim=2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention, (B, nh, T, hs) -> (B, nh, T, hs): blocked for bfloat16 on a CPU without AMX
    and a sequence of two blocks or more, PyTorch's fused kernel otherwise."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] >= 2 * BLOCK_ROWS and not _amx():
        return blocked_causal(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _amx() -> bool:
    """Whether this CPU has AMX tiles (then the fused kernel's bf16 products use them); the CPU
    flags farm reads once per process (`farm.engine.hardware._cpu_info`, cached)."""
    return "amx_bf16" in _cpu_info()[2]
