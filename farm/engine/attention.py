"""Causal self-attention: PyTorch's fused kernel, or, on a CPU, blocks of query rows as GEMMs.

On a CPU, `F.scaled_dot_product_attention` runs its flash kernel. Its inner products in bfloat16 go
through a generic path unless the CPU has AMX, and in float32 through MKL, whose AVX-512 kernels
run on Intel CPUs only (`farm.engine.linear`). On a 2-core AMD EPYC Zen 5 (AVX512_BF16, no AMX;
torch 2.13.0), GPT-2 small's layer at 1 x 1024 took 14 ms forward in either dtype there, and 37
(bf16) and 50 ms (fp32) forward + backward: a third of the bf16 forward, a fifth of the fp32 train
step.

`blocked_causal` computes attention a block of query rows at a time: scores against the keys up to
the block's end only (the causal half, never the masked upper triangle), the softmax (bfloat16
storage with float32 arithmetic, as PyTorch's CPU softmax does inside), then the values; its
backward is written out (`_BlockedCausal`): dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)),
dQ = dS K, dK = dS^T Q, one GEMM each per block, where autograd's softmax backward makes two passes
over P's full rows and keeps more. Each block's probabilities P are kept for the backward,
(B, heads, rows, keys): at 1 x 1024, 16 MB a layer in bfloat16 and 32 MB in float32 (at 8 x 1024,
126 and 252 MB a layer, 1.5 and 3 GB for GPT-2 small's 12 layers); inference keeps none.

bfloat16 runs each product for all heads at once (a batched matmul: oneDNN's AVX512_BF16 kernels).
float32, where `farm.engine.linear` routes it to oneDNN, runs them head by head on oneDNN's linear,
every operand in the layout that kernel takes without a copy (a transposed input is copied; a
transposed weight is not). On that Zen 5, benchmarks/attention.py (interleaved): bf16 6.0 against
14.2 ms forward and 17.2 against 36.8 ms forward + backward; fp32 9.6 against 13.6 and 31.7 against
49.2 ms; largest differences against a float64 reference 0.019 (bf16; the fused kernel's 0.011, the
probabilities rounded to bf16 before the values) and 7e-7 (fp32). Elsewhere (float32 on MKL, a CPU
with AMX, whose fused kernel uses the tiles, or sequences shorter than two blocks) attention stays on
the fused kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from farm.engine.hardware import _cpu_info
from farm.engine.linear import onednn_available, onednn_nt, routed
from farm.flops import CPU_ATTENTION_BLOCK_ROWS

__all__ = ["BLOCK_ROWS", "blocked_causal", "causal_attention"]

# Query rows per block: 256 kept the GEMMs large and the skipped triangle fine-grained on a Zen 5
# (benchmarks/attention.py, both dtypes); sequences shorter than two blocks take the fused kernel.
# farm.flops predicts the memory the blocks keep from the same value.
BLOCK_ROWS = CPU_ATTENTION_BLOCK_ROWS

# a @ b^T over matching leading dimensions
_NT = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _batched_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.transpose(-1, -2)


def _groups(q: torch.Tensor) -> tuple[list[slice | int], _NT]:
    """How the heads are walked: all at once as batched matmuls, or (float32 on oneDNN) one head at
    a time as 2-D linears."""
    if q.dtype == torch.float32 and onednn_available():
        return list(range(q.shape[0])), onednn_nt
    return [slice(None)], _batched_nt


def _later_mask(block: int, like: torch.Tensor) -> torch.Tensor:
    """-inf on a later key within a diagonal block, 0 elsewhere: added in place to the scores (64
    against 297 us for masked_fill_ of a bool mask)."""
    later = torch.zeros(block, block, dtype=like.dtype, device=like.device)
    return later.masked_fill_(torch.ones(block, block, dtype=torch.bool, device=like.device).triu(1), float("-inf"))


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, keep: list[torch.Tensor] | None
) -> torch.Tensor:
    """softmax(q k^T + causal mask) v of (heads, T, hs) tensors, q already scaled; each block's
    probabilities appended to `keep` when given."""
    T = q.shape[-2]
    later = _later_mask(block, q)
    out = torch.empty_like(q)
    groups, nt = _groups(q)
    for g in groups:
        qg, kg, vt = q[g], k[g], v[g].transpose(-1, -2)
        for s in range(0, T, block):
            e = min(s + block, T)
            scores = nt(qg[..., s:e, :], kg[..., :e, :])  # (.., e - s, e): keys up to the block's end
            scores[..., s:e].add_(later[: e - s, : e - s])  # in place: the GEMM keeps no output
            p = torch.softmax(scores, dim=-1)
            if keep is not None:
                keep.append(p)
            out[g][..., s:e, :] = nt(p, vt[..., :e])
    return out


class _BlockedCausal(torch.autograd.Function):
    """`_forward` with its backward written out over the kept probabilities."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
        probs: list[torch.Tensor] = []
        out = _forward(q, k, v, block, probs)
        ctx.save_for_backward(q, k, v, out, *probs)
        ctx.block = block
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, *probs = ctx.saved_tensors
        block, T, hs = ctx.block, q.shape[-2], q.shape[-1]
        dout = dout.contiguous()
        rowdot = (dout * out).sum(-1, keepdim=True)  # rowsum(dO * O) = rowsum(P * dP), the softmax's term
        dq = torch.empty_like(q)
        # dK and dV accumulate as (hs, T): each block's product then lands without a transposed copy
        dkt = q.new_zeros(q.shape[0], hs, T)
        dvt = q.new_zeros(q.shape[0], hs, T)
        groups, nt = _groups(q)
        kept = iter(probs)
        for g in groups:
            qg, kg, vg, dog = q[g], k[g], v[g], dout[g]
            kt = kg.transpose(-1, -2)
            for s in range(0, T, block):
                e = min(s + block, T)
                p, qb, dob = next(kept), qg[..., s:e, :], dog[..., s:e, :]
                dvt[g][..., :e] += nt(dob.transpose(-1, -2), p.transpose(-1, -2))  # (P^T dO)^T
                ds = nt(dob, vg[..., :e, :])  # dP = dO V^T
                ds.sub_(rowdot[g][..., s:e, :]).mul_(p)  # dS = P * (dP - rowsum(dO * O)), in place
                dq[g][..., s:e, :] = nt(ds, kt[..., :e])  # dS K
                dkt[g][..., :e] += nt(qb.transpose(-1, -2), ds.transpose(-1, -2))  # (dS^T Q)^T
        return dq, dkt.transpose(-1, -2), dvt.transpose(-1, -2), None


def blocked_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = BLOCK_ROWS) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, a block of query rows at a time, with gradients.
    q, k, v: (B, nh, T, hs), any strides."""
    B, nh, T, hs = q.shape
    # Contiguous (B * nh, T, hs) once: the heads of a (B, T, 3C) projection are strided views, and
    # a GEMM would copy a strided operand every block (the last block's q k^T took 720 against
    # 423 us). q is scaled once: cheaper than scaling every score.
    q3, k3, v3 = (t.reshape(B * nh, T, hs).contiguous() for t in (q.mul(1.0 / math.sqrt(hs)), k, v))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        out = _BlockedCausal.apply(q3, k3, v3, block)
    else:
        out = _forward(q3, k3, v3, block, None)
    return out.view(B, nh, T, hs)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention, (B, nh, T, hs) -> (B, nh, T, hs): blocked on a CPU for bfloat16 without AMX
    and for float32 routed to oneDNN, with a sequence of two blocks or more; the fused kernel otherwise."""
    long_cpu = q.device.type == "cpu" and q.shape[-2] >= 2 * BLOCK_ROWS and q.dtype == k.dtype == v.dtype
    if long_cpu and ((q.dtype == torch.bfloat16 and not _amx()) or (q.dtype == torch.float32 and routed(q, k))):
        return blocked_causal(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _amx() -> bool:
    """Whether this CPU has AMX tiles (then the fused kernel's bf16 products use them); the CPU
    flags farm reads once per process (`farm.engine.hardware._cpu_info`, cached)."""
    return "amx_bf16" in _cpu_info()[2]
