"""What a train phase over several devices (DistributedDataParallel) reports beside its times.

The phase's own `times_s` are the group's steps (rank 0's clock, read after a barrier across the
ranks); `Scaling` adds the one-device baseline measured in the same job (same per-device batch,
same threads per process), the efficiency and the all-reduce's exposed share. This module never
imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ALLREDUCE_NOTE = (
    "1 - median step under DDP no_sync (no gradient all-reduce) / median synced step: the share of a "
    "step spent in gradient communication that backward did not hide"
)


class Scaling(BaseModel):
    """Scaling of one DDP train phase against one device measured in the same job."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    world_size: int = Field(gt=1)
    backend: Literal["gloo", "nccl"]
    devices: list[str]  # the torch device of each rank, rank order: cpu, cpu / cuda:0, cuda:1
    threads_per_process: int | None = None  # CPU ranks: torch threads of each process (and of the baseline)
    per_device_batch: int = Field(gt=0)
    step_s: float = Field(gt=0)  # median group step (the phase's median)
    tokens_per_s: float = Field(gt=0)  # world_size x batch x seq / step_s
    single_device_step_s: float = Field(gt=0)  # median step of the same training on one device, no DDP
    single_device_times_s: list[float] = []
    single_device_tokens_per_s: float = Field(gt=0)
    efficiency: float = Field(gt=0)  # single_device_step_s / step_s (1.0: perfect weak scaling)
    throughput_speedup: float = Field(gt=0)  # tokens_per_s / single_device_tokens_per_s = world_size x efficiency
    # The all-reduce's exposed share (ALLREDUCE_NOTE); None when it was not measured.
    allreduce_share: float | None = None
    no_sync_step_s: float | None = None
    no_sync_times_s: list[float] = []
    allreduce_note: str | None = None
