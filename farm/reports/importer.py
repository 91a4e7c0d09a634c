"""`farm import FILE`: results produced elsewhere, validated and re-checked, then stored.

The file is what `farm results RUN --json` writes (a JSON list of `JobResult`s) or what
`farm submit --wait --json` writes (`{"run_id": ..., "results": [...]}`). Each result is
validated with the same schema as the farm's own (`JobResult`, job and run ids as `Job` allows);
a phase stored under a key that is not a phase name, or whose `name` differs from its key, is
refused with the field named. Nothing derived is trusted: the spec hash and the model name come
from the spec; per phase the FLOPs are recounted, and the statistics, FLOP/s, MFU and the
plausibility verdict are re-derived from the raw times with `judge`. The ceiling is derived again
from the fingerprint exactly as a worker derives it (`farm.results.peaks`): a GPU's table peak by
name, else from its recorded compute capability, SM count and max clock (bounded by `GpuInfo`);
a CPU's theoretical peak from its flags, cores and threads, with its recorded clock bounded at
CPU_MAX_MHZ (at CPU_MAX_MHZ when none was recorded). The peak a result recorded is never used.
Where no ceiling can be had (an unknown GPU, a CUDA result whose fingerprint lists no GPU, no
fingerprint at all) the phases are `unverified`. A result faster than its ceiling is `invalid`
with the reason, like one from a worker; a phase without raw times, or with a time that is not a
positive finite number, is `invalid` too. Never imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from farm.errors import SpecError
from farm.results.machine import GpuInfo
from farm.results.peaks import Peak, gpu_ceiling, machine_cpu_ceiling
from farm.results.result import JobResult, PhaseResult, judge
from farm.results.store import ResultStore
from farm.spec import PHASES, Job

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
        for key, p in res.phases.items():
            if key not in PHASES:
                raise SpecError(f"results[{i}].phases", f"{key!r} is not a phase name ({', '.join(PHASES)})")
            if p.name != key:
                raise SpecError(f"results[{i}].phases.{key}.name", f"{p.name!r} differs from its key {key!r}")
        out.append(res)
    return out


def _gpu_of(res: JobResult) -> GpuInfo | None:
    """The GPU a CUDA result ran on: the one whose properties the worker recorded, else by index."""
    if res.machine is None or not res.machine.gpus:
        return None
    gpus = res.machine.gpus
    with_facts = [g for g in gpus if g.sm_count is not None]
    if len(with_facts) == 1:
        return with_facts[0]
    index = 0
    if res.torch_device and res.torch_device.startswith("cuda:") and res.torch_device[5:].isdigit():
        index = int(res.torch_device[5:])
    return next((g for g in gpus if g.index == index), gpus[0])


def derive_ceiling(res: JobResult) -> tuple[Peak | None, str | None]:
    """(ceiling, why there is none) for a result, derived from its fingerprint, never its recorded peak."""
    kind = res.device.split(":")[0]
    if res.machine is None:
        return None, "the result has no machine fingerprint to derive a ceiling from"
    if kind == "cuda":
        gpu = _gpu_of(res)
        if gpu is None:
            return None, "a CUDA result whose fingerprint lists no GPU: no ceiling can be derived"
        peak = gpu_ceiling(gpu, res.spec.dtype, res.spec.matmul_precision)
        if peak is None:
            return None, (
                f"{gpu.name!r} is not in the table of published peaks and its fingerprint lacks the "
                "compute capability, SM count or max clock to derive one"
            )
        return peak, None
    if kind == "cpu":
        peak = machine_cpu_ceiling(res.machine, res.threads, res.spec.dtype, res.spec.matmul_precision)
        if peak is None:
            return None, f"no theoretical peak is known for a {res.machine.cpu_arch!r} CPU"
        return peak, None
    return None, f"no ceiling is known for {kind!r} devices"


def _invalid(p: PhaseResult, reason: str) -> PhaseResult:
    return p.model_copy(update={"status": "invalid", "invalid_reason": f"{p.name}: {reason}"})


def recheck_phase(res: JobResult, p: PhaseResult, peak: Peak | None = None, why: str | None = None) -> PhaseResult:
    """The phase re-derived from its raw times with the farm's counts and the derived ceiling
    (`why`: the reason there is none, stored with an `unverified` phase)."""
    if p.status in NOT_MEASURED and not p.times_s:
        return p
    if not p.times_s:
        return _invalid(p, "no raw times: its statistics cannot be re-derived")
    if not all(math.isfinite(t) and t > 0 for t in p.times_s):
        return _invalid(p, "a raw time is not a positive finite number of seconds")
    out = judge(
        res.spec,
        p.name,
        p.times_s,
        p.warmup_times_s,
        peak=peak,
        peak_memory_bytes=p.peak_memory_bytes,
        memory_kind=p.memory_kind,
        breakdown=p.breakdown,
    )
    if out.status == "unverified" and peak is None and why:
        out.invalid_reason = f"{p.name}: {why}"
    # Measured facts beside the verdict are kept: the host's load, what stopped `repeats: auto`.
    return out.model_copy(update={"host": p.host, "repeats_stop": p.repeats_stop})


def recheck(res: JobResult, source: str) -> JobResult:
    """A copy of the result with every phase re-derived and the job's status settled again."""
    peak, why = derive_ceiling(res)
    phases = {name: recheck_phase(res, p, peak, why) for name, p in res.phases.items()}
    was = res.status
    status, error = (res.status, res.error) if res.status in NOT_MEASURED else ("ok", None)
    notes = [f"imported from {source}: statistics re-derived from raw times; ceiling: {peak.source if peak else why}"]
    if res.model_name != res.spec.model_name:
        notes.append(f"model name re-derived from the spec: {res.spec.model_name!r} (the file said {res.model_name!r})")
    update = {
        "phases": phases,
        "status": status,
        "error": error,
        "model_name": res.spec.model_name,
        "spec_hash": res.spec.spec_hash(),
        "warnings": [*res.warnings, *notes],
    }
    out = res.model_copy(update=update)
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
            first = (checked.error or "").splitlines()
            summary.flagged[checked.job_id] = f"{checked.status}: {first[0] if first else 'no reason recorded'}"
    for run_id, jobs in jobs_by_run.items():
        if not store.run_exists(run_id):
            store.create_run(run_id, [], jobs, name=f"imported from {source}", tags={"imported": "yes"}, state="done")
        summary.runs.append(run_id)
    return summary


def import_file(store: ResultStore, path: str | Path) -> ImportSummary:
    """Read, validate, re-check and store the results in an import file."""
    return import_results(store, validate(read_file(path)), Path(path).name)
