"""`farm sweep --dry-run`: the points, the jobs `farm sweep` would queue (one count: each point's
devices, as submission would resolve them) and how long they would take (`farm.nightly.estimate`).

Devices are resolved as `farm sweep` resolves them: with the embedded default only this machine's,
and wildcards (`cuda:*`) against the live workers when Redis answers (counted once, with a note,
when it does not). Nothing is queued and the embedded farm is never started."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from farm.cli.lazy import lazy_module
from farm.cli.output import emit, err, note, warn
from farm.errors import BrokerError, SpecError
from farm.spec import BenchSpec

if TYPE_CHECKING:
    from farm.cluster import controller, embedded
    from farm.nightly import estimate
    from farm.nightly import sweep as sweep_lib
    from farm.nightly.estimate import PointEstimate
    from farm.nightly.sweep import Sweep
    from farm.reports import cells, listing
    from farm.reports.listing import Listing
    from farm.results.store import ResultStore
    from farm.settings import Settings
else:  # run on first use (farm.cli.lazy): celery, redis, the store
    controller = lazy_module("farm.cluster.controller")
    embedded = lazy_module("farm.cluster.embedded")
    estimate = lazy_module("farm.nightly.estimate")
    sweep_lib = lazy_module("farm.nightly.sweep")
    cells = lazy_module("farm.reports.cells")
    listing = lazy_module("farm.reports.listing")


def _skipped(line: str) -> None:
    err.print(Text.assemble(("skipped", "yellow"), f" {line}"), highlight=False)


def resolve(specs: list[BenchSpec], settings: Settings) -> tuple[list[BenchSpec | None], bool]:
    """Each point's spec with the devices `farm sweep` would queue (None: none left), and whether the
    live workers were known (when not, a wildcard stays as it is and counts as one job)."""
    local = embedded.is_embedded(settings)
    try:
        workers: list[dict[str, Any]] | None = controller.live_workers(settings)
    except BrokerError as e:
        workers = None
        if any(d.endswith(":*") for s in specs for d in s.devices):
            note(f"live workers unknown ({e}): wildcards not expanded, each counted as one job")
    out: list[BenchSpec | None] = []
    skipped: dict[str, str] = {}  # device -> why it is skipped
    served = {t for w in workers or [] for t in w["tags"]}  # as submission: tags the farm's live workers serve
    for spec in specs:
        kept: BenchSpec | None = spec
        if local:
            try:
                kept, gone = embedded.local_only(spec, served)
                skipped.update({d.device: d.reason for d in gone})
            except SpecError:
                skipped.update({d: "this machine has none" for d in spec.devices if d not in skipped})
                kept = None
        if kept is not None and workers is not None:
            kept, dropped = sweep_lib.expand_point(kept, workers)
            for line in dropped:
                _skipped(line)
        out.append(kept)
    for d, why in skipped.items():
        warn(f"skipping device {d!r}: {why} (embedded farm)")
    return out, workers is not None


def _history_store(settings: Settings) -> ResultStore | None:
    """The store measured medians come from, when Redis answers (else lower bounds only)."""
    try:
        return controller.store_for(settings)
    except BrokerError:
        return None


def _cell(est: PointEstimate) -> str | None:
    if est.seconds is None:
        return None
    return ("" if est.measured else "≥ ") + estimate.fmt_duration(est.seconds)


def count_line(specs: list[BenchSpec | None], n_points: int) -> str:
    """`4 points x 2 devices = 8 jobs`, `3 of 4 points x ...` when points are skipped, or `7 jobs
    (each point x its devices) from 4 points` when points have different devices."""
    kept = [s for s in specs if s is not None]
    n_jobs = sum(len(s.devices) for s in kept)
    points = f"{len(kept)} of {n_points} points" if len(kept) < n_points else f"{n_points} points"
    if n_points == 1 and len(kept) == 1:
        points = "1 point"
    per = {len(s.devices) for s in kept}
    if len(per) == 1:
        (n,) = per
        return f"{points} x {n} device{'s' if n != 1 else ''} = {n_jobs} job{'s' if n_jobs != 1 else ''}"
    return f"{n_jobs} jobs (each point x its devices) from {points}"


def dry_run_listing(
    sw: Sweep, specs: list[BenchSpec], settings: Settings
) -> tuple[Listing, list[BenchSpec], list[PointEstimate], bool]:
    """The dry run's table (one row per point, with its devices and time), the specs it would queue,
    their estimates, and whether the live workers were known."""
    resolved, known = resolve(specs, settings)
    by_index = dict(zip([p.index for p in sw.points if p.ok], resolved, strict=True))
    kept = [s for s in resolved if s is not None]
    ests = estimate.estimate_points(kept, _history_store(settings))
    est_of = dict(zip([i for i, s in by_index.items() if s is not None], ests, strict=True))
    total = None if any(e.seconds is None for e in ests) else sum(e.seconds or 0.0 for e in ests)
    lower = not all(e.measured for e in ests)
    title = f"sweep {sw.name}: {count_line(resolved, len(sw.points))}"
    if not known and any(d.endswith(":*") for s in kept for d in s.devices):
        title += " (a wildcard counted once)"
    points = []
    for p in sw.points:
        spec, est = by_index.get(p.index), est_of.get(p.index)
        points.append({
            "index": p.index, "params": p.params, "ok": spec is not None, "error": p.error, "dropped": p.dropped,
            "devices": list(spec.devices) if spec else [], "predicted_bytes": p.predicted_bytes,
            "estimate_s": est.seconds if est else None, "measured": est.measured if est else None,
            "jobs": [j.__dict__ for j in est.jobs] if est else [],
        })  # fmt: skip
    doc = {"name": sw.name, "jobs": sum(len(s.devices) for s in kept), "points": points,
           "estimate": {"total_s": total, "lower_bound": lower}}  # fmt: skip
    lst = listing.Listing(title, ["#", *sw.grid, "devices", "predicted peak", "time", "status"], doc=doc)
    for p in sw.points:
        spec, est = by_index.get(p.index), est_of.get(p.index)
        status = "ok" if spec is not None else f"skipped: {p.error or 'no device left'}"
        if p.dropped:
            status += f" (dropped {', '.join(d.split(': ')[0] for d in p.dropped)})"
        devices = ",".join(spec.devices) if spec else None
        params = [str(v) for v in p.params.values()]
        time = _cell(est) if est else None
        lst.add(p.index, *params, devices, cells.fmt_bytes(p.predicted_bytes), time, status,
                status="ok" if spec is not None else "skipped")  # fmt: skip
    return lst, kept, ests, known


def explain(ests: list[PointEstimate]) -> None:
    """On stderr: what the times mean, the ceilings they used, and a warning when the sweep is long."""
    jobs = [j for e in ests for j in e.jobs]
    known = [j.seconds for j in jobs if j.seconds is not None]
    if not jobs:
        return
    measured = sum(j.measured for j in jobs)
    total = sum(known)
    unknown = len(jobs) - len(known)
    head = "" if measured == len(jobs) else "at least "
    note(
        f"time: {head}{estimate.fmt_duration(total)} for {len(known)} job(s) run one after another"
        + (f"; {unknown} job(s) have no ceiling and no history (not counted)" if unknown else "")
    )
    if measured < len(jobs):
        note(
            "  '≥': a lower bound, the phases' FLOPs x (warm-ups + repeats) at 100 % MFU of the device's "
            "ceiling; set-up, compile and anything below peak make real jobs longer"
        )
    if measured:
        note(f"  no '≥': {measured} job(s) from the median of stored results of the same spec hash and device")
    for source in dict.fromkeys(j.ceiling for j in jobs if j.ceiling):
        note(f"  ceiling: {source}")
    cpu = sum(j.seconds or 0.0 for j in jobs if j.device.split(":")[0] == "cpu")
    if cpu > estimate.LONG_S:
        warn(
            f"the cpu jobs alone take {head}{estimate.fmt_duration(cpu)} on this machine's CPU; shrink the grid "
            "(model, batch, seq) or the repeats, or run them on a GPU"
        )
    elif total > estimate.LONG_S:
        warn(f"this sweep takes {head}{estimate.fmt_duration(total)} of device time")


def dry_run(sw: Sweep, specs: list[BenchSpec], settings: Settings, fmt: str, output: Path | None) -> None:
    """`farm sweep --dry-run`: the table, then on stderr the queues and the time; nothing queued."""
    lst, kept, ests, known = dry_run_listing(sw, specs, settings)
    emit(lst, fmt, output)
    if kept and known:
        plan = controller.plan(kept, settings=settings)
        queues = ", ".join(dict.fromkeys(j.queue for j in plan.jobs))
        served = f"; no live worker on {', '.join(plan.unserved)}" if plan.unserved else ""
        note(f"would queue {len(plan.jobs)} job(s) on {queues}{served}; nothing queued")
    elif kept:
        note("live workers unknown: queues not checked; nothing queued")
    explain(ests)
