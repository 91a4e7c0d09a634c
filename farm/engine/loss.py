"""The LM head and its cross-entropy fused, chunk by chunk: the loss of the train phase on CPUs.

Used by `GPT.forward` on the devices in `FUSED_LOSS_DEVICES` when it is given targets and asked for
no logits. Same loss and gradients as `F.cross_entropy(h @ w.T, targets)`, without the full
(tokens, vocabulary) logits (tests/test_benchmarks.py checks both against the unfused path).
"""

from __future__ import annotations

from typing import Any

import torch

from farm.engine.linear import matmul_nt, routed

# Rows of the (rows, vocab) logits block the fused LM-head loss handles at a time: 512 x 50257 float32
# is 103 MB, so a 1 x 1024 step needs 2 blocks in one reused buffer instead of 3-4 fresh (1024, 50257)
# tensors (on a 2-thread Xeon: 0.95x the unfused time, half the page faults; benchmarks/lm_head_loss.py).
LOSS_CHUNK_ROWS = 512
# Devices whose train step uses the fused loss. On an H200 it cut training memory by half (12.1 ->
# 6.3 GiB for GPT-2 small 8 x 1024 fp32) but made the step 6-50% slower (many small launches, bf16 ->
# fp32 round trips), so CUDA keeps the unfused path: speed is what the farm measures.
FUSED_LOSS_DEVICES = ("cpu",)
# Under bf16 autocast the head gradient dW = G^T H is one GEMM over every row while the (N, V) bf16
# gradient G fits in this many bytes (1 x 1024 x 50257: 103 MB), as autocast's unfused path computes
# it, instead of one GEMM a block, each converted to float32 and added (bandwidth-bound passes over
# a 154 MB (V, C) float32 tensor per block). Above it, blocks with float32 accumulation.
WHOLE_GRAD_BYTES = 256 * 2**20


# Rows of a low-precision logits block whose float32 log-softmax is taken at a time, for the loss's
# one gathered value a row: 32 x 50257 float32 stays in cache (6.4 MB) where the whole block's is
# a 206 MB write (1024 rows: 13.9 against 20.2 ms, bf16, 2 Zen 5 threads).
LSM_ROWS = 32


def _target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits.float())[i, targets[i]] for every row i, a few rows at a time."""
    out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for s in range(0, logits.shape[0], LSM_ROWS):
        lsm = torch.log_softmax(logits[s : s + LSM_ROWS], dim=1, dtype=torch.float32)
        out[s : s + LSM_ROWS] = lsm.gather(1, targets[s : s + LSM_ROWS, None]).squeeze(1)
    return out


class _LMHeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `h @ w.T` against `targets`, with its gradients computed chunk by chunk.

    The unfused path materialises the full (N, V) logits, their log-softmax (saved for backward)
    and, in backward, a (N, V) gradient: three or four fresh 206 MB tensors at N = 1024, V = 50257,
    each page-faulted in by the OS and streamed through memory several times. Here each block of
    rows is computed once into one reused scratch buffer: logits -> log-softmax (the loss) -> softmax
    in place -> minus one-hot = dloss/dlogits -> the two gradient matmuls. Every FLOP of the unfused path is
    still done (the same three matmuls per block); the backward only scales the stored gradients.
    Targets equal to `ignore_index` count for nothing, as in F.cross_entropy.
    """

    # ctx is autograd's context object; it carries attributes set here, so it is typed Any.
    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,  # (N, C) final hidden states
        w: torch.Tensor,  # (V, C) LM head (tied embedding)
        targets: torch.Tensor,  # (N,) token ids
        mm_dtype: torch.dtype,  # dtype of the matmuls (autocast's, else the weights')
        chunk: int,
        ignore_index: int,
    ) -> torch.Tensor:
        N, V = h.shape[0], w.shape[0]
        hm, wm = h.to(mm_dtype), w.to(mm_dtype)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_grad else None
        # float32 on oneDNN (farm.engine.linear): its GEMMs take no `out=`, so each block is fresh
        onednn = mm_dtype == torch.float32 and routed(hm, wm)
        # One GEMM for dW over every row (G kept whole), else a float32 accumulator block by block.
        # bf16 keeps G in `buf`; float32 on oneDNN takes every row as one block, whose softmax is G.
        whole = need_grad and (mm_dtype != torch.float32 or onednn) and N * V * mm_dtype.itemsize <= WHOLE_GRAD_BYTES
        if whole and onednn:
            chunk = N
        buf = None if onednn else torch.empty(N if whole else min(chunk, N), V, dtype=mm_dtype, device=h.device)
        # The (V, C) head gradient: accumulated block by block in float32, else written once (whole)
        # in the weights' dtype (bf16 weights: the bf16 GEMM's result transposed once into bf16, not
        # into a float32 copy converted back to bf16 in backward, a 23.5 + 4.9 ms round trip at 1 x 1024).
        grad_w = None
        if need_grad:
            grad_w = (torch.empty(w.shape, dtype=w.dtype, device=w.device) if whole
                      else torch.zeros(w.shape, dtype=torch.float32, device=w.device))  # fmt: skip
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        valid = targets != ignore_index  # (N,)
        safe_t = torch.where(valid, targets, 0)
        count = valid.sum().clamp(min=1).to(torch.float32)
        # d(mean loss)/d(logits) = (softmax - onehot) * row_scale: 1/count, 0 for an ignored target.
        # The row scale is applied to the GEMMs' small operands (dX's (n, C) rows, and H's rows before
        # dW = G^T H), not in a pass over the (n, V) block: G stays softmax - onehot.
        row_scale = valid.to(torch.float32) / count
        h_scaled = (hm * row_scale[:, None].to(mm_dtype)) if need_grad else hm
        g = None
        for s in range(0, N, chunk):
            e = min(s + chunk, N)
            if buf is None:
                logits = matmul_nt(hm[s:e], wm)  # (n, V)
            else:
                block = buf[s:e] if whole else buf[: e - s]
                logits = torch.mm(hm[s:e], wm.t(), out=block)
            v = valid[s:e]
            if mm_dtype == torch.float32:
                # log-softmax in place (one pass; logsumexp and a subtract took 34 + 21 ms against 11
                # for 1024 rows, 2 Zen 5 threads), the loss from it, then softmax = exp of it in place
                g = torch.log_softmax(logits, dim=1, out=logits)
                loss_sum -= (g.gather(1, safe_t[s:e, None]).squeeze(1) * v).sum()
                if grad_h is None or grad_w is None:  # no gradient wanted
                    continue
                g.exp_()
            else:
                # Low-precision logits: the loss from their float32 log-softmax (as autocast's
                # cross-entropy), then G = their softmax in place, float32 arithmetic inside, rounded
                # once to the matmul dtype (not exp, scale and convert passes over a float32 copy).
                loss_sum -= (_target_log_probs(logits, safe_t[s:e]) * v).sum()
                if grad_h is None or grad_w is None:  # no gradient wanted
                    continue
                g = torch.softmax(logits, dim=1, out=logits)  # whole: G's rows kept in buf for dW
            g[torch.arange(e - s, device=h.device), safe_t[s:e]] -= 1.0
            if onednn:
                grad_h[s:e] = matmul_nt(g, wm.t())  # (n, C) = (n, V) @ (V, C)
            elif grad_h.dtype == mm_dtype:
                torch.mm(g, wm, out=grad_h[s:e])
            else:
                grad_h[s:e] = torch.mm(g, wm)
            grad_h[s:e] *= row_scale[s:e, None]
            if whole:
                continue
            if onednn:
                grad_w += matmul_nt(g.t(), h_scaled[s:e].t())  # (V, C) += (V, n) @ (n, C)
            elif mm_dtype == torch.float32:
                grad_w.addmm_(g.t(), h_scaled[s:e])
            else:
                grad_w += torch.mm(g.t(), h_scaled[s:e]).float()
        if whole and grad_w is not None:
            # (V, C) = ((C, N) @ (N, V))^T, one GEMM as autocast's; in this orientation oneDNN ran it at
            # 580 GFLOP/s against 430 for (V, N) @ (N, C) in bf16 (1 x 1024, 2 Zen 5 threads; the
            # transposing copy included: 0.158 s against 0.188 s), float32 245 against 303 ms.
            whole_g = g if onednn else buf  # float32 on oneDNN: the one block's G; bf16: G kept in buf
            if whole_g is not None:
                grad_w.copy_(matmul_nt(h_scaled.t(), whole_g.t()).t())
        if grad_h is not None and grad_w is not None:
            ctx.save_for_backward(grad_h, grad_w)
            ctx.w_dtype = w.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors  # of the mean loss already
        if grad_out.device.type == "cpu" and grad_out.item() == 1.0:  # loss.backward(): nothing to scale
            return grad_h, grad_w.to(ctx.w_dtype), None, None, None, None
        return (grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(ctx.w_dtype), None, None, None, None)


def lm_head_loss(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int = LOSS_CHUNK_ROWS, ignore_index: int = -100
) -> torch.Tensor:
    """F.cross_entropy(h @ w.T, targets) (mean over non-ignored targets) without full logits.

    h: (N, C), w: (V, C), targets: (N,). Under autocast the matmuls run in autocast's dtype and the
    softmax in float32, as autocast does for linear + cross_entropy.
    """
    dev = h.device.type
    mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.dtype
    with torch.autocast(dev, enabled=False):
        return _LMHeadCrossEntropy.apply(h, w, targets, mm_dtype, chunk, ignore_index)
