"""Counting the work: parameters, FLOPs per token and predicted peak memory per phase.

FLOPs per token of a forward pass (the PaLM / nanoGPT convention, one multiply-add = 2 FLOPs):

    matmuls    2 * (12 * n_layer * C**2 + C * V)   # qkv 3C², proj C², mlp 8C² per layer; LM head C·V
    attention  2 * 2 * n_layer * T * C             # Q·Kᵀ and A·V, each 2·T·C per token per layer

with C = n_embd, V = vocab, T = sequence length. For GPT-2 small at T = 1024 that is
247.1M + 37.7M = 284.8M FLOPs per token, 2.33 TFLOP for one 8 x 1024 forward. A training step
counts 3x the forward (the backward pass is twice the forward's matmul work); the optimizer's
element-wise update (about 10 FLOPs per parameter) is left out, as in PaLM's MFU.

Causal attention needs only half of the attention term. MFU is reported with the full count (the
convention everyone compares against); the plausibility check that marks a result `invalid` uses
the smaller causal count, so a real fast kernel is never called impossible.

This module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.spec import BenchSpec, ModelShape

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def param_count(cfg: ModelShape) -> int:
    """Unique parameters with the LM head tied to the token embedding (GPT-2 small: 124,439,808)."""
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    per_layer = (
        2 * 2 * C  # ln_1, ln_2 (weight + bias)
        + 3 * C * C
        + 3 * C  # c_attn
        + C * C
        + C  # attn c_proj
        + 4 * C * C
        + 4 * C  # c_fc
        + 4 * C * C
        + C  # mlp c_proj
    )
    return V * C + cfg.block_size * C + L * per_layer + 2 * C  # wte, wpe, blocks, ln_f


def matmul_flops_per_token(cfg: ModelShape) -> int:
    """Dense matmul FLOPs per token of a forward pass, attention scores excluded."""
    C = cfg.n_embd
    return 2 * (12 * cfg.n_layer * C * C + C * cfg.vocab_size)


def attention_flops_per_token(cfg: ModelShape, seq: int) -> int:
    """Q·Kᵀ and A·V FLOPs per token for a full (non-causal) T x T score matrix."""
    return 2 * 2 * cfg.n_layer * seq * cfg.n_embd


def forward_flops(cfg: ModelShape, batch: int, seq: int) -> int:
    """FLOPs of one forward pass over batch x seq tokens (PaLM convention)."""
    return batch * seq * (matmul_flops_per_token(cfg) + attention_flops_per_token(cfg, seq))


def train_flops(cfg: ModelShape, batch: int, seq: int) -> int:
    """FLOPs of one training step: forward + backward = 3 x forward."""
    return 3 * forward_flops(cfg, batch, seq)


def min_phase_flops(cfg: ModelShape, batch: int, seq: int, phase: str) -> int:
    """The least work a phase can do: causal attention counted at half. Used to flag `invalid`."""
    per_token = matmul_flops_per_token(cfg) + attention_flops_per_token(cfg, seq) // 2
    mult = {"forward": 1, "train": 3}.get(phase, 0)
    return mult * batch * seq * per_token


def phase_flops(spec: BenchSpec, phase: str) -> int:
    """FLOPs of one repeat of a phase (init does no counted arithmetic: 0)."""
    cfg = spec.shape
    if phase == "forward":
        return forward_flops(cfg, spec.batch, spec.seq)
    if phase == "train":
        return train_flops(cfg, spec.batch, spec.seq)
    return 0


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted peak bytes of one phase, by component."""

    phase: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    def describe(self) -> str:
        gib = 1 << 30
        parts = [
            f"{name} {getattr(self, name) / gib:.2f}"
            for name in ("weights", "gradients", "optimizer", "activations", "logits")
            if getattr(self, name)
        ]
        return f"{self.total / gib:.2f} GiB ({', '.join(parts)} GiB)"


def predict_memory(spec: BenchSpec, phase: str) -> MemoryPrediction:
    """Predicted peak memory of a phase on its device.

    weights    N x bytes of the weight dtype (float32 under autocast, the dtype when cast; see
               BenchSpec.mode_for for the mode a device uses)
    gradients  same as weights (train)
    optimizer  AdamW: 2 states per parameter; SGD with momentum: 1 (train)
    activations  saved for backward per layer and token, about 18·C values (LayerNorm inputs
               and outputs, q/k/v, attention output, the 4C MLP input and GELU output); a forward
               under inference mode keeps only about 8·C of one layer at a time
    logits     B·T·V: once in a forward; three times in training (logits, log-softmax saved by
               cross-entropy, and their gradient), in float32 for the loss
    """
    cfg = spec.shape
    n = param_count(cfg)
    low = spec.dtype != "float32"
    w_bytes = DTYPE_BYTES[spec.dtype] if spec.mode_for() == "cast" else 4
    a_bytes = DTYPE_BYTES[spec.dtype] if low else 4
    tokens = spec.batch * spec.seq
    C = cfg.n_embd
    weights = n * w_bytes
    if phase == "init":
        return MemoryPrediction(phase, weights, 0, 0, 0, 0)
    if phase == "forward":
        acts = 8 * C * tokens * a_bytes
        return MemoryPrediction(phase, weights, 0, 0, acts, tokens * cfg.vocab_size * a_bytes)
    states = 2 if spec.optimizer == "adamw" else 1
    acts = 18 * C * cfg.n_layer * tokens * a_bytes
    logits = tokens * cfg.vocab_size * (a_bytes + 2 * 4)
    return MemoryPrediction(phase, weights, weights, states * weights, acts, logits)


def predict_peak(spec: BenchSpec) -> MemoryPrediction:
    """The largest predicted phase of the spec."""
    return max((predict_memory(spec, p) for p in spec.phases), key=lambda m: m.total)
