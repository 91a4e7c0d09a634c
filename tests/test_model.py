"""The GPT-2 model: shapes, devices, tied weights, parity with transformers, local HF checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from farm.engine.model import GPT, from_hf_checkpoint, hf_state_dict
from farm.errors import CheckpointError
from farm.spec import ModelShape

transformers = pytest.importorskip("transformers")

SHAPE = ModelShape(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=503)


def _hf_model(seed: int = 0):
    """transformers' GPT2LMHeadModel with random weights, the same shape as SHAPE."""
    cfg = transformers.GPT2Config(
        n_layer=SHAPE.n_layer,
        n_head=SHAPE.n_head,
        n_embd=SHAPE.n_embd,
        n_positions=SHAPE.block_size,
        vocab_size=SHAPE.vocab_size,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a mix-up would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_model():
    return _hf_model()


def _tokens(batch: int = 2, seq: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, SHAPE.vocab_size, (batch, seq), generator=g)


def _assert_same(ours: GPT, hf) -> None:
    idx = _tokens()
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, _ = ours(idx)
        _, loss = ours(idx[:, :-1], idx[:, 1:])  # transformers shifts labels inside; we pass targets
    assert logits.shape == ref.logits.shape == (2, 48, SHAPE.vocab_size)
    assert (logits - ref.logits).abs().max().item() < 1e-4
    assert loss is not None
    assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-5)


def test_forward_shapes_and_loss() -> None:
    model = GPT(SHAPE)
    idx = _tokens(3, 16)
    logits, loss = model(idx)
    assert logits.shape == (3, 16, SHAPE.vocab_size) and loss is None
    _, loss = model(idx, idx)
    assert loss is not None and loss.ndim == 0
    # Random init predicts close to uniformly: loss near ln(vocab).
    assert abs(loss.item() - torch.log(torch.tensor(float(SHAPE.vocab_size))).item()) < 1.0


def test_weights_are_tied_and_initialised() -> None:
    model = GPT("gpt2-tiny")
    assert model.lm_head.weight is model.wte.weight
    assert model.config.name == "gpt2-tiny"
    assert torch.all(model.h[0].ln_1.weight == 1) and torch.all(model.h[0].attn.c_attn.bias == 0)
    assert 0.015 < model.wte.weight.std().item() < 0.025


def test_tensors_the_model_creates_are_on_its_device() -> None:
    """On the meta device nothing can silently fall back to the CPU: position ids must be made there too."""
    model = GPT("gpt2", device="meta")
    idx = torch.zeros(2, 32, dtype=torch.long, device="meta")
    logits, loss = model(idx, idx)
    assert logits.device.type == "meta" and logits.shape == (2, 32, 50257)
    assert loss is not None and loss.device.type == "meta"
    assert model.device.type == "meta"


def test_dtype_argument() -> None:
    model = GPT(SHAPE, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits, _ = model(_tokens(1, 8))
    assert logits.dtype == torch.bfloat16


def test_sequence_above_context_is_refused() -> None:
    with pytest.raises(ValueError, match="context"):
        GPT(SHAPE)(torch.zeros(1, SHAPE.block_size + 1, dtype=torch.long))


def test_causal() -> None:
    """Changing a later token never changes earlier logits."""
    model = GPT(SHAPE).eval()
    a = _tokens(1, 20)
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % SHAPE.vocab_size
    with torch.no_grad():
        la, _ = model(a)
        lb, _ = model(b)
    assert torch.allclose(la[:, :10], lb[:, :10], atol=1e-6)
    assert not torch.allclose(la[:, 10:], lb[:, 10:])


def test_parity_with_transformers_via_state_dict(hf_model) -> None:
    ours = GPT(SHAPE).eval()
    result = ours.load_state_dict(hf_state_dict(hf_model.state_dict()), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["lm_head.weight"]  # tied to wte
    _assert_same(ours, hf_model)


def test_parity_with_transformers_sdpa_attention() -> None:
    hf = _hf_model(seed=3)
    hf.config._attn_implementation = "sdpa"
    ours = GPT(SHAPE).eval()
    ours.load_state_dict(hf_state_dict(hf.state_dict()), strict=False)
    _assert_same(ours, hf)


def test_from_hf_checkpoint_safetensors(hf_model, tmp_path: Path) -> None:
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "pytorch_model.bin").exists()
    ours = from_hf_checkpoint(tmp_path).eval()
    assert ours.config.n_embd == SHAPE.n_embd and ours.config.vocab_size == SHAPE.vocab_size
    assert ours.lm_head.weight is ours.wte.weight
    _assert_same(ours, hf_model)


def test_from_hf_checkpoint_pytorch_bin_with_legacy_keys(hf_model, tmp_path: Path) -> None:
    """A pytorch_model.bin as old GPT-2 checkpoints hold it: causal-mask buffers and an explicit lm_head."""
    hf_model.config.save_pretrained(tmp_path)
    sd = {k: v.clone() for k, v in hf_model.state_dict().items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    n = SHAPE.block_size
    for i in range(SHAPE.n_layer):
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ours = from_hf_checkpoint(tmp_path).eval()
    _assert_same(ours, hf_model)


def test_from_hf_checkpoint_dtype(hf_model, tmp_path: Path) -> None:
    hf_model.save_pretrained(tmp_path)
    ours = from_hf_checkpoint(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert ours.device.type == "cpu"


def _good_dir(hf_model, root: Path) -> Path:
    d = root / "good"
    if not d.exists():
        hf_model.save_pretrained(d)
    return d


@pytest.mark.parametrize(
    "breakage",
    ["empty", "no_config", "no_weights", "bad_json", "garbage_weights", "wrong_shape", "missing_tensor", "gelu"],
)
def test_broken_checkpoint_directory(hf_model, tmp_path: Path, breakage: str) -> None:
    good = _good_dir(hf_model, tmp_path)
    d = tmp_path / breakage
    d.mkdir()
    config = json.loads((good / "config.json").read_text())
    if breakage != "empty":
        if breakage != "no_config":
            text = "{oops" if breakage == "bad_json" else json.dumps(config)
            if breakage == "wrong_shape":
                text = json.dumps({**config, "n_embd": 128})
            if breakage == "gelu":
                text = json.dumps({**config, "activation_function": "relu"})
            (d / "config.json").write_text(text)
        if breakage == "garbage_weights":
            (d / "model.safetensors").write_bytes(b"this is not a safetensors file")
        elif breakage == "missing_tensor":
            from safetensors.torch import load_file, save_file

            sd = load_file(str(good / "model.safetensors"))
            sd.pop("transformer.h.1.mlp.c_fc.weight")
            save_file(sd, str(d / "model.safetensors"))
        elif breakage != "no_weights":
            shutil.copy(good / "model.safetensors", d / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        from_hf_checkpoint(d)
    assert str(d) in str(e.value)
    with pytest.raises(CheckpointError):
        from_hf_checkpoint(tmp_path / "does-not-exist")


def test_inference_lm_head_in_row_blocks_equals_the_plain_head() -> None:
    """Above LOGIT_BLOCK_ROWS tokens, CPU inference computes the logits a block of rows at a time:
    the same numbers as the plain LM head (which autograd still uses)."""
    from farm.engine.model import LOGIT_BLOCK_ROWS

    torch.manual_seed(0)
    m = GPT("gpt2-tiny").eval()
    T = min(m.config.block_size, LOGIT_BLOCK_ROWS + 37)
    idx = torch.randint(0, m.config.vocab_size, (2, T))
    with torch.no_grad():
        plain = m.lm_head(m.ln_f(m.h[0](m.wte(idx) + m.wpe(torch.arange(T)))))
        blocked = m._logits(m.ln_f(m.h[0](m.wte(idx) + m.wpe(torch.arange(T)))))
    torch.testing.assert_close(blocked, plain, rtol=0, atol=0)
    logits, _ = m(idx)  # autograd on: the plain head, and it still trains
    assert logits is not None and logits.requires_grad
