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

Generation (the `generate` phase, docs/generation.md): a prefill of the `seq`-token prompt whose
LM head runs on the last position only (greedy decoding reads nothing else), then `gen_tokens - 1`
decode steps of one token per sequence through the key/value cache. A decode step's attention reads
every cached position (no causal saving: its one query sees them all), so the step at context n
(positions after its own is appended) costs 2 * (12 * n_layer * C**2 + C * V) + 4 * n_layer * n * C
FLOPs per sequence. It is memory-bound: each step must read every weight once (for the whole batch)
and each sequence's cached keys and values, `decode_step_bytes`.

This module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.spec import BenchSpec, ModelShape, parse_device_tag

# Query rows per block of the CPU's blocked causal attention (farm.engine.attention takes this value):
# the softmax probabilities it keeps for the backward are predicted from it.
CPU_ATTENTION_BLOCK_ROWS = 256

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


def prefill_flops(cfg: ModelShape, batch: int, seq: int, causal: bool = False) -> int:
    """FLOPs of the prompt's forward with the LM head on the last position only (`causal`: attention
    at half, the least work)."""
    C = cfg.n_embd
    attn = attention_flops_per_token(cfg, seq) // (2 if causal else 1)
    return batch * seq * (2 * 12 * cfg.n_layer * C * C + attn) + batch * 2 * C * cfg.vocab_size


def decode_steps(gen_tokens: int) -> int:
    """Decode steps of a generation: the prefill picks the first of `gen_tokens` new tokens."""
    return max(0, gen_tokens - 1)


def decode_step_flops(cfg: ModelShape, batch: int, context: int) -> int:
    """FLOPs of one decode step whose new token makes `context` cached positions: its query reads them all."""
    return batch * (matmul_flops_per_token(cfg) + attention_flops_per_token(cfg, context))


def decode_flops(cfg: ModelShape, batch: int, seq: int, gen_tokens: int) -> int:
    """FLOPs of every decode step after a prompt of `seq` (step i, from 1, at context seq + i)."""
    return sum(decode_step_flops(cfg, batch, seq + i) for i in range(1, decode_steps(gen_tokens) + 1))


def generate_flops(cfg: ModelShape, batch: int, seq: int, gen_tokens: int, causal: bool = False) -> int:
    """FLOPs of one generation: prefill + decode (`causal`: the prefill's attention at half)."""
    return prefill_flops(cfg, batch, seq, causal) + decode_flops(cfg, batch, seq, gen_tokens)


def kv_cache_bytes(cfg: ModelShape, batch: int, positions: int, kv_bytes: int) -> int:
    """Bytes of keys and values of every layer for `batch` sequences of `positions` tokens."""
    return 2 * cfg.n_layer * batch * positions * cfg.n_embd * kv_bytes


def decode_weight_bytes(cfg: ModelShape, w_bytes: int) -> int:
    """Weight bytes one decode step must read: every parameter once (the LM head is the tied token
    embedding, read whole) except the position table, of which one row is read."""
    return (param_count(cfg) - (cfg.block_size - 1) * cfg.n_embd) * w_bytes


def decode_step_bytes(cfg: ModelShape, batch: int, context: int, w_bytes: int, kv_bytes: int) -> int:
    """The least bytes one decode step moves from memory: its weights once for the whole batch plus
    each sequence's keys and values at `context` positions (activations, a few KiB, left out)."""
    return decode_weight_bytes(cfg, w_bytes) + kv_cache_bytes(cfg, batch, context, kv_bytes)


def weight_and_kv_bytes(spec: BenchSpec) -> tuple[int, int]:
    """(bytes per weight, bytes per cached key/value element) of a spec's job: weights in float32
    under autocast (master weights), in the dtype when cast; activations in the dtype unless float32."""
    w_bytes = DTYPE_BYTES[spec.dtype] if spec.mode_for() == "cast" else 4
    return w_bytes, DTYPE_BYTES[spec.dtype]


def min_phase_flops(cfg: ModelShape, batch: int, seq: int, phase: str, gen_tokens: int = 0) -> int:
    """The least work a phase can do: causal attention counted at half. Used to flag `invalid`."""
    if phase == "generate":
        return generate_flops(cfg, batch, seq, gen_tokens, causal=True)
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
    if phase == "generate":
        return generate_flops(cfg, spec.batch, spec.seq, spec.gen_tokens)
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
    kv_cache: int = 0  # generate: keys and values of every layer, batch x (seq + gen_tokens) positions

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.kv_cache

    def describe(self) -> str:
        gib = 1 << 30
        parts = [
            f"{name} {getattr(self, name) / gib:.2f}"
            for name in ("weights", "gradients", "optimizer", "activations", "logits", "kv_cache")
            if getattr(self, name)
        ]
        return f"{self.total / gib:.2f} GiB ({', '.join(parts)} GiB)"


def kept_attention_bytes(cfg: ModelShape, batch: int, seq: int, elem_bytes: int) -> int:
    """Bytes of the softmax probabilities a CPU's blocked causal attention keeps for the backward, every
    layer: each block of query rows against the keys up to its end (none below two blocks, where the
    fused kernel runs and keeps none)."""
    b = CPU_ATTENTION_BLOCK_ROWS
    if seq < 2 * b:
        return 0
    cells = sum((min(s + b, seq) - s) * min(s + b, seq) for s in range(0, seq, b))
    return cfg.n_layer * batch * cfg.n_head * cells * elem_bytes


def predict_memory(spec: BenchSpec, phase: str) -> MemoryPrediction:
    """Predicted peak memory of a phase on its device.

    weights    N x bytes of the weight dtype (float32 under autocast, the dtype when cast; see
               BenchSpec.mode_for for the mode a device uses)
    gradients  same as weights (train)
    optimizer  AdamW: 2 states per parameter; SGD with momentum: 1 (train)
    activations  saved for backward per layer and token, about 18·C values (LayerNorm inputs
               and outputs, q/k/v, attention output, the 4C MLP input and GELU output); a forward
               under inference mode keeps only about 8·C of one layer at a time. Training on a CPU
               adds the blocked attention's probabilities (`kept_attention_bytes`): an upper bound
               where the fused kernel runs instead (float32 on an Intel CPU, bf16 with AMX)
    logits     B·T·V: once in a forward; three times in training (logits, log-softmax saved by
               cross-entropy, and their gradient), in float32 for the loss; B·V in generate (the
               last position only)
    kv_cache   generate: `kv_cache_bytes` for seq + gen_tokens positions in the activation dtype,
               beside a prefill's activations (as a forward's)
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
    if phase == "generate":
        kv = kv_cache_bytes(cfg, spec.batch, spec.seq + spec.gen_tokens, weight_and_kv_bytes(spec)[1])
        acts = 8 * C * tokens * a_bytes
        return MemoryPrediction(phase, weights, 0, 0, acts, spec.batch * cfg.vocab_size * a_bytes, kv)
    states = 2 if spec.optimizer == "adamw" else 1
    acts = 18 * C * cfg.n_layer * tokens * a_bytes
    if parse_device_tag(spec.devices[0])[0] == "cpu" and spec.dtype in ("float32", "bfloat16"):  # float16: fused
        acts += kept_attention_bytes(cfg, spec.batch, spec.seq, a_bytes)
    logits = tokens * cfg.vocab_size * (a_bytes + 2 * 4)
    return MemoryPrediction(phase, weights, weights, states * weights, acts, logits)


def predict_peak(spec: BenchSpec) -> MemoryPrediction:
    """The largest predicted phase of the spec."""
    return max((predict_memory(spec, p) for p in spec.phases), key=lambda m: m.total)
