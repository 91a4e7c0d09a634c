"""A result read from the store proves every number it carries (docs/import.md, "On read").

Redis contents are untrusted: anyone with the Redis URL can write a result. So every read re-derives
what a stored result derived, from its own raw arrays, and refuses what does not follow; the stored
bytes are never rewritten by a read, the record read back only says `invalid` with the reason.

- `check_document(doc)`: a stored `JobResult` in its JSON form, parsed but not validated. For each
  measured phase (`ok` or `unverified`): the statistics from `times_s` (`stats.summarize`), the FLOPs
  recounted from the spec, the FLOP/s, tokens/s and MFU that follow; the fastest repeat against the
  ceiling its own fingerprint allows (`farm.results.ceilings`, as `farm import` derives it, never the
  peak it recorded); the generate record re-derived (`decode.derive_generation`) and checked
  (`consistency_verdict`, `bandwidth_verdict`); the DDP scaling record re-derived and checked
  (`scaling.rederive`). Returns `{phase: (verdict, reason)}` for what does not follow.
- `verify_document(doc)` / `verify_result(res)`: the result as it reads back: itself when honest,
  else a copy whose phases are `invalid` (or `unverified`: a figure nothing can re-derive) with a
  one-line `invalid_reason` naming the field, and the job's status settled again.
- `verify_record(rec)`: the cheap check of a report record read from its cached summary (itself
  untrusted): its statistics against its own times, tokens/s and MFU against each other. A summary
  is derived through `verify_document`, so the full verdict travels in it.

An honest result reads back unchanged: numbers are compared with a relative tolerance of 1e-9 (a
float written as JSON reads back exactly; the tolerance covers another order of the same sums).
Costs about 25 µs a phase for a document (mostly `summarize`), 2 µs for a record. Never imports torch.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from farm.flops import min_phase_flops, phase_flops
from farm.results.ceilings import derive_ceiling, group_ceiling, published_bandwidth
from farm.results.decode import RANK, Generation, Verdict, bandwidth_verdict, consistency_verdict, derive_generation
from farm.results.machine import MachineFingerprint
from farm.results.peaks import UNCERTAIN_TOLERANCE, Bandwidth, Peak
from farm.results.records import Record
from farm.results.result import MEASURED_STATUSES, JobResult
from farm.results.scaling import Scaling, rederive
from farm.results.stats import NOISY_IQR_RATIO, Stats, median_ci, quantile, summarize
from farm.spec import PHASES, STORED, BenchSpec

REL_TOL = 1e-9
_STATS = ("n", "median_s", "mean_s", "min_s", "max_s", "std_s", "q1_s", "q3_s", "iqr_s", "cv",
          "ci_low_s", "ci_high_s", "ci_coverage", "noisy")  # fmt: skip
# Generation's derived figures, and the raw array each follows from.
_GENERATE = {
    "gen_tokens": "the spec", "decode_steps": "the spec", "prefill_s": "prefill_times_s",
    "decode_s": "decode_times_s", "decode_tokens_per_s": "decode_times_s", "token_p50_s": "token_times_s",
    "token_p90_s": "token_times_s", "token_p99_s": "token_times_s", "kv_cache_bytes_predicted": "the spec",
    "bytes_per_step": "the spec", "bytes_per_token": "the spec", "achieved_bandwidth": "decode_times_s",
}  # fmt: skip
_SCALING = {
    "step_s": "times_s", "tokens_per_s": "times_s", "single_device_step_s": "single_device_times_s",
    "single_device_tokens_per_s": "single_device_times_s", "efficiency": "times_s and single_device_times_s",
    "throughput_speedup": "times_s and single_device_times_s", "no_sync_step_s": "no_sync_times_s",
    "allreduce_share": "times_s and no_sync_times_s",
}  # fmt: skip


def _same(stored: Any, derived: Any) -> bool:
    if stored is None or derived is None or isinstance(derived, bool):
        return stored is derived or stored == derived
    if not isinstance(stored, int | float) or isinstance(stored, bool):
        return False
    return stored == derived or math.isclose(stored, derived, rel_tol=REL_TOL, abs_tol=1e-300)


def _differs(where: str, stored: Any, derived: Any, source: str) -> str | None:
    """The one-line reason a stored figure is not the one its raw data gives, or None."""
    if _same(stored, derived):
        return None
    return f"{where}: stored {_show(stored)} does not follow from {source} ({_show(derived)})"


def _show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)[:40]


@dataclass(frozen=True, slots=True)
class Facts:
    """What a stored result's phases are checked with: its validated spec and fingerprint, the
    ceiling that fingerprint allows (one device, and the DDP group's), and the published bandwidth."""

    spec: BenchSpec
    device: str
    torch_device: str | None
    machine: MachineFingerprint | None
    threads: int | None
    peak: Peak | None = None
    group_peak: Peak | None = None
    bandwidth: Bandwidth | None = None
    counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # phase -> `_counts`


@functools.lru_cache(maxsize=1024)
def _facts(spec: bytes, machine: bytes | None, device: str, torch_device: str | None, threads: int | None) -> Facts:
    """Facts of a result, cached by its spec's and fingerprint's JSON (a store holds few of each)."""
    fp = MachineFingerprint.model_validate_json(machine, context=STORED) if machine else None
    f = Facts(BenchSpec.model_validate_json(spec, context=STORED), device, torch_device, fp, threads)
    peak, _ = derive_ceiling(f)
    counts: dict[str, tuple[int, int, int]] = {name: _counts(f.spec, name) for name in PHASES}
    group, bandwidth = group_ceiling(f, peak), published_bandwidth(f)
    return Facts(f.spec, device, torch_device, fp, threads, peak, group, bandwidth, counts)


def _counts(spec: BenchSpec, name: str) -> tuple[int, int, int]:
    """(FLOPs, least FLOPs, tokens) of one repeat of a phase, as `result.judge` counts them."""
    group = spec.world_size if name == "train" else 1
    tokens = group * spec.batch * (spec.gen_tokens if name == "generate" else spec.seq)
    least = min_phase_flops(spec.shape, spec.batch, spec.seq, name, gen_tokens=spec.gen_tokens)
    return group * phase_flops(spec, name), group * least, tokens if name != "init" else 0


def _statistics(name: str, p: dict[str, Any], derived: Stats) -> str | None:
    stats = p.get("stats")
    if not isinstance(stats, dict):
        return f"{name}.stats: missing, though times_s holds {derived.n} times"
    for key in _STATS:
        if key in stats and (why := _differs(f"{name}.stats.{key}", stats[key], getattr(derived, key), "times_s")):
            return why
    return None


def _whole(x: float) -> bool:
    return x >= 0.999 and abs(x - round(x)) <= 1e-6 * x


def _throughput(f: Facts, name: str, p: dict[str, Any], med: float, fastest_s: float) -> str | None:
    """FLOP/s, tokens/s and MFU from the stored counts and the median; counts no larger than the spec's;
    the fastest repeat under the ceiling by the spec's own least count."""
    flops, least, tokens = f.counts[name]
    stored = p.get("flops", 0)
    if not isinstance(stored, int) or isinstance(stored, bool) or not 0 <= stored <= flops:
        return f"{name}.flops: stored {_show(stored)} is not a count up to the spec's {flops:,} FLOPs a repeat"
    achieved = stored / med if stored else None
    pk = p.get("peak_flops")
    mfu = achieved / pk if achieved and isinstance(pk, int | float) and pk else None
    for where, was, derived, source in (
        ("achieved_flops", p.get("achieved_flops"), achieved, "flops and times_s"),
        ("mfu", p.get("mfu"), mfu, "achieved_flops and peak_flops"),
    ):
        if why := _differs(f"{name}.{where}", was, derived, source):
            return why
    rate = p.get("tokens_per_s")
    if rate is not None and (
        not isinstance(rate, int | float) or not _whole(rate * med) or rate * med > tokens * 1.000001
    ):
        return f"{name}.tokens_per_s: stored {_show(rate)} is not a whole number of tokens a repeat, up to {tokens:,}"
    peak = f.group_peak if name == "train" else f.peak
    if name != "init" and least and peak is not None and least / fastest_s > peak.flops * peak.tolerance:
        return (
            f"{name}.times_s: {least / fastest_s / 1e12:.3g} TFLOP/s at the fastest repeat is above the peak "
            f"{peak.flops / 1e12:.3g} TFLOP/s its fingerprint allows ({peak.source})"
        )
    return None


def _stored_bandwidth(gen: Generation) -> Bandwidth | None:
    """The bandwidth ceiling the record says it was checked against (a measured one is uncertain)."""
    if gen.bandwidth_peak is None or gen.bandwidth_peak <= 0:
        return None
    source = gen.bandwidth_source or "as stored"
    extra: dict[str, Any] = {"cache_bytes": gen.cache_bytes} if gen.cache_bytes is not None else {}
    tolerance = 1.0 if source.startswith("table:") else UNCERTAIN_TOLERANCE
    return Bandwidth(bytes_per_s=gen.bandwidth_peak, source=source, tolerance=tolerance, **extra)


def _generation(f: Facts, p: dict[str, Any], times: list[float]) -> str | None:
    gen = Generation.model_validate(p["generate"])
    bandwidth = f.bandwidth or _stored_bandwidth(gen)
    derived = derive_generation(
        f.spec, gen.prefill_times_s, gen.decode_times_s, gen.token_times_s,
        kv_cache_bytes_observed=gen.kv_cache_bytes_observed, bandwidth=bandwidth,
    )  # fmt: skip
    for key, source in _GENERATE.items():
        if why := _differs(f"generate.{key}", getattr(gen, key), getattr(derived, key), source):
            return why
    rate, pk = derived.achieved_bandwidth, gen.bandwidth_peak
    if why := _differs("generate.mbu", gen.mbu, rate / pk if rate is not None and pk else None, "decode_times_s"):
        return why
    for verdict, reason in (consistency_verdict(f.spec, derived, times, f.peak),
                            bandwidth_verdict(f.spec, derived, bandwidth)):  # fmt: skip
        if verdict == "invalid" and reason:
            return reason
    return None


def _scaling(f: Facts, p: dict[str, Any], times: list[float]) -> tuple[Verdict, str] | None:
    stored = Scaling.model_validate(p["scaling"])
    derived, verdict, reason = rederive(f.spec, times, stored, device=f.device, machine=f.machine, device_peak=f.peak)
    if verdict != "ok" and reason:
        return verdict, reason
    for key, source in _SCALING.items():
        if derived is not None and (why := _differs(f"train.scaling.{key}", getattr(stored, key),
                                                    getattr(derived, key), source)):  # fmt: skip
            return "invalid", why
    return None


def check_phase(f: Facts, name: str, p: dict[str, Any]) -> tuple[Verdict, str] | None:
    """(verdict, reason) for a stored phase whose figures do not follow from its raw arrays (or break a
    ceiling), None when everything follows. Only measured phases (`ok`, `unverified`) are checked."""
    if p.get("status", "ok") not in MEASURED_STATUSES:
        return None
    times = p.get("times_s") or []
    if not times:
        return "invalid", f"{name}.times_s: no raw times, so its statistics cannot be re-derived"
    if not all(isinstance(t, int | float) and math.isfinite(t) and t > 0 for t in times):
        return "invalid", f"{name}.times_s: a raw time is not a positive finite number of seconds"
    derived = summarize(times)
    if why := _statistics(name, p, derived) or _throughput(f, name, p, derived.median_s, derived.min_s):
        return "invalid", why
    if name == "generate" and p.get("generate") is not None and (why := _generation(f, p, times)):
        return "invalid", why
    if name == "train" and p.get("scaling") is not None:
        return _scaling(f, p, times)
    return None


def check_document(doc: dict[str, Any]) -> dict[str, tuple[Verdict, str]]:
    """{phase name: (verdict, reason)} for the phases of a stored result (JSON form) whose figures do
    not follow from its raw arrays. ValueError (or KeyError, TypeError) for a document that is not a
    result at all (the reader skips it, as one that does not parse)."""
    phases = doc.get("phases") or {}
    if not any(isinstance(p, dict) and p.get("status", "ok") in MEASURED_STATUSES for p in phases.values()):
        return {}
    machine = doc.get("machine")
    facts = _facts(
        pydantic_core.to_json(doc["spec"]), pydantic_core.to_json(machine) if machine else None,
        doc["device"], doc.get("torch_device"), doc.get("threads"),
    )  # fmt: skip
    found = {}
    for name, p in phases.items():
        if name in PHASES and (bad := check_phase(facts, name, p)) is not None:
            found[name] = bad
    return found


def verify_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The stored result as it reads back: `doc` itself when every figure follows, else a copy with
    the phases that do not `invalid` (or `unverified`) and the job's status settled again."""
    found = check_document(doc)
    if not found:
        return doc
    out = copy.deepcopy(doc)
    for name, (verdict, reason) in found.items():
        p = out["phases"][name]
        if RANK[verdict] > RANK.get(p.get("status", "ok"), 0):
            p["status"], p["invalid_reason"] = verdict, reason
    worst = max(found.values(), key=lambda v: RANK[v[0]])
    was = out.get("status", "ok")
    if was in MEASURED_STATUSES and RANK[worst[0]] > RANK[was]:
        out["status"], out["error"] = worst[0], worst[1]
        out["warnings"] = [*(out.get("warnings") or []), f"stored as {was}; re-checked on read as {worst[0]}"]
    return out


def verify_result(res: JobResult) -> JobResult:
    """A result in memory as it would read back from the store (`verify_document`)."""
    doc = res.model_dump(mode="json")
    out = verify_document(doc)
    return res if out is doc else JobResult.model_validate(out, context=STORED)


@functools.lru_cache(maxsize=256)
def _ci_ranks(n: int) -> tuple[int, float]:
    """(k, coverage) of the median's interval [x(k), x(n-k+1)] for n times (`stats.median_ci`)."""
    lo, _, coverage = median_ci(list(range(1, n + 1)))
    return int(lo), coverage


def verify_record(rec: Record) -> Record:
    """A record read from its cached summary, with a measured phase whose shown statistics do not follow
    from its own times (median, interval, IQR, count) or whose tokens/s and MFU contradict them marked
    `invalid` in place (and the record with it). The summary's other figures were checked when it was
    derived from its result (`verify_document`)."""
    for p in rec.phases.values():
        if p.status not in MEASURED_STATUSES:
            continue
        why = _record_problem(rec, p.name, p.times, p)
        if why is not None:
            p.status, p.invalid_reason = "invalid", why
            if rec.status in MEASURED_STATUSES:
                rec.status, rec.error = "invalid", why
    return rec


def _record_problem(rec: Record, name: str, times: list[float], p: Any) -> str | None:
    n = len(times)
    if not n or min(times) <= 0:
        return f"{name}.times_s: no raw times, or one that is not a positive number of seconds"
    xs = sorted(times)
    h = n // 2
    med = xs[h] if n % 2 else (xs[h - 1] + xs[h]) / 2
    k, coverage = _ci_ranks(n)
    iqr = quantile(xs, 0.75) - quantile(xs, 0.25)
    for where, stored, derived in (
        ("stats.n", p.n, n), ("stats.median_s", p.median_s, med), ("stats.ci_low_s", p.ci_low_s, xs[k - 1]),
        ("stats.ci_high_s", p.ci_high_s, xs[n - k]), ("stats.ci_coverage", p.ci_coverage, coverage),
        ("stats.iqr_s / median", p.iqr_ratio, iqr / med), ("stats.noisy", p.noisy, iqr / med > NOISY_IQR_RATIO),
    ):  # fmt: skip
        if stored is not derived and not _same(stored, derived):
            return f"{name}.{where}: stored {_show(stored)} does not follow from times_s ({_show(derived)})"
    mfu = (p.achieved_flops or 0.0) / (p.peak_flops or math.inf)
    if p.mfu is not None and (why := _differs(f"{name}.mfu", p.mfu, mfu, "achieved_flops and peak_flops")):
        return why
    tokens = p.tokens_per_s * med / rec.batch if p.tokens_per_s is not None and rec.batch else None
    if tokens is not None and not _whole(tokens):
        return f"{name}.tokens_per_s: stored {p.tokens_per_s:.4g} is not a whole number of tokens per repeat"
    return None
