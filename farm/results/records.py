"""The read path of reports: stored results as light records, fetched and parsed fast.

A report over 10,000 stored results must build in under a second. Validating 10,000 `JobResult`s
with pydantic takes about 3 s on the 2-core development machine, and even the standard library's
`json.loads` about 1.2 s (float parsing dominates). So reports never validate on the read path:
the JSON was validated as a `JobResult` when it was stored (`ResultStore.put_result` and
`farm import` take only validated results). The first read of a result fetches its JSON with MGET,
parses it with pydantic-core's Rust parser (`from_json`) and copies the fields a report shows into
slotted dataclasses; it also caches that record as a compact summary beside the result (see
`summary_json`), so later reports fetch 10,000 summaries with one script call per 1,000 and parse
them in one go. The statistics shown are those derived from the raw times when the result was
made (`measured_phase`); the raw times travel along for the speedup bootstrap. Reading them from
Redis is `ResultStore.load_records`; this module only converts. Never imports torch.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import gc
import json
import math
import operator
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from farm.flops import param_count
from farm.results.machine import gpu_ran_on
from farm.results.result import JobResult
from farm.spec import PRESETS, BenchSpec, ModelShape, series_device


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
    invalid_reason: str | None  # why the phase is invalid (or unverified: why nothing checks it)
    outlier: bool = False  # `Stats.outlier`: one repeat far above the median
    drift: bool = False  # `Stats.drift`: the repeats trend up or down across the run
    contended: bool = False  # `HostLoad.contended`: other processes used the CPU during the phase
    contended_reason: str | None = None
    lock_wait_s: float | None = None  # the host lock's wait before the phase (not timed)
    load_avg_1m: float | None = None
    roofline_flops: float | None = None  # the measured roofline beside the peak
    roofline_source: str | None = None
    repeats_stop: str | None = None  # `repeats: auto`: what stopped it (target, budget, max)
    telemetry: dict[str, Any] | None = None  # `PhaseTelemetry` as stored (untrusted: read with results.telemetry)
    generate: dict[str, Any] | None = None  # `Generation`'s figures (results.decode), raw times left out
    scaling: dict[str, Any] | None = None  # `Scaling`'s figures (results.scaling, DDP train), raw times left out


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
    fresh_process: bool | None = None  # the job's process had not touched the device before
    gpu_tag: str | None = None  # the model tag of the GPU a CUDA result ran on (`gpu_ran_on`)
    phases: dict[str, PhaseRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One device, one history: `cpu:vm` and `cpu` on machine vm are one series, and so are `cuda`
        # and `cuda:h100` on an H100 (`series_device`).
        self.device = series_device(self.device, self.gpu_tag)

    @property
    def series(self) -> str:
        """A short label of where it ran: `device @ machine`."""
        return f"{self.device} @ {self.machine_tag}" if self.machine_tag else self.device

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects (restored afterwards).

    A report over 10,000 results creates several hundred thousand objects, none of them cyclic
    garbage; with the collector on, its repeated passes over the growing young generations took
    about half the time of reading the records (0.49 s against 0.22 s for 10,000 here). When the
    outermost pause ends, what survived is frozen (`gc.freeze`) before the collector is turned back
    on: otherwise its next pass walks every object made meanwhile at once (0.3 s for 10,000 results,
    seconds for 100,000). Frozen objects are still freed by reference counting; only a reference
    cycle made during the pause would wait for `gc.unfreeze`.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


# A stored result holds its whole spec; a field missing from an older one takes BenchSpec's default.
_SPEC_DEFAULTS: dict[str, Any] = {name: f.default for name, f in BenchSpec.model_fields.items()}


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
    """A phase record; fields a result stored before they existed take their defaults."""
    s = p.get("stats")
    med = s["median_s"] if s else None
    host = p.get("host") or {}
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
        outlier=bool(s and s.get("outlier")),
        drift=bool(s and s.get("drift")),
        contended=bool(host.get("contended")),
        contended_reason=host.get("reason"),
        lock_wait_s=host.get("lock_wait_s"),
        load_avg_1m=host.get("load_avg_1m"),
        roofline_flops=p.get("roofline_flops"),
        roofline_source=p.get("roofline_source"),
        repeats_stop=p.get("repeats_stop"),
        telemetry=p.get("telemetry"),
        generate={k: v for k, v in (p.get("generate") or {}).items() if not k.endswith("times_s")} or None,
        scaling={k: v for k, v in (p.get("scaling") or {}).items() if not k.endswith("times_s")} or None,
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
        params=_params(spec.get("model", _SPEC_DEFAULTS["model"])),
        batch=spec.get("batch", _SPEC_DEFAULTS["batch"]),
        seq=spec.get("seq", _SPEC_DEFAULTS["seq"]),
        dtype=spec.get("dtype", _SPEC_DEFAULTS["dtype"]),
        matmul_precision=spec.get("matmul_precision", _SPEC_DEFAULTS["matmul_precision"]),
        machine_tag=m.get("machine_tag"),
        hostname=m.get("hostname"),
        cpu_model=m.get("cpu_model"),
        gpu_names=[g["name"] for g in m.get("gpus") or []],
        torch_version=m.get("torch_version"),
        cuda_version=m.get("cuda_version"),
        farm_version=d.get("farm_version", "?"),
        threads=d.get("threads"),
        finished_at=d.get("finished_at") or d.get("started_at") or "",
        fresh_process=d.get("fresh_process"),
        gpu_tag=gpu_ran_on(d["device"], d.get("torch_device"), m.get("gpus") or []),
        phases={name: _phase(name, p) for name, p in (d.get("phases") or {}).items()},
    )


_RECORD_STRINGS = ("job_id", "run_id", "device", "status", "spec_hash", "model_name", "dtype", "matmul_precision")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_record(rec: Record) -> None:
    """ValueError naming the first field of a record (read from a stored result) that a report could
    not use: a stored result that no longer validates (a NaN written as `null`, a field of the wrong
    type) is skipped by the reader rather than failing the report. Costs a pass over the numbers."""
    for name in _RECORD_STRINGS:
        if not isinstance(getattr(rec, name), str):
            raise ValueError(f"{name}: not a string")
    for name in ("params", "batch", "seq"):
        if not _number(getattr(rec, name)):
            raise ValueError(f"spec.{name}: not a number")
    if not isinstance(rec.finished_at, str) or not all(isinstance(w, str) for w in rec.warnings):
        raise ValueError("finished_at or warnings: not text")
    for p in rec.phases.values():
        if not isinstance(p.times, list) or not all(_number(t) for t in p.times):
            raise ValueError(f"phases.{p.name}.times_s: not a list of finite numbers")
        for f in _PHASE_FLOATS:
            v = getattr(p, f)
            if v is not None and not _number(v):
                raise ValueError(f"phases.{p.name}.{f}: not a finite number")
        if not isinstance(p.status, str) or not isinstance(p.n, int):
            raise ValueError(f"phases.{p.name}.status: not a status")


def records_from_results(results: Iterable[JobResult]) -> list[Record]:
    """Records from validated results in memory (tests, `farm run`, imports)."""
    return [record_from_dict(r.model_dump(mode="json")) for r in results]


# A summary is a record as a compact JSON array, cached beside its result under
# `<prefix>:summary:<job_id>` (written with the result; re-derived when missing). It starts with the
# byte length of the result as stored: the fetch script returns it only while that still matches
# (results are written once, SET NX, so a changed result is a replaced one).
#
# The layout follows the dataclasses, so a field added to `Record` or `PhaseRecord` travels without
# further code: per phase, fields typed `float | None` are packed (float64, base64; a None is packed as
# 0.0 and marked in a bit mask; parsing ~45 decimal floats a record was most of the cost of reading
# summaries), `bool` fields are bits of one int, `times` is packed, and every other field (strings,
# ints, dicts) is a JSON value. The version names the layout, so a summary written before a field
# was added is re-derived from its result.
_FIELDS = [f.name for f in fields(Record) if f.name != "phases"]
_PHASE_FIELDS = [(f.name, str(f.type)) for f in fields(PhaseRecord)]
_PHASE_FLOATS = [name for name, kind in _PHASE_FIELDS if kind == "float | None"]
_PHASE_BOOLS = [name for name, kind in _PHASE_FIELDS if kind == "bool"]
_PHASE_OTHER = [name for name, _ in _PHASE_FIELDS if name not in (*_PHASE_FLOATS, *_PHASE_BOOLS, "times")]
_NF = len(_PHASE_FLOATS)
_NO = len(_PHASE_OTHER)
_LAYOUT = ";".join([",".join(_FIELDS), ",".join(f"{n}:{k}" for n, k in _PHASE_FIELDS)])
# 5: the generic layout, derived through the read check (farm.results.verify); then its fields' hash.
SUMMARY_VERSION = f"5.{zlib.crc32(_LAYOUT.encode()):08x}"
# A phase is rebuilt from [*other, times, *floats, *bools] in the dataclass' field order.
_SOURCE = {
    **{n: i for i, n in enumerate(_PHASE_OTHER)},
    "times": _NO,
    **{n: _NO + 1 + i for i, n in enumerate(_PHASE_FLOATS)},
    **{n: _NO + 1 + _NF + i for i, n in enumerate(_PHASE_BOOLS)},
}
_ORDER = operator.itemgetter(*(_SOURCE[n] for n, _ in _PHASE_FIELDS))
_NAME = _SOURCE["name"]


def summary_json(rec: Record, result_bytes: int) -> str:
    """The compact cached form of a record derived from a result stored in `result_bytes` bytes."""
    floats: list[float] = []
    phases = []
    for p in rec.phases.values():
        values = [getattr(p, f) for f in _PHASE_FLOATS]
        nones = sum(1 << i for i, v in enumerate(values) if v is None)  # bit i: float i is None
        marks = sum(1 << i for i, f in enumerate(_PHASE_BOOLS) if getattr(p, f))  # bit i: bool i is true
        phases.append([*(getattr(p, f) for f in _PHASE_OTHER), len(p.times), nones, marks])
        floats.extend(p.times)
        floats.extend(0.0 if v is None else v for v in values)
    packed = base64.b64encode(np.asarray(floats, dtype="<f8").tobytes()).decode("ascii")
    head = [result_bytes, SUMMARY_VERSION, *(getattr(rec, f) for f in _FIELDS)]
    return json.dumps([*head, phases, packed], separators=(",", ":"))


def record_from_summary(row: list[Any]) -> Record | None:
    """A record from a parsed summary; None when it was written in another layout (an older summary,
    without the fields added since, is then re-derived from its result).
    ValueError (or TypeError, IndexError) for one that does not unpack or holds a non-finite number."""
    if row[1] != SUMMARY_VERSION or len(row) != len(_FIELDS) + 4:
        return None
    rec = Record(*row[2:-2])
    packed = np.frombuffer(binascii.a2b_base64(row[-1]), dtype="<f8")
    if not np.isfinite(packed).all():
        raise ValueError("a packed number is not finite")
    floats = packed.tolist()
    pos = 0
    for ph in row[-2]:
        if len(ph) != _NO + 3:
            raise ValueError("a phase of another length")
        k, nones, marks = ph[_NO], ph[_NO + 1], ph[_NO + 2]
        m: list[Any] = floats[pos : pos + k + _NF]
        if nones:
            for i in _set_bits(nones):
                m[k + i] = None
        vals = [*ph[:_NO], m[:k], *m[k:], *_bools(marks)]
        pos += k + _NF
        rec.phases[vals[_NAME]] = PhaseRecord(*_ORDER(vals))
    if pos != len(floats):
        raise ValueError("packed numbers left over")
    return rec


@functools.lru_cache(maxsize=1 << 8)
def _bools(marks: int) -> tuple[bool, ...]:
    """The phase's boolean fields from their bits in a summary."""
    return tuple(bool(marks >> i & 1) for i in range(len(_PHASE_BOOLS)))


@functools.lru_cache(maxsize=1 << 12)
def _set_bits(mask: int) -> tuple[int, ...]:
    """The indices of the bits set in a None mask (one lookup instead of a loop per phase)."""
    return tuple(i for i in range(_NF) if mask >> i & 1)
