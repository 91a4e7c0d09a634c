"""The key/value cache of cached decoding: one preallocated key and value tensor per layer.

`KVCache(model, batch, capacity, dtype)` holds, per layer, keys and values of shape
(batch, n_head, capacity, head_size) on the model's device; `length` positions of them are filled.
Attention reads `[:, :, :length]` after writing the new positions, so stale values past `length`
(from an earlier generation, after `reset`) are never read and need no zeroing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from farm.spec import ModelShape

__all__ = ["KVCache", "LayerCache"]


@dataclass
class LayerCache:
    """One layer's keys and values, (B, nh, capacity, hs) each, and the cache they belong to."""

    k: torch.Tensor
    v: torch.Tensor
    owner: KVCache

    def append(self, k: torch.Tensor, v: torch.Tensor, pos0: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys and values (B, nh, T, hs) at positions pos0.. and return every key and
        value up to them (views of the cache, (B, nh, pos0 + T, hs))."""
        end = pos0 + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"key/value cache of {self.k.shape[2]} positions cannot hold position {end - 1}")
        self.k[:, :, pos0:end] = k
        self.v[:, :, pos0:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@dataclass
class KVCache:
    """Preallocated keys and values of every layer for `batch` sequences of up to `capacity` tokens."""

    shape: ModelShape
    batch: int
    capacity: int
    dtype: torch.dtype
    device: torch.device
    length: int = 0  # positions filled (the position the next token is written at)
    layers: list[LayerCache] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.shape
        if self.capacity > cfg.block_size:
            raise ValueError(f"a cache of {self.capacity} positions is above the context ({cfg.block_size})")
        hs = cfg.n_embd // cfg.n_head
        dims = (self.batch, cfg.n_head, self.capacity, hs)
        self.layers = [
            LayerCache(
                torch.empty(dims, dtype=self.dtype, device=self.device),
                torch.empty(dims, dtype=self.dtype, device=self.device),
                self,
            )
            for _ in range(cfg.n_layer)
        ]

    @property
    def nbytes(self) -> int:
        """Bytes the cache's tensors hold (allocated, whatever `length` is)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.k, layer.v))

    def reset(self) -> None:
        """Empty the cache for a new generation (nothing is freed or zeroed)."""
        self.length = 0
