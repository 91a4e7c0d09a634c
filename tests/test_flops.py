"""Counting the work: parameters, FLOPs (against a hand count and torch's own counter), memory."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from farm.engine.model import GPT
from farm.flops import (
    attention_flops_per_token,
    forward_flops,
    kept_attention_bytes,
    matmul_flops_per_token,
    min_phase_flops,
    param_count,
    phase_flops,
    predict_memory,
    predict_peak,
)
from farm.spec import PRESETS, ModelShape, parse_spec

GIB = 1 << 30

# Published parameter counts with the LM head tied to the token embedding.
EXPECTED_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_of_every_preset_on_meta(name: str) -> None:
    """Build each preset on the meta device (no memory) and count its parameters."""
    model = GPT(PRESETS[name], device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.num_parameters() == param_count(PRESETS[name])
    if name in EXPECTED_PARAMS:
        assert model.num_parameters() == EXPECTED_PARAMS[name]


def test_gpt2_small_is_124_439_808() -> None:
    assert param_count(PRESETS["gpt2"]) == 124_439_808


def test_param_count_by_hand() -> None:
    # C=8, L=2, V=10, context 16. Per layer: ln_1 + ln_2 = 2*2*8 = 32; c_attn 8*24 + 24 = 216;
    # attn c_proj 64 + 8 = 72; c_fc 8*32 + 32 = 288; mlp c_proj 32*8 + 8 = 264 -> 872.
    # wte 10*8 = 80, wpe 16*8 = 128, ln_f 16; lm_head tied (0). Total 80 + 128 + 2*872 + 16 = 1968.
    shape = ModelShape(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=10)
    assert param_count(shape) == 1968
    assert GPT(shape).num_parameters() == 1968


def test_forward_flops_by_hand() -> None:
    """A small custom shape counted by hand, matmul by matmul (one multiply-add = 2 FLOPs)."""
    shape = ModelShape(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=10)
    batch, seq = 3, 4
    C, V, T = 8, 10, 4
    per_layer = (
        2 * C * (3 * C)  # c_attn: (T, C) @ (C, 3C) -> 384 per token
        + 2 * C * C  # attn c_proj -> 128
        + 2 * C * (4 * C)  # mlp c_fc -> 512
        + 2 * (4 * C) * C  # mlp c_proj -> 512
    )
    assert per_layer == 1536
    lm_head = 2 * C * V  # 160
    attention = 2 * (2 * T * C)  # per layer: Q·Kᵀ (2·T·C) and A·V (2·T·C) = 128
    per_token = 2 * per_layer + lm_head + 2 * attention
    assert per_token == 3072 + 160 + 256 == 3488
    assert matmul_flops_per_token(shape) == 3232
    assert attention_flops_per_token(shape, seq) == 256
    assert forward_flops(shape, batch, seq) == batch * seq * 3488 == 41_856
    spec = parse_spec({"model": shape.model_dump(), "batch": batch, "seq": seq})
    assert phase_flops(spec, "forward") == 41_856
    assert phase_flops(spec, "train") == 3 * 41_856
    assert phase_flops(spec, "init") == 0
    # Causal attention: only half of the score matrix is needed.
    assert min_phase_flops(shape, batch, seq, "forward") == batch * seq * (3232 + 128) == 40_320
    assert min_phase_flops(shape, batch, seq, "train") == 3 * 40_320
    assert min_phase_flops(shape, batch, seq, "init") == 0


def test_seed_experiment_counts() -> None:
    """The seed's numbers: about 285M FLOPs per token, 2.33 TFLOP per 8 x 1024 forward."""
    gpt2 = PRESETS["gpt2"]
    per_token = matmul_flops_per_token(gpt2) + attention_flops_per_token(gpt2, 1024)
    assert 284e6 < per_token < 286e6
    assert 2.3e12 < forward_flops(gpt2, 8, 1024) < 2.35e12
    assert 11.6e12 < 5 * forward_flops(gpt2, 8, 1024) < 11.8e12


def _linear_flops(fc: FlopCounterMode) -> int:
    """FLOPs of the dense matmuls (Linear layers) that torch's counter saw: aten's, or oneDNN's linear
    where farm.engine.linear routes them (it registers that op's formula with the counter)."""
    counts = fc.get_flop_counts()["Global"]
    return sum(n for op, n in counts.items() if str(op).split(".")[-1] in {"mm", "addmm", "_linear_pointwise"})


def test_matmul_count_matches_torch_flop_counter() -> None:
    """Our formula's dense part equals what torch counts for the model's Linear layers."""
    shape = ModelShape(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=50)
    model = GPT(shape)
    idx = torch.randint(0, 50, (3, 8))
    with FlopCounterMode(display=False) as fc:
        model(idx)
    assert _linear_flops(fc) == 3 * 8 * matmul_flops_per_token(shape)
    with FlopCounterMode(display=False) as fc:
        _, loss = model(idx, idx)
        assert loss is not None
        loss.backward()
    # Backward of every Linear is two matmuls of the forward's size: 3x in all.
    assert _linear_flops(fc) == 3 * 3 * 8 * matmul_flops_per_token(shape)


def test_memory_prediction_components() -> None:
    spec = parse_spec({"model": "gpt2", "batch": 8, "seq": 1024})
    n = param_count(PRESETS["gpt2"])
    init, fwd, train = (predict_memory(spec, p) for p in ("init", "forward", "train"))
    assert init.total == init.weights == 4 * n
    assert fwd.gradients == fwd.optimizer == 0
    assert fwd.logits == 8 * 1024 * 50257 * 4
    assert train.gradients == train.weights == 4 * n
    assert train.optimizer == 2 * 4 * n  # AdamW: two states per parameter
    assert init.total < fwd.total < train.total
    assert predict_peak(spec) == train
    # The seed: GPT-2 small training at 8 x 1024 in fp32 is of order 10-14 GB.
    assert 8 * GIB < train.total < 16 * GIB
    assert "GiB" in train.describe() and "optimizer" in train.describe()
    sgd = predict_memory(spec.model_copy(update={"optimizer": "sgd"}), "train")
    assert sgd.optimizer == 4 * n
    # Casting weights to bf16 halves them; autocast keeps float32 master weights.
    cast = predict_memory(spec.model_copy(update={"dtype": "bfloat16", "precision_mode": "cast"}), "train")
    auto = predict_memory(spec.model_copy(update={"dtype": "bfloat16", "precision_mode": "autocast"}), "train")
    assert cast.weights == 2 * n and auto.weights == 4 * n
    # "auto" (the default) casts on a CPU and autocasts on a GPU.
    on_cpu = predict_memory(spec.model_copy(update={"dtype": "bfloat16"}), "train")
    on_gpu = predict_memory(spec.model_copy(update={"dtype": "bfloat16", "devices": ("cuda",)}), "train")
    assert on_cpu.weights == 2 * n and on_gpu.weights == 4 * n
    assert predict_peak(spec.model_copy(update={"phases": ("init",)})).phase == "init"
    # A CPU keeps the blocked attention's probabilities for the backward (8 x 12 heads x 12 layers, each
    # block of 256 query rows against the keys up to its end, float32); a GPU's fused kernel keeps none.
    f32_gpu = predict_memory(spec.model_copy(update={"devices": ("cuda",)}), "train")
    kept = 12 * 8 * 12 * 256 * (256 + 512 + 768 + 1024) * 4
    assert train.activations - f32_gpu.activations == kept == kept_attention_bytes(PRESETS["gpt2"], 8, 1024, 4)
    f16 = spec.model_copy(update={"dtype": "float16"})  # float16 keeps the fused kernel on a CPU
    assert (
        predict_memory(f16, "train").activations
        == predict_memory(f16.model_copy(update={"devices": ("cuda",)}), "train").activations
    )


def test_gpt2_xl_training_needs_far_more() -> None:
    spec = parse_spec({"model": "gpt2-xl", "batch": 8, "seq": 1024})
    assert predict_memory(spec, "train").total > 60 * GIB
