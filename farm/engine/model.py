"""GPT-2 from scratch in PyTorch, nanoGPT-style: one config (`ModelShape`) handed to every module.

Token + position embeddings, pre-LayerNorm blocks, causal self-attention (`farm.engine.attention`:
PyTorch's fused kernel, blocked for bf16 on a CPU), tanh-GELU MLP, LM head tied to the token embedding;
linears whose CPU products may run on oneDNN (`farm.engine.linear`: float32 where MKL is slow, the
GELU inside the GEMM in inference);
`forward_cached` decodes with a key/value cache (`farm.engine.kvcache`). The model
is built directly on its `device` and in its `dtype`; every tensor it creates itself (the
position indices) is created on the device its parameters live on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from farm.engine.attention import causal_attention
from farm.engine.kvcache import KVCache, LayerCache
from farm.engine.linear import linear, linear_gelu, matmul_nt, routed
from farm.engine.loss import FUSED_LOSS_DEVICES, lm_head_loss
from farm.errors import CheckpointError, SpecError
from farm.spec import ModelShape, resolve_model, safe_name
from farm.untrusted import MAX_CONFIG_BYTES, load_document

# Rows of the inference LM head computed at a time on a CPU (GPT._logits)
LOGIT_BLOCK_ROWS = 512

__all__ = ["GPT", "from_hf_checkpoint", "hf_state_dict", "read_hf_config"]


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state dict) whose CPU product may run on oneDNN
    (`farm.engine.linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelShape, **factory: Any) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, **factory)  # q, k, v in one matmul
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        y = causal_attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)

    def forward_cached(self, x: torch.Tensor, layer: LayerCache, pos0: int) -> torch.Tensor:
        """Attention of T new tokens at positions pos0.. over the cached keys and values before them
        and their own (written into `layer`); `forward`'s arithmetic otherwise."""
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        keys, values = layer.append(k, v, pos0)  # (B, nh, pos0 + T, hs)
        if pos0 == 0:  # a prompt into an empty cache: `forward`'s causal attention over its own tokens
            y = causal_attention(q, k, v)
        elif T == 1:  # one new token sees every cached position and itself: no mask
            y = F.scaled_dot_product_attention(q, keys, values)
        else:  # new token i (at pos0 + i) sees positions up to pos0 + i
            seen = torch.arange(pos0 + T, device=x.device) <= torch.arange(pos0, pos0 + T, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=seen)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelShape, **factory: Any) -> None:
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, **factory)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc = self.c_fc  # tanh GELU; in CPU inference inside the GEMM (farm.engine.linear)
        return self.c_proj(linear_gelu(x, fc.weight, fc.bias))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: ModelShape, **factory: Any) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5, **factory)
        self.attn = CausalSelfAttention(cfg, **factory)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5, **factory)
        self.mlp = MLP(cfg, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: torch.Tensor, layer: LayerCache, pos0: int) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), layer, pos0)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A GPT-2 family language model. `forward(idx, targets=None) -> (logits, loss)`."""

    def __init__(
        self,
        cfg: ModelShape | str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg = resolve_model(cfg)
        factory: dict[str, Any] = {"device": torch.device(device), "dtype": dtype or torch.float32}
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, **factory)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd, **factory)
        self.h = nn.ModuleList(Block(cfg, **factory) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5, **factory)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False, **factory)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        self.reset_parameters()

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        if self.device.type == "meta":
            return
        std_proj = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln_" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std_proj if name.endswith("c_proj.weight") else 0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with `targets` (B, T), the mean next-token cross-entropy.

        With targets and `return_logits=False` the logits are None and, on a device in
        `FUSED_LOSS_DEVICES`, the loss goes through `lm_head_loss` (same value, same work, no full
        logits kept): what the train phase asks for.
        """
        T = idx.shape[1]  # idx: (B, T) token ids
        if self.config.block_size < T:
            raise ValueError(f"sequence of {T} tokens is above the context ({self.config.block_size})")
        pos = torch.arange(T, device=self.device)  # (T,), created on the model's device
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is not None and not return_logits and x.device.type in FUSED_LOSS_DEVICES:
            return None, lm_head_loss(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
        logits = self._logits(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return (logits if return_logits else None), loss

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head, (B, T, C) -> (B, T, vocab). Inference on a CPU computes it LOGIT_BLOCK_ROWS rows
        at a time into one output: on a 2-core Zen 5, GPT-2 small's 1024 x 768 x 50257 ran at 945
        GFLOP/s in bf16 (722 whole) and 197 in fp32 through MKL (158), the same FLOPs
        (benchmarks/cpu_roofline_goal.py times both layouts for its roofline). float32 on oneDNN
        (farm.engine.linear) runs it whole: 217 ms against 435 in MKL's blocks. With autograd on,
        the plain matmul (`out=` has no gradient)."""
        B, T, C = x.shape
        if x.device.type != "cpu" or torch.is_grad_enabled():
            return self.lm_head(x)
        flat, w = x.reshape(B * T, C), self.lm_head.weight
        if B * T <= LOGIT_BLOCK_ROWS or (x.dtype == torch.float32 and routed(flat, w)):
            return matmul_nt(flat, w).view(B, T, -1)
        out = torch.empty(B * T, w.shape[0], dtype=x.dtype, device=x.device)
        for s in range(0, B * T, LOGIT_BLOCK_ROWS):
            torch.mm(flat[s : s + LOGIT_BLOCK_ROWS], w.t(), out=out[s : s + LOGIT_BLOCK_ROWS])
        return out.view(B, T, -1)

    def forward_cached(self, idx: torch.Tensor, cache: KVCache, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) of T new tokens (B, T) at positions `cache.length`.. with the key/value
        cache (`farm.engine.kvcache`), which they are appended to. `last_only`: the logits of the last
        position only (B, 1, vocab), all that greedy decoding reads. Equal to `forward` on the whole
        sequence within float rounding (tests/test_generate.py)."""
        T = idx.shape[1]
        pos0 = cache.length
        if pos0 + T > self.config.block_size:
            raise ValueError(f"position {pos0 + T - 1} is above the context ({self.config.block_size})")
        pos = torch.arange(pos0, pos0 + T, device=self.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block, layer in zip(self.h, cache.layers, strict=True):
            x = cast(Block, block).forward_cached(x, layer, pos0)
        cache.length = pos0 + T
        if last_only:
            x = x[:, -1:]
        return self._logits(self.ln_f(x))

    def num_parameters(self) -> int:
        """Unique parameters (the tied LM head is counted once)."""
        return sum(p.numel() for p in self.parameters())


_HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_state_dict(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face GPT-2 state dict (GPT2LMHeadModel or GPT2Model) to our names."""
    out: dict[str, torch.Tensor] = {}
    for key, t in hf_sd.items():
        k = key.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue  # causal-mask buffers of old checkpoints; the head is tied to wte
        if k.endswith(_HF_TRANSPOSED):
            t = t.t()
        out[k] = t
    return out


def read_hf_config(path: Path) -> ModelShape:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face GPT-2 directory)")
    try:
        cfg = load_document(cfg_file, "config.json", max_bytes=MAX_CONFIG_BYTES, yaml_allowed=False)
    except SpecError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: config.json must hold an object, got {type(cfg).__name__}")
    n_embd = cfg.get("n_embd", 768)
    if cfg.get("n_inner") not in (None, 4 * n_embd):
        raise CheckpointError(f"{path}: n_inner={cfg['n_inner']} is not supported (only 4 * n_embd)")
    if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{path}: activation {cfg['activation_function']!r} is not tanh-GELU")
    try:
        return _shape_from_config(cfg, path)
    except ValueError as e:  # pydantic's ValidationError: a shape the model cannot have
        raise CheckpointError(f"{path}: config.json does not describe a GPT-2 shape: {e}") from None


def _shape_from_config(cfg: dict, path: Path) -> ModelShape:
    return ModelShape(
        name=safe_name(str(cfg.get("_name_or_path") or path.name)),  # it becomes keys and labels
        n_layer=cfg.get("n_layer", 12),
        n_head=cfg.get("n_head", 12),
        n_embd=cfg.get("n_embd", 768),
        block_size=cfg.get("n_positions", cfg.get("n_ctx", 1024)),
        vocab_size=cfg.get("vocab_size", 50257),
    )


def from_hf_checkpoint(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> GPT:
    """Load a local Hugging Face GPT-2 checkpoint (config.json + model.safetensors or
    pytorch_model.bin) into our model on `device`. Nothing is downloaded."""
    path = Path(path)
    cfg = read_hf_config(path)
    try:
        if (path / "model.safetensors").is_file():
            from safetensors.torch import load_file  # lazily: only checkpoint loading needs it

            hf_sd = load_file(str(path / "model.safetensors"))
        elif (path / "pytorch_model.bin").is_file():
            hf_sd = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{path}: neither model.safetensors nor pytorch_model.bin is there")
    except CheckpointError:
        raise
    except Exception as e:  # safetensors' and pickle's errors for a corrupt or truncated file
        raise CheckpointError(f"{path}: weights file cannot be read ({type(e).__name__}: {e})") from None
    model = GPT(cfg, device="meta", dtype=dtype)
    sd = hf_state_dict(hf_sd)
    missing = set(model.state_dict()) - set(sd) - {"lm_head.weight"}
    unexpected = set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match GPT-2 (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} {tuple(t.shape)} != {shapes[k]}" for k, t in sd.items() if tuple(t.shape) != shapes[k]]
    if wrong:
        raise CheckpointError(f"{path}: weights do not match config.json ({'; '.join(wrong[:3])})")
    model.load_state_dict(sd, strict=False, assign=True)
    model.lm_head.weight = model.wte.weight
    return model.to(device=device, dtype=dtype or torch.float32)
