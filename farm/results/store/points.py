"""A series point's format and how a record becomes points: `POINT` (five little-endian float64s,
`POINT_BYTES` each), `series_id`, `series_points_of`, `STATUS_CODES` and `SERIES_VERSION`.

Every write appends one fixed-size point per phase to its series (spec hash x machine x device x
phase); `farm.results.store.series` reads, rebuilds and backfills them.
"""

from __future__ import annotations

import json
import math
import struct
from datetime import datetime

import numpy as np

from farm.results.records import Record

# A series point: five little-endian float64s (NaN where a phase has no such figure).
POINT = np.dtype([("at", "<f8"), ("median_s", "<f8"), ("mfu", "<f8"), ("tokens_per_s", "<f8"), ("status", "<f8")])
POINT_BYTES = POINT.itemsize  # 40
_PACK_POINT = struct.Struct("<5d").pack  # the same layout, for writing one point
STATUS_CODES = ("ok", "unverified", "invalid", "failed", "oom", "timeout", "cancelled")  # code = index; other: 7
SERIES_VERSION = 3  # `farm:meta` series_version once every stored result is filed into its series
# 2: series by the series device (`farm.spec.series_device`: `cpu:vm` and `cpu` on vm are one series)
# 3: a CUDA series by the GPU it ran on (`cuda` and `cuda:h100` on an H100 are one series: `cuda:h100`)


def _status_code(status: str) -> float:
    return float(STATUS_CODES.index(status)) if status in STATUS_CODES else float(len(STATUS_CODES))


def _num(v: float | None) -> float:
    return float(v) if isinstance(v, int | float) else float("nan")


def series_id(spec_hash: str, machine: str | None, device: str, phase: str) -> str:
    """A series' id: `<spec_hash>|<machine>|<device>|<phase>` (machine "" when the result names none)."""
    return f"{spec_hash}|{machine or ''}|{device}|{phase}"


def record_at(rec: Record) -> float:
    """A record's finish time (its index score) as epoch seconds; NaN when it does not parse."""
    try:
        return datetime.fromisoformat(rec.finished_at).timestamp()
    except (ValueError, TypeError):
        return float("nan")


def series_points_of(rec: Record, at: float) -> list[tuple[str, bytes, str]]:
    """(series id, packed point, meta JSON) for each phase of a record (none for a record without phases)."""
    if not math.isfinite(at):
        return []  # no finish time to file it under
    out = []
    tail = json.dumps([rec.job_id, rec.model_name, rec.spec_hash, rec.machine_tag or "", rec.device])[1:-1]
    head = f"[{float(at)!r},{tail},"
    for name, ph in rec.phases.items():
        point = _PACK_POINT(at, _num(ph.median_s), _num(ph.mfu), _num(ph.tokens_per_s), _status_code(ph.status))
        out.append((series_id(rec.spec_hash, rec.machine_tag, rec.device, name), point, head + json.dumps(name) + "]"))
    return out
