"""The fused LM-head loss under bf16 autocast: the head gradient as one GEMM over every row (G kept
whole, as autocast's unfused path computes it) or block by block in float32 (above WHOLE_GRAD_BYTES)
gives the unfused path's loss and gradients within bf16's precision, and both paths agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from farm.engine import loss as loss_mod
from farm.engine.loss import lm_head_loss


def _grads(fn: object, h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn()  # type: ignore[operator]
    loss.backward()
    assert h.grad is not None and w.grad is not None
    return loss.detach().float(), h.grad.clone(), w.grad.clone()


@pytest.mark.parametrize("whole_bytes", [loss_mod.WHOLE_GRAD_BYTES, 0], ids=["one dW GEMM", "dW in blocks"])
def test_bf16_head_gradient_matches_autocast(monkeypatch: pytest.MonkeyPatch, whole_bytes: int) -> None:
    torch.manual_seed(0)
    h = (torch.randn(40, 32) * 0.5).requires_grad_()
    w = (torch.randn(300, 32) * 0.1).requires_grad_()
    t = torch.randint(0, 300, (40,))
    t[3] = -100  # an ignored target counts for nothing
    ref = _grads(lambda: F.cross_entropy(F.linear(h, w), t), h, w)
    monkeypatch.setattr(loss_mod, "WHOLE_GRAD_BYTES", whole_bytes)
    got = _grads(lambda: lm_head_loss(h, w, t, chunk=16), h, w)  # 16-row blocks: 3 of them, the last short
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.float(), rtol=2e-2, atol=2e-3)


def test_the_two_bf16_paths_agree_and_fp32_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    h = (torch.randn(24, 16) * 0.5).requires_grad_()
    w = (torch.randn(100, 16) * 0.1).requires_grad_()
    t = torch.randint(0, 100, (24,))
    whole = _grads(lambda: lm_head_loss(h, w, t, chunk=8), h, w)
    monkeypatch.setattr(loss_mod, "WHOLE_GRAD_BYTES", 0)
    blocks = _grads(lambda: lm_head_loss(h, w, t, chunk=8), h, w)
    for a, b in zip(whole, blocks, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)  # bf16 rounding of dW's sum differs only
    h.grad = w.grad = None
    lm_head_loss(h, w, t, chunk=8).backward()  # float32: the blocks' exact float32 accumulation, as before
    assert w.grad is not None
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(h2, w2), t).backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("whole_bytes", [loss_mod.WHOLE_GRAD_BYTES, 0], ids=["one dW GEMM", "dW in blocks"])
def test_bf16_weights_without_autocast_match_the_unfused_loss(
    monkeypatch: pytest.MonkeyPatch, whole_bytes: int
) -> None:
    """The "cast" precision mode: bf16 weights and activations, the softmax's arithmetic in float32."""
    monkeypatch.setattr(loss_mod, "WHOLE_GRAD_BYTES", whole_bytes)
    torch.manual_seed(3)
    h = (torch.randn(40, 32) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(300, 32) * 0.1).bfloat16().requires_grad_()
    t = torch.randint(0, 300, (40,))
    t[7] = -100  # an ignored target counts for nothing
    loss = lm_head_loss(h, w, t, chunk=16)
    loss.backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(F.linear(h2, w2).float(), t)
    ref.backward()
    assert h.grad is not None and w.grad is not None and h2.grad is not None and w2.grad is not None
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-6, atol=1e-6)  # both float32 from bf16 logits
    torch.testing.assert_close(h.grad.float(), h2.grad.float(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(w.grad.float(), w2.grad.float(), rtol=2e-2, atol=2e-3)
    assert float(h.grad[7].abs().max()) == 0.0
