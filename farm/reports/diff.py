"""`farm diff A B`: what differs between the environments of two results, so a changed number can be
explained (hardware, driver, library versions, precision settings, threads, spec, peak and roofline
used, and how each phase was measured: its status, the host's load and contention, noise flags, and
its telemetry: clock against max and base, throttle reasons, power against its limit, energy).

Each result is flattened to `section / key -> value` text; the diff lists the keys whose values
differ (or every key with `show_all`). Never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from farm.reports.listing import Listing
from farm.results.result import JobResult
from farm.results.telemetry import telemetry_facts

SOFTWARE = {"torch_version", "cuda_version", "cudnn_version", "python", "farm_version", "git_commit", "os"}
SECTIONS = ("hardware", "software", "precision", "job", "spec", "peak", "measurement")


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return " ".join(str(x) for x in v) or "-"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def environment(res: JobResult) -> dict[tuple[str, str], str]:
    """The result's environment as (section, key) -> text."""
    env: dict[tuple[str, str], str] = {}
    if res.machine is not None:
        for k, v in res.machine.model_dump(mode="json").items():
            if k == "gpus":
                env["hardware", "gpu count"] = str(len(v))
                for g in v:
                    for gk in ("name", "memory_bytes", "driver", "uuid"):
                        sect = "software" if gk == "driver" else "hardware"
                        env[sect, f"gpu[{g['index']}].{gk}"] = _text(g.get(gk))
            else:
                env["software" if k in SOFTWARE else "hardware", k] = _text(v)
    env["software", "result farm_version"] = res.farm_version
    for k, v in sorted(res.precision.items()):
        env["precision", k] = _text(v)
    env["job", "device"] = res.device
    env["job", "torch_device"] = _text(res.torch_device)
    env["job", "threads"] = _text(res.threads)
    env["job", "worker"] = _text(res.worker)
    env["job", "status"] = res.status
    env["job", "run_id"] = res.run_id
    env["job", "fresh_process"] = _text(res.fresh_process)
    spec = res.spec.model_dump(mode="json", exclude={"devices"})
    spec["model"] = res.spec.shape.model_dump(mode="json")
    for k, v in spec.items():
        if isinstance(v, dict) and k == "model":
            for mk, mv in v.items():
                env["spec", f"model.{mk}"] = _text(mv)
        else:
            env["spec", k] = _text(v)
    env["spec", "spec_hash"] = res.spec_hash
    for name, p in res.phases.items():
        env["peak", f"{name}.peak_source"] = _text(p.peak_source)
        env["peak", f"{name}.peak_flops"] = _text(p.peak_flops)
        env["peak", f"{name}.memory_kind"] = _text(p.memory_kind)
        env["peak", f"{name}.roofline_source"] = _text(p.roofline_source)
        env["peak", f"{name}.roofline_flops"] = _text(p.roofline_flops)
        env["measurement", f"{name}.status"] = p.status
        env["measurement", f"{name}.repeats_stop"] = _text(p.repeats_stop)
        env["measurement", f"{name}.outlier"] = _text(p.stats.outlier if p.stats else None)
        env["measurement", f"{name}.drift"] = _text(p.stats.drift if p.stats else None)
        host = p.host
        env["measurement", f"{name}.contended"] = _text(host.contended if host else None)
        env["measurement", f"{name}.load_avg_1m"] = _text(host.load_avg_1m if host else None)
        env["measurement", f"{name}.other_cpu_s"] = _text(
            round(host.other_cpu_s, 3) if host and host.other_cpu_s is not None else None
        )
        # What explains a slow phase: its clock against max and base, throttling, power, energy.
        facts = telemetry_facts(p.telemetry.model_dump(mode="json")) if p.telemetry else {}
        for key in ("clock", "throttled", "power", "energy"):
            env["measurement", f"{name}.{key}"] = facts.get(key, "-")
    return env


@dataclass
class EnvDiff:
    a: str  # job ids
    b: str
    rows: list[tuple[str, str, str, str]]  # section, key, value in A, value in B
    same: int  # keys with equal values (not listed unless show_all)


def environment_diff(a: JobResult, b: JobResult, show_all: bool = False) -> EnvDiff:
    """The environment keys that differ between two results (all keys with `show_all`)."""
    ea, eb = environment(a), environment(b)
    keys = list(dict.fromkeys([*ea, *eb]))
    keys.sort(key=lambda k: SECTIONS.index(k[0]))
    rows, same = [], 0
    for k in keys:
        va, vb = ea.get(k, "(absent)"), eb.get(k, "(absent)")
        if va == vb:
            same += 1
            if not show_all:
                continue
        rows.append((k[0], k[1], va, vb))
    return EnvDiff(a.job_id, b.job_id, rows, same)


def diff_doc(d: EnvDiff) -> dict[str, Any]:
    """The diff as the JSON document `farm diff --json` prints."""
    rows = [{"section": s, "key": k, "a": va, "b": vb} for s, k, va, vb in d.rows]
    return {"a": d.a, "b": d.b, "equal": d.same, "differences": rows}


def diff_listing(d: EnvDiff) -> Listing:
    """The diff as a listing (every format of `farm.reports.formats`); differing rows stand out."""
    lst = Listing(
        f"environment: {d.a} vs {d.b} ({len(d.rows)} listed, {d.same} equal)",
        ["section", "key", d.a, d.b],
        doc=diff_doc(d),
        notes=[f"{len(d.rows)} keys listed, {d.same} equal."],
    )
    for section, key, va, vb in d.rows:
        lst.add(section, key, va, vb, status="unserved" if va != vb else None)  # the yellow of a pending row
    return lst
