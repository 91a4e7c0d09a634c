"""The read path of reports: stored results as light records, fetched and parsed fast.

A report over 10,000 stored results must build in under a second. Validating 10,000 `JobResult`s
with pydantic takes about 3 s on a 2-core development machine, and even the standard library's
`json.loads` about 1.2 s (float parsing dominates). So reports fetch the raw JSON with MGET and
parse it with pydantic-core's Rust parser (`from_json`, about 40 µs a result), then copy the
fields a report shows into slotted dataclasses. The JSON was validated as a `JobResult` when it
was stored (`ResultStore.put_result` and `farm import` take only validated results), and the
statistics shown are the ones derived from the raw times at that moment (`measured_phase`); the
raw times travel along for the speedup bootstrap. This module never imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from farm.flops import param_count
from farm.result import JobResult
from farm.spec import PRESETS, ModelShape
from farm.store import ResultStore


@dataclass(slots=True)
class PhaseRecord:
    """One phase of a stored result, as a report shows it."""

    name: str
    status: str
    error: str | None
    times: list[float]
    n: int
    median_s: float | None
    ci_low_s: float | None
    ci_high_s: float | None
    ci_coverage: float | None
    iqr_ratio: float | None  # IQR / median
    noisy: bool
    tokens_per_s: float | None
    achieved_flops: float | None
    mfu: float | None
    peak_flops: float | None
    peak_source: str | None
    peak_memory_bytes: int | None
    memory_kind: str | None
    invalid_reason: str | None


@dataclass(slots=True)
class Record:
    """One stored result (one job on one device), as a report shows it."""

    job_id: str
    run_id: str
    device: str
    torch_device: str | None
    status: str
    error: str | None
    warnings: list[str]
    spec_hash: str
    model_name: str
    params: int
    batch: int
    seq: int
    dtype: str
    matmul_precision: str
    machine_tag: str | None
    hostname: str | None
    cpu_model: str | None
    gpu_names: list[str]
    torch_version: str | None
    cuda_version: str | None
    farm_version: str
    threads: int | None
    finished_at: str  # ISO 8601, UTC; sorts as text
    phases: dict[str, PhaseRecord] = field(default_factory=dict)

    @property
    def series(self) -> str:
        """A short label of where it ran: `device @ machine`."""
        return f"{self.device} @ {self.machine_tag}" if self.machine_tag else self.device

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


@functools.lru_cache(maxsize=256)
def _preset_params(name: str) -> int:
    return param_count(PRESETS[name])


def _params(model: Any) -> int:
    if isinstance(model, str) and model in PRESETS:
        return _preset_params(model)
    if isinstance(model, dict):
        return param_count(ModelShape.model_validate(model))
    return 0


def _phase(name: str, p: dict[str, Any]) -> PhaseRecord:
    s = p.get("stats")
    med = p.get("median_s")
    return PhaseRecord(
        name=name,
        status=p.get("status", "ok"),
        error=p.get("error"),
        times=p.get("times_s") or [],
        n=s["n"] if s else 0,
        median_s=med,
        ci_low_s=s["ci_low_s"] if s else None,
        ci_high_s=s["ci_high_s"] if s else None,
        ci_coverage=s["ci_coverage"] if s else None,
        iqr_ratio=(s["iqr_s"] / med) if s and med else None,
        noisy=bool(s and s["noisy"]),
        tokens_per_s=p.get("tokens_per_s"),
        achieved_flops=p.get("achieved_flops"),
        mfu=p.get("mfu"),
        peak_flops=p.get("peak_flops"),
        peak_source=p.get("peak_source"),
        peak_memory_bytes=p.get("peak_memory_bytes"),
        memory_kind=p.get("memory_kind"),
        invalid_reason=p.get("invalid_reason"),
    )


def record_from_dict(d: dict[str, Any]) -> Record:
    """A record from a `JobResult` in its JSON form (stored JSON, or `model_dump(mode="json")`)."""
    spec = d["spec"]
    m = d.get("machine") or {}
    return Record(
        job_id=d["job_id"],
        run_id=d["run_id"],
        device=d["device"],
        torch_device=d.get("torch_device"),
        status=d.get("status", "ok"),
        error=d.get("error"),
        warnings=d.get("warnings") or [],
        spec_hash=d["spec_hash"],
        model_name=d["model_name"],
        params=_params(spec.get("model", "gpt2")),
        batch=spec.get("batch", 8),
        seq=spec.get("seq", 1024),
        dtype=spec.get("dtype", "float32"),
        matmul_precision=spec.get("matmul_precision", "highest"),
        machine_tag=m.get("machine_tag"),
        hostname=m.get("hostname"),
        cpu_model=m.get("cpu_model"),
        gpu_names=[g["name"] for g in m.get("gpus") or []],
        torch_version=m.get("torch_version"),
        cuda_version=m.get("cuda_version"),
        farm_version=d.get("farm_version", "?"),
        threads=d.get("threads"),
        finished_at=d.get("finished_at") or d.get("started_at") or "",
        phases={name: _phase(name, p) for name, p in (d.get("phases") or {}).items()},
    )


def records_from_results(results: Iterable[JobResult]) -> list[Record]:
    """Records from validated results in memory (tests, `farm run`, imports)."""
    return [record_from_dict(r.model_dump(mode="json")) for r in results]


def load_records(store: ResultStore, job_ids: Sequence[str], chunk: int = 1000) -> list[Record]:
    """Records for job ids (missing ones skipped), fetched with MGET and parsed by pydantic-core."""
    out: list[Record] = []
    for i in range(0, len(job_ids), chunk):
        keys = [store.key("result", j) for j in job_ids[i : i + chunk]]
        for raw in store.r.mget(keys):
            if raw is not None:
                out.append(record_from_dict(pydantic_core.from_json(raw)))
    return out
