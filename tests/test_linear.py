"""farm.engine.linear: CPU linears on oneDNN give PyTorch's own results (forward, gradients, the GELU
epilogue, the fused loss's float32 path), and FARM_CPU_GEMM=default or autocast leave them to PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from farm.engine import linear as lin
from farm.engine import loss as loss_mod
from farm.engine.loss import lm_head_loss
from farm.engine.model import GPT
from farm.results.result import CPU_GEMM_DEFAULT

pytestmark = pytest.mark.skipif(not lin.onednn_available(), reason="no oneDNN linear in this torch build or CPU")


@pytest.fixture
def fp32_on_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 through oneDNN whatever the CPU's vendor (Intel's keeps MKL by default)."""
    monkeypatch.setattr(lin, "fp32_onednn", lambda: True)


def test_float32_linear_and_its_gradients_match_pytorch(fp32_on_onednn: None) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 7, 24, requires_grad=True)
    w = (torch.randn(40, 24) * 0.1).requires_grad_()
    b = torch.randn(40, requires_grad=True)
    g = torch.randn(2, 7, 40)
    out = lin.linear(x, w, b)
    assert out.grad_fn is not None and "OneDNNLinear" in type(out.grad_fn).__name__
    out.backward(g)
    got = (out.detach(), x.grad, w.grad, b.grad)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    ref = F.linear(x2, w2, b2)
    ref.backward(g)
    for a, r in zip(got, (ref.detach(), x2.grad, w2.grad, b2.grad), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_only_the_inputs_that_want_a_gradient_get_one(fp32_on_onednn: None) -> None:
    x = torch.randn(5, 8)
    w = torch.randn(3, 8, requires_grad=True)
    lin.linear(x, w, None).sum().backward()
    assert x.grad is None and w.grad is not None
    torch.testing.assert_close(w.grad, torch.ones(5, 3).t() @ x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_epilogue_in_inference_matches_gelu_after_linear(fp32_on_onednn: None, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x, w, b = torch.randn(16, 32).to(dtype), (torch.randn(64, 32) * 0.2).to(dtype), torch.randn(64).to(dtype)
    with torch.inference_mode():
        got = lin.linear_gelu(x, w, b)
    ref = F.gelu(F.linear(x.double(), w.double(), b.double()), approximate="tanh")
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the output's rounding
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


def test_autocast_leaves_linears_to_pytorch(fp32_on_onednn: None) -> None:
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    assert lin.routed(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lin.routed(x, w)
        assert lin.linear(x, w).dtype == torch.bfloat16  # autocast's, not a float32 oneDNN product
    assert not lin.routed(x.double(), w.double())


def test_env_switch_leaves_every_linear_to_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    monkeypatch.setenv(lin.GEMM_ENV, "default")
    lin.onednn_available.cache_clear()
    lin.fp32_onednn.cache_clear()
    try:
        assert not lin.routed(x, w) and not lin.routed(x.bfloat16(), w.bfloat16())
        assert lin.cpu_gemm() == CPU_GEMM_DEFAULT
    finally:
        monkeypatch.delenv(lin.GEMM_ENV)
        lin.onednn_available.cache_clear()
        lin.fp32_onednn.cache_clear()


@pytest.mark.parametrize("whole_bytes", [loss_mod.WHOLE_GRAD_BYTES, 0], ids=["one block, one dW GEMM", "dW in blocks"])
def test_float32_fused_loss_on_onednn_matches_cross_entropy(
    fp32_on_onednn: None, monkeypatch: pytest.MonkeyPatch, whole_bytes: int
) -> None:
    monkeypatch.setattr(loss_mod, "WHOLE_GRAD_BYTES", whole_bytes)
    torch.manual_seed(2)
    h = (torch.randn(40, 32) * 0.5).requires_grad_()
    w = (torch.randn(300, 32) * 0.1).requires_grad_()
    t = torch.randint(0, 300, (40,))
    t[5] = -100  # an ignored target counts for nothing
    loss = lm_head_loss(h, w, t, chunk=16)
    (loss * 3.0).backward()  # an upstream gradient other than 1 scales both gradients
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(F.linear(h2, w2), t)
    (ref * 3.0).backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-6)
    assert h.grad is not None and float(h.grad[5].abs().max()) == 0.0


def test_model_on_onednn_matches_pytorch_linears(fp32_on_onednn: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2 tiny's logits (inference: the GELU epilogue, the head) and its parameter gradients are
    PyTorch's within float32 rounding."""
    torch.manual_seed(3)
    model = GPT("gpt2-tiny")
    idx = torch.randint(0, model.config.vocab_size, (2, 33))
    x, y = idx[:, :-1], idx[:, 1:]

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with torch.inference_mode():
            logits, _ = model(x)
        _, loss = model(x, y, return_logits=False)
        assert loss is not None and logits is not None
        loss.backward()
        return logits, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    got_logits, got_grads = run()
    monkeypatch.setattr(lin, "routed", lambda a, b: False)
    ref_logits, ref_grads = run()
    torch.testing.assert_close(got_logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert len(got_grads) == len(ref_grads)
    for a, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-5)


def test_the_roofline_times_float32_on_the_library_the_model_runs_it_on(
    fp32_on_onednn: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where float32 linears run on oneDNN, the job's GEMM roofline is timed there too (else the model
    would beat its own roofline), and its cache entry is keyed by the library."""
    from farm.engine import roofline as rf
    from farm.spec import parse_spec

    calls: list[tuple[int, ...]] = []

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(a.shape))
        return lin.onednn_nt(a, b)

    monkeypatch.setattr(rf, "onednn_nt", counted)
    rate, rows = rf._measure_shape(64, 32, 48, torch.float32)
    assert rate > 0 and rows == 64 and calls and all(c[1] == 32 for c in calls)
    calls.clear()
    rf._measure_shape(64, 32, 48, torch.bfloat16)  # bf16: PyTorch's own matmul (oneDNN already)
    assert not calls
    spec = parse_spec({"model": "gpt2-tiny", "batch": 1, "seq": 16})
    monkeypatch.setattr(rf, "fp32_onednn", lambda: True)
    on = rf._roofline_key(spec, 1)
    monkeypatch.setattr(rf, "fp32_onednn", lambda: False)
    assert on.endswith("|onednn") and rf._roofline_key(spec, 1).endswith("|default")
