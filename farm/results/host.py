"""What else the host was doing while a phase was timed: the host lock's wait, load and others' CPU time.

A timed region holds the host-wide lock (`farm.engine.hostlock`), so two farm jobs on one host never
measure at the same time; the wait for it is reported apart. Load from outside the farm is recorded
beside the phase, which is flagged `contended` above the threshold. This module never imports torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class HostLoad(BaseModel):
    """The host during one timed phase."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lock_wait_s: float = 0.0  # time spent waiting for the host lock before the phase (not timed)
    locked: bool = True  # the phase held the host lock (False: FARM_HOST_LOCK=off on that host)
    load_avg_1m: float | None = None  # the 1-minute load average at the end of the phase
    other_cpu_s: float | None = None  # CPU seconds used by other processes during the phase
    own_cpu_s: float | None = None  # CPU seconds used by this process during the phase
    wall_s: float | None = None  # wall time the readings cover
    contended: bool = False  # others used > 10% of the job's cores over the phase (farm.engine.hostlock)
    reason: str | None = None  # why it is contended, with the numbers
