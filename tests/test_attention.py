"""farm's blocked causal attention against PyTorch's fused kernel: same values, same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import farm.engine.attention as attn
import farm.engine.linear as lin
from farm.engine.attention import BLOCK_ROWS, blocked_causal, causal_attention
from farm.flops import kept_attention_bytes
from farm.spec import ModelShape


def _qkv(T: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, T, 3, 4, 32, generator=g).to(dtype).requires_grad_()


def _split(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(x[:, :, i].transpose(1, 2) for i in range(3))  # (B, nh, T, hs), strided like the model's


@pytest.mark.parametrize("heads_at_once", [False, True], ids=["head-by-head-onednn", "batched"])
@pytest.mark.parametrize("T", [1, 7, BLOCK_ROWS, BLOCK_ROWS + 3, 2 * BLOCK_ROWS + 100])
def test_blocked_matches_fused_in_float32_values_and_gradients(
    T: int, heads_at_once: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not heads_at_once and not lin.onednn_available():
        pytest.skip("no oneDNN linear in this torch build or CPU")
    monkeypatch.setattr(attn, "onednn_available", lambda: not heads_at_once)
    x1, x2 = _qkv(T, torch.float32), _qkv(T, torch.float32)
    a = F.scaled_dot_product_attention(*_split(x1), is_causal=True)
    b = blocked_causal(*_split(x2))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)


def test_blocked_bf16_within_bf16_rounding_of_the_float32_answer() -> None:
    T = 2 * BLOCK_ROWS
    x = _qkv(T, torch.float32)
    ref = F.scaled_dot_product_attention(*_split(x), is_causal=True)
    got = blocked_causal(*_split(x.detach().bfloat16()))
    fused = F.scaled_dot_product_attention(*_split(x.detach().bfloat16()), is_causal=True)
    err_blocked = (got.float() - ref).abs().max().item()
    err_fused = (fused.float() - ref).abs().max().item()
    assert err_blocked < 0.05  # a few bf16 ulps at these magnitudes
    assert err_blocked <= 4 * err_fused + 1e-3  # no worse in kind than the fused kernel's own rounding


def test_blocked_bf16_gradients_within_bf16_rounding_of_the_float32_ones() -> None:
    T = 2 * BLOCK_ROWS + 40
    x = _qkv(T, torch.float32)
    w = torch.randn(2, 4, T, 32, generator=torch.Generator().manual_seed(1))
    (F.scaled_dot_product_attention(*_split(x), is_causal=True) * w).sum().backward()
    errs = []
    for f in (blocked_causal, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)):
        xb = x.detach().bfloat16().requires_grad_()
        (f(*_split(xb)) * w.bfloat16()).sum().backward()
        assert xb.grad is not None and x.grad is not None
        errs.append((xb.grad.float() - x.grad).abs().max().item())
    scale = x.grad.abs().max().item()
    assert errs[0] < 0.05 * scale  # bf16 rounding, not a wrong formula
    assert errs[0] <= 4 * errs[1] + 1e-3  # no worse in kind than the fused kernel's own


def test_inference_keeps_no_graph_and_matches_training_forward() -> None:
    x = _qkv(2 * BLOCK_ROWS, torch.float32)
    trained = blocked_causal(*_split(x))
    with torch.inference_mode():
        inferred = blocked_causal(*_split(x))
    assert inferred.grad_fn is None and trained.grad_fn is not None
    assert torch.equal(inferred, trained.detach())


def test_a_token_never_sees_a_later_one() -> None:
    T = 2 * BLOCK_ROWS + 5
    x = _qkv(T, torch.bfloat16).detach()
    y = blocked_causal(*_split(x))
    x2 = x.clone()
    x2[:, T // 2 :] = torch.randn_like(x2[:, T // 2 :])  # change every later token's q, k, v
    y2 = blocked_causal(*_split(x2))
    assert torch.equal(y[:, :, : T // 2], y2[:, :, : T // 2])


def test_which_path_runs() -> None:
    short = _qkv(BLOCK_ROWS, torch.bfloat16).detach()
    torch.testing.assert_close(
        causal_attention(*_split(short)), F.scaled_dot_product_attention(*_split(short), is_causal=True)
    )


@pytest.mark.parametrize("on_onednn", [True, False])
def test_float32_is_blocked_only_where_its_linears_run_on_onednn(
    on_onednn: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 on MKL (an Intel CPU, FARM_CPU_GEMM=default) keeps the fused kernel."""
    if on_onednn and not lin.onednn_available():
        pytest.skip("no oneDNN linear in this torch build or CPU")
    monkeypatch.setattr(lin, "fp32_onednn", lambda: on_onednn)
    f32 = _qkv(2 * BLOCK_ROWS, torch.float32).detach()
    want = blocked_causal(*_split(f32)) if on_onednn else F.scaled_dot_product_attention(*_split(f32), is_causal=True)
    assert torch.equal(causal_attention(*_split(f32)), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_memory_it_keeps_is_the_one_predicted(dtype: torch.dtype) -> None:
    """farm.flops.kept_attention_bytes (in a CPU train phase's predicted memory) is what the backward keeps."""
    B, nh, T, hs = 2, 4, 2 * BLOCK_ROWS + 100, 32
    x = torch.randn(B, T, 3, nh, hs).to(dtype).requires_grad_()
    out = blocked_causal(*_split(x))
    assert out.grad_fn is not None
    fn = out.grad_fn
    while fn is not None and "BlockedCausal" not in type(fn).__name__:
        fn = fn.next_functions[0][0]
    assert fn is not None
    probs = fn.saved_tensors[4:]  # type: ignore[attr-defined]  # after q, k, v and the output
    kept = sum(p.numel() * p.element_size() for p in probs)
    shape = ModelShape(name="one-layer", n_layer=1, n_head=nh, n_embd=nh * hs, block_size=T, vocab_size=64)
    assert kept == kept_attention_bytes(shape, B, T, dtype.itemsize)
    assert kept_attention_bytes(shape, B, 2 * BLOCK_ROWS - 1, 4) == 0  # the fused kernel's length keeps none
