"""`farm import FILE`: results produced elsewhere, validated and re-checked, then stored.

The file is what `farm results RUN --json` writes (a JSON list of `JobResult`s) or what
`farm submit --wait --json` writes (`{"run_id": ..., "results": [...]}`). Each result is
validated with the same schema as the farm's own (`JobResult`, job and run ids as `Job` allows).
Nothing derived is trusted: per phase the FLOPs are recounted from the spec, and the statistics,
FLOP/s, MFU and the plausibility verdict are re-derived from the raw times with `measured_phase`.
The peak is the published table peak of the result's GPU for its dtype and matmul precision when
the table knows the GPU, else the peak the result recorded (a CPU's calibration). A result faster
than that peak is stored as `invalid` with the reason, like one from a worker; a phase without raw
times, or with a time that is not a positive finite number, is `invalid` too. Never imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from farm.errors import SpecError
from farm.results.peaks import MEASURED_TOLERANCE, TABLE_TOLERANCE, Peak, gpu_peak
from farm.results.result import JobResult, PhaseResult, judge
from farm.results.store import ResultStore
from farm.spec import Job

NOT_MEASURED = ("failed", "oom", "timeout", "cancelled")


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """The result mappings in an import file; SpecError naming the problem otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError("file", f"{str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError("file", f"{str(p)!r} is not a readable JSON file: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        data = data["results"]
    if not isinstance(data, list):
        raise SpecError("file", 'expected a JSON list of results or {"run_id": ..., "results": [...]}')
    return data


def validate(items: list[Any]) -> list[JobResult]:
    """`JobResult`s from mappings; SpecError names the first bad field as `results[i].field`."""
    out = []
    for i, item in enumerate(items):
        try:
            res = JobResult.model_validate(item)
            Job(job_id=res.job_id, run_id=res.run_id, device=res.device, spec=res.spec)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise SpecError(f"results[{i}].{loc}" if loc else f"results[{i}]", err["msg"]) from None
        out.append(res)
    return out


def derive_peak(res: JobResult, phase: PhaseResult) -> Peak | None:
    """The table peak of the result's GPU, else the peak it recorded, else None (no check)."""
    if res.device.startswith("cuda") and res.machine is not None and res.machine.gpus:
        index = 0
        if res.torch_device and res.torch_device.startswith("cuda:") and res.torch_device[5:].isdigit():
            index = int(res.torch_device[5:])
        gpu = next((g for g in res.machine.gpus if g.index == index), res.machine.gpus[0])
        table = gpu_peak(gpu.name, res.spec.dtype, res.spec.matmul_precision)
        if table is not None:
            return table
    if phase.peak_flops:
        source = phase.peak_source or "unknown source"
        tol = TABLE_TOLERANCE if source.startswith("table") else MEASURED_TOLERANCE
        return Peak(flops=phase.peak_flops, source=f"{source}, as recorded by the result", tolerance=tol)
    return None


def _invalid(p: PhaseResult, reason: str) -> PhaseResult:
    return p.model_copy(update={"status": "invalid", "invalid_reason": f"{p.name}: {reason}"})


def recheck_phase(res: JobResult, p: PhaseResult) -> PhaseResult:
    """The phase re-derived from its raw times with the farm's counts and the derived peak."""
    if p.status in NOT_MEASURED and not p.times_s:
        return p
    if not p.times_s:
        return _invalid(p, "no raw times: its statistics cannot be re-derived")
    if not all(math.isfinite(t) and t > 0 for t in p.times_s):
        return _invalid(p, "a raw time is not a positive finite number of seconds")
    return judge(
        res.spec,
        p.name,
        p.times_s,
        p.warmup_times_s,
        peak=derive_peak(res, p),
        peak_memory_bytes=p.peak_memory_bytes,
        memory_kind=p.memory_kind,
        breakdown=p.breakdown,
    )


def recheck(res: JobResult, source: str) -> JobResult:
    """A copy of the result with every phase re-derived and the job's status settled again."""
    phases = {name: recheck_phase(res, p) for name, p in res.phases.items()}
    was = res.status
    status, error = (res.status, res.error) if res.status in NOT_MEASURED else ("ok", None)
    peaks = sorted({p.peak_source for p in phases.values() if p.peak_source})
    note = f"imported from {source}: statistics re-derived from raw times; peak: {', '.join(peaks) or 'none known'}"
    out = res.model_copy(update={"phases": phases, "status": status, "error": error, "warnings": [*res.warnings, note]})
    out.settle_status()
    if was != out.status:
        out.warnings.append(f"imported as {was}; re-checked as {out.status}")
    return out


@dataclass
class ImportSummary:
    stored: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # job ids already in the store: left as they were
    flagged: dict[str, str] = field(default_factory=dict)  # job id -> status: reason, for non-ok results
    runs: list[str] = field(default_factory=list)


def import_results(store: ResultStore, results: list[JobResult], source: str) -> ImportSummary:
    """Re-check and store results (idempotent by job id); record their runs when the store has none."""
    summary = ImportSummary()
    jobs_by_run: dict[str, list[Job]] = {}
    for res in results:
        checked = recheck(res, source)
        if store.put_result(checked):
            summary.stored.append(checked.job_id)
            jobs_by_run.setdefault(checked.run_id, []).append(
                Job(job_id=checked.job_id, run_id=checked.run_id, device=checked.device, spec=checked.spec)
            )
        else:
            summary.existing.append(checked.job_id)
        if checked.status != "ok":
            summary.flagged[checked.job_id] = f"{checked.status}: {(checked.error or '').splitlines()[0]}"
    for run_id, jobs in jobs_by_run.items():
        if not store.run_exists(run_id):
            store.create_run(run_id, [], jobs, name=f"imported from {source}", tags={"imported": "yes"}, state="done")
        summary.runs.append(run_id)
    return summary


def import_file(store: ResultStore, path: str | Path) -> ImportSummary:
    """Read, validate, re-check and store the results in an import file."""
    return import_results(store, validate(read_file(path)), Path(path).name)
