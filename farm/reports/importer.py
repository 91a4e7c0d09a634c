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
with the reason, like one from a worker. Only a published peak looked up by GPU name can make an
imported phase `ok`: a ceiling derived from the file's own hardware facts (a GPU's SMs and clock,
a CPU's cores, ISA and clock) can rule a number out but not vouch for it, so a phase below it is
`unverified` (a file declaring 1,024 SMs at 5 GHz must not make the seed's 390 TFLOP/s `ok`);
a phase without raw times, or with a time that is not a positive finite number, is `invalid` too.
A phase that failed (a diverged loss) stays failed.

The file is untrusted (docs/reliability.md, "Untrusted input"): it is read through
`farm.untrusted.load_document` (at most `MAX_IMPORT_BYTES`, JSON only, depth and string bounds),
holds at most `MAX_IMPORT_RESULTS` results, each phase at most `MAX_REPEATS` raw times
(`MAX_WARMUPS` warm-up times), each result at most `MAX_WARNINGS` warnings; every number is finite
and `seed` below 2**63 (the models). Each limit is a one-line SpecError naming it.

An import never writes into what exists: a job id with a stored result is left as it is (reported
`existing`) unless it is in `replace`; a job id with a job state hash but no result (a queued or
running job: its worker would skip it) or a new job in an existing run is refused; so is a run id
of the nightly form (`<name>-YYYYMMDD`, `<name>-YYYYMMDDTHHMMSS`, `farm.nightly.sweep.nightly_run_id`)
for a date that has not passed. Everything is validated and checked first, then written in one
transaction (`ResultStore.write_import`): nothing is half-stored. Never imports torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from farm.errors import SpecError
from farm.results.ceilings import derive_ceiling, group_ceiling, published_bandwidth, vouches
from farm.results.cpus import core_row
from farm.results.decode import RANK
from farm.results.peaks import Peak
from farm.results.result import JobResult, PhaseResult, judge
from farm.results.scaling import rederive as rederive_scaling
from farm.results.store import Occupancy, ResultStore
from farm.spec import MAX_REPEATS, PHASES, Job
from farm.untrusted import MAX_IMPORT_BYTES, load_document

NOT_MEASURED = ("failed", "oom", "timeout", "cancelled")
# 16 MiB holds about 3,000 results of three phases and five repeats; a file of many tiny results
# is bounded by count as well.
MAX_IMPORT_RESULTS = 5000
MAX_WARMUPS = 1000  # `BenchSpec.warmup`'s bound
MAX_WARNINGS = 100  # a worker writes a handful; an import adds two
# A nightly run id: `<name>-YYYYMMDD` or, per interval, `<name>-YYYYMMDDTHHMMSS` (nightly_run_id).
NIGHTLY_RUN_ID = re.compile(r"-(?P<date>[0-9]{8})(?:T(?P<time>[0-9]{6}))?$")


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """The result mappings in an import file, bounded (`farm.untrusted`); SpecError naming the problem otherwise."""
    data = load_document(path, "file", max_bytes=MAX_IMPORT_BYTES, yaml_allowed=False)
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        data = data["results"]
    if not isinstance(data, list):
        raise SpecError("file", 'expected a JSON list of results or {"run_id": ..., "results": [...]}')
    if len(data) > MAX_IMPORT_RESULTS:
        raise SpecError("file", f"{len(data):,} results (at most {MAX_IMPORT_RESULTS:,} per file; split it)")
    return data


def _check_limits(i: int, item: Any) -> None:
    """The counts a model does not bound: raw times per phase, warnings per result."""
    if not isinstance(item, dict):
        return  # the model names the type
    warnings = item.get("warnings")
    if isinstance(warnings, list) and len(warnings) > MAX_WARNINGS:
        raise SpecError(f"results[{i}].warnings", f"{len(warnings):,} warnings (at most {MAX_WARNINGS})")
    phases = item.get("phases")
    for name, p in phases.items() if isinstance(phases, dict) else ():
        for key, most in (("times_s", MAX_REPEATS), ("warmup_times_s", MAX_WARMUPS)):
            times = p.get(key) if isinstance(p, dict) else None
            if isinstance(times, list) and len(times) > most:
                where = f"results[{i}].phases.{str(name)[:40]}.{key}"
                raise SpecError(where, f"{len(times):,} raw times (at most {most:,} per phase)")


def validate(items: list[Any]) -> list[JobResult]:
    """`JobResult`s from mappings; SpecError names the first bad field as `results[i].field`."""
    if len(items) > MAX_IMPORT_RESULTS:
        raise SpecError("file", f"{len(items):,} results (at most {MAX_IMPORT_RESULTS:,} per file; split it)")
    out = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        _check_limits(i, item)
        try:
            res = JobResult.model_validate(item)
            Job(job_id=res.job_id, run_id=res.run_id, device=res.device, spec=res.spec)
        except ValidationError as e:
            errs = e.errors()
            # A custom shape under `spec.model` also fails the preset-name branch: name the shape's error.
            err = next((x for x in errs if "str" not in x["loc"]), errs[0])
            loc = ".".join(str(x)[:40] for x in err["loc"] if x != "ModelShape")
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise SpecError(f"results[{i}].{loc}" if loc else f"results[{i}]", msg) from None
        for key, p in res.phases.items():
            if key not in PHASES:
                raise SpecError(f"results[{i}].phases", f"{key!r} is not a phase name ({', '.join(PHASES)})")
            if p.name != key:
                raise SpecError(f"results[{i}].phases.{key}.name", f"{p.name[:40]!r} differs from its key {key!r}")
        if res.job_id in seen:
            raise SpecError(f"results[{i}].job_id", f"{res.job_id!r} appears twice in the file")
        seen.add(res.job_id)
        out.append(res)
    return out


def _invalid(p: PhaseResult, reason: str) -> PhaseResult:
    return p.model_copy(update={"status": "invalid", "invalid_reason": f"{p.name}: {reason}"})


def recheck_phase(res: JobResult, p: PhaseResult, peak: Peak | None = None, why: str | None = None) -> PhaseResult:
    """The phase re-derived from its raw times with the farm's counts and the derived ceiling
    (`why`: the reason there is none, stored with an `unverified` phase)."""
    if p.status in NOT_MEASURED and not p.times_s:
        return p
    # Measured facts beside the times (not derived from them) travel as they are.
    kept = {"host": p.host, "repeats_stop": p.repeats_stop, "telemetry": p.telemetry}
    if p.status in NOT_MEASURED:  # measured, then failed (a diverged loss): re-derived, and still failed
        kept.update(status=p.status, error=p.error)
    if not p.times_s:
        return _invalid(p, "no raw times: its statistics cannot be re-derived")
    if not all(math.isfinite(t) and t > 0 for t in p.times_s):
        return _invalid(p, "a raw time is not a positive finite number of seconds")
    ddp = p.name == "train" and res.spec.world_size > 1
    out = judge(
        res.spec,
        p.name,
        p.times_s,
        p.warmup_times_s,
        peak=group_ceiling(res, peak) if ddp else peak,
        peak_memory_bytes=p.peak_memory_bytes,
        memory_kind=p.memory_kind,
        breakdown=p.breakdown,
        generation=p.generate,
        bandwidth=published_bandwidth(res),
        world_size=res.spec.world_size if ddp else 1,
    )
    if p.scaling is not None:
        # Every figure re-derived from the raw step times, checked against the devices and the ceiling.
        scaling, verdict, reason = rederive_scaling(
            res.spec, p.times_s, p.scaling, device=res.device, machine=res.machine, device_peak=peak
        )
        out.scaling = scaling
        if reason is not None and out.status in RANK and RANK[verdict] >= RANK[out.status]:
            same = RANK[verdict] == RANK[out.status] and out.invalid_reason
            out.status, out.invalid_reason = verdict, f"{out.invalid_reason}; {reason}" if same else reason
    if out.status == "unverified" and peak is None and why:
        out.invalid_reason = f"{p.name}: {why}"
    elif out.status == "ok" and peak is not None and not vouches(peak):
        # Derived from what the file says about its machine (SM count, clock, cores, ISA): such a
        # ceiling can rule a number out (invalid), but a file cannot vouch for its own hardware.
        out.status = "unverified"
        out.invalid_reason = (
            f"{p.name}: below a ceiling derived from the file's own hardware facts ({peak.source}); "
            "an imported file cannot vouch for them, only a published peak by GPU name can"
        )
    # Measured facts beside the verdict are kept: the host's load, what stopped `repeats: auto`.
    return out.model_copy(update=kept)


def recheck(res: JobResult, source: str) -> JobResult:
    """A copy of the result with every phase re-derived and the job's status settled again."""
    peak, why = derive_ceiling(res)
    phases = {name: recheck_phase(res, p, peak, why) for name, p in res.phases.items()}
    was = res.status
    status, error = (res.status, res.error) if res.status in NOT_MEASURED else ("ok", None)
    notes = [f"imported from {source}: statistics re-derived from raw times; ceiling: {peak.source if peak else why}"]
    if res.model_name != res.spec.model_name:
        notes.append(f"model name re-derived from the spec: {res.spec.model_name!r} (the file said {res.model_name!r})")
    machine = res.machine
    if machine is not None:
        row, _ = core_row(machine.cpu_id, machine.cpu_model)
        core = row.core if row is not None else None
        if core != machine.cpu_core:
            notes.append(f"CPU core re-derived from its CPUID facts: {core!r} (the file said {machine.cpu_core!r})")
            machine = machine.model_copy(update={"cpu_core": core})
    update = {
        "machine": machine,
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
    replaced: list[str] = field(default_factory=list)  # job ids whose stored result was overwritten (`replace`)
    flagged: dict[str, str] = field(default_factory=dict)  # job id -> status: reason, for non-ok results
    runs: list[str] = field(default_factory=list)


def check_nightly_run_id(run_id: str, field: str, now: datetime | None = None) -> None:
    """SpecError for a run id of the nightly form whose night (or interval) has not passed yet:
    a schedule's firing would find its run taken."""
    m = NIGHTLY_RUN_ID.search(run_id)
    if m is None:
        return
    now = now or datetime.now(UTC)
    try:
        if m["time"]:
            when = datetime.strptime(m["date"] + m["time"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            future = when > now
        else:
            day = datetime.strptime(m["date"], "%Y%m%d").replace(tzinfo=UTC).date()
            future = day >= now.date()
    except ValueError:
        return  # digits that are not a date: not a nightly id
    if future:
        raise SpecError(field, f"{run_id!r} is a nightly run id for a time that has not passed; a schedule will use it")


def plan_import(
    results: list[JobResult], seen: Occupancy, replace: Collection[str] = ()
) -> tuple[list[JobResult], list[str], dict[str, list[Job]]]:
    """(results to write, job ids left as they were, new runs with their jobs) from what Redis holds.

    SpecError, before anything is written, for a job the farm already has without a result (queued
    or running), a new job in an existing run, a nightly run id whose night has not passed, or a
    `replace` id that is not in the file or has no stored result.
    """
    ids = {r.job_id for r in results}
    for job_id in replace:
        if job_id not in ids:
            raise SpecError("replace", f"{job_id!r} is not a job id in the file")
        if job_id not in seen.results:
            raise SpecError("replace", f"{job_id!r} has no stored result to replace")
    write: list[JobResult] = []
    existing: list[str] = []
    new_runs: dict[str, list[Job]] = {}
    for i, res in enumerate(results):
        where = f"results[{i}]"
        if res.job_id in replace:
            # A replacement stays in the run of the record it replaces (or one the job is listed in).
            run_jobs = seen.runs.get(res.run_id)
            was = seen.result_runs.get(res.job_id)
            if (was is not None and was != res.run_id) or (
                was is None and run_jobs is not None and res.job_id not in run_jobs
            ):
                raise SpecError(f"{where}.run_id", f"replacing {res.job_id!r} would move it into run {res.run_id!r}")
            if run_jobs is None:
                check_nightly_run_id(res.run_id, f"{where}.run_id")
                new_runs.setdefault(res.run_id, []).append(_job_of(res))
            write.append(res)
            continue
        if res.job_id in seen.results:
            existing.append(res.job_id)  # idempotent by job id: nothing is written
            continue
        if res.job_id in seen.jobs:
            raise SpecError(
                f"{where}.job_id", f"{res.job_id!r} is a job the farm already has (queued or running): not imported"
            )
        if res.run_id in seen.runs:
            raise SpecError(
                f"{where}.run_id", f"run {res.run_id!r} already exists: an import never adds jobs to an existing run"
            )
        check_nightly_run_id(res.run_id, f"{where}.run_id")
        new_runs.setdefault(res.run_id, []).append(_job_of(res))
        write.append(res)
    return write, existing, new_runs


def _job_of(res: JobResult) -> Job:
    return Job(job_id=res.job_id, run_id=res.run_id, device=res.device, spec=res.spec)


def import_results(
    store: ResultStore, results: list[JobResult], source: str, replace: Collection[str] = ()
) -> ImportSummary:
    """Re-check, plan (`plan_import`) and store results in one transaction; idempotent by job id.

    Nothing is written when anything is refused (SpecError) or the farm changed meanwhile."""
    checked = [recheck(res, source) for res in results]
    seen = store.occupancy({r.job_id for r in checked}, {r.run_id for r in checked})
    write, existing, new_runs = plan_import(checked, seen, replace)
    if write:
        store.write_import(
            write, new_runs, seen, replace=replace, name=f"imported from {source}"[:200], tags={"imported": "yes"}
        )
    summary = ImportSummary(existing=existing)
    for res in write:
        (summary.replaced if res.job_id in replace else summary.stored).append(res.job_id)
        if res.status != "ok":
            first = (res.error or "").strip().splitlines()
            summary.flagged[res.job_id] = f"{res.status}: {first[0] if first else 'no reason recorded'}"
    summary.runs = list(dict.fromkeys(r.run_id for r in write))
    return summary


def import_file(store: ResultStore, path: str | Path, replace: Collection[str] = ()) -> ImportSummary:
    """Read, validate, re-check and store the results in an import file."""
    return import_results(store, validate(read_file(path)), Path(path).name, replace)
