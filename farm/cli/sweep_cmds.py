"""Sweeps, schedules and regressions: sweep, schedule, beat, regressions, check."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from farm.cli.app import app, err, out
from farm.cli.errors import EXIT_JOB_FAILED, EXIT_UNSERVED, handles_errors
from farm.errors import SpecError
from farm.settings import get_settings

if TYPE_CHECKING:
    from farm.nightly.sweep import Sweep
    from farm.spec import BenchSpec

schedule_app = typer.Typer(help="Nightly (cron) or interval schedules of sweeps, fired by `farm beat`.")
app.add_typer(schedule_app, name="schedule")

MaxMemory = Annotated[str | None, typer.Option("--max-memory", help="Skip points predicted above this, e.g. 16GiB.")]
Strict = Annotated[bool, typer.Option("--strict", help="Refuse the sweep if any point is invalid or skipped.")]


def _parse_date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise SpecError(option, f"{value!r} is not a date such as 2026-11-28 or 2026-11-28T02:00") from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _load(file: Path, max_memory: str | None, strict: bool) -> Sweep:
    from farm.nightly.sweep import load_sweep, parse_bytes

    sweep = load_sweep(file, max_memory=parse_bytes(max_memory) if max_memory else None, strict=strict)
    for line in sweep.problems:
        err.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    return sweep


def _follow(run_id: str, json_out: bool, timeout: float | None) -> None:
    """Wait for a run; print its results (table or JSON); exit 1 on a failed job, 5 when unserved."""
    from farm.cli.render import results_table
    from farm.cluster.controller import job_views, store_for, wait

    last: list[str] = []

    def progress(views: list) -> None:
        counts: dict[str, int] = {}
        for v in views:
            key = v.status or ("unserved" if v.unserved else v.state)
            counts[key] = counts.get(key, 0) + 1
        line = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        if line != (last[0] if last else None):
            last[:] = [line]
            err.print(f"{run_id}: {line}", highlight=False)

    results = wait(run_id, timeout=timeout, on_update=progress)
    views = job_views(run_id, store_for())
    if json_out:
        print(json.dumps({"run_id": run_id, "results": [r.model_dump(mode="json") for r in results]}, indent=2))
    else:
        out.print(results_table(results, title=f"run {run_id}"))
    if any(v.unserved for v in views):
        queues = ", ".join(sorted({v.queue for v in views if v.unserved}))
        err.print(f"[red]unserved[/] jobs left: no live worker serves {escape(queues)}")
        raise typer.Exit(EXIT_UNSERVED)
    if any(r.status != "ok" for r in results):
        raise typer.Exit(EXIT_JOB_FAILED)


def _local_points(specs: list[BenchSpec]) -> list[BenchSpec]:
    """Embedded farm: keep the devices this machine has (as `farm submit` does); drop empty points."""
    from farm.cluster.embedded import local_only

    kept, dropped = [], set()
    for spec in specs:
        try:
            local, skipped = local_only(spec)
        except SpecError:
            dropped.update(spec.devices)
            continue
        dropped.update(skipped)
        kept.append(local)
    for d in sorted(dropped):
        err.print(f"[yellow]warning:[/] skipping device {d!r}: this machine has none (embedded farm)")
    if not kept:
        raise SpecError("devices", "no point of the sweep has a device this machine has, and no FARM_REDIS_URL is set")
    return kept


@app.command()
@handles_errors
def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep file (YAML/JSON): spec fields, `grid:`, `name:`.")],
    wait: bool = typer.Option(False, "--wait", help="Follow the run until every job has a result."),
    json_out: bool = typer.Option(False, "--json", help="With --wait: print {run_id, results} as JSON."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the points (--json: as JSON); submit nothing."),
    strict: Strict = False,
    max_memory: MaxMemory = None,
    nightly: bool = typer.Option(False, "--nightly", help="Run id <name>-<YYYYMMDD>: a night runs once."),
    date: str | None = typer.Option(None, "--date", help="With --nightly: the night (default today, UTC)."),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up after this many seconds."),
) -> None:
    """Validate a sweep, show its job count, and submit every valid point as one run."""
    from farm.nightly.sweep import nightly_run_id
    from farm.reports.cells import fmt_bytes

    sw = _load(file, max_memory, strict)
    if dry_run:
        if json_out:
            points = [{"index": p.index, "params": p.params, "ok": p.ok, "error": p.error, "dropped": p.dropped,
                       "devices": list(p.spec.devices) if p.spec else [], "predicted_bytes": p.predicted_bytes}
                      for p in sw.points]  # fmt: skip
            print(json.dumps({"name": sw.name, "jobs": sw.job_count(), "points": points}, indent=2))
            return
        wild = " (a wildcard tag counted once)" if any(d.endswith(":*") for s in sw.specs for d in s.devices) else ""
        t = Table(title=f"sweep {sw.name}: {len(sw.specs)} of {len(sw.points)} points, {sw.job_count()} jobs{wild}")
        for col in ["#", *sw.grid, "devices", "predicted peak", "status"]:
            t.add_column(col)
        for p in sw.points:
            status = "[green]ok[/]" if p.ok else f"[red]skipped[/]: {escape(p.error or '')}"
            if p.dropped:
                status += f" ([yellow]dropped[/] {escape(', '.join(d.split(': ')[0] for d in p.dropped))})"
            devices = ",".join(p.spec.devices) if p.spec else "-"
            params = (escape(str(v)) for v in p.params.values())
            t.add_row(str(p.index), *params, devices, fmt_bytes(p.predicted_bytes), status)
        out.print(t)
        return
    from farm.cluster import embedded
    from farm.cluster.controller import submit
    from farm.nightly.sweep import resolve_wildcards

    specs = sw.specs
    settings = get_settings()
    if embedded.is_embedded(settings):
        specs = _local_points(specs)
        if not embedded.running_url(settings):
            err.print("starting the embedded farm (redis-server and local workers; `farm down` stops them)")
        embedded.resolve_redis_url(settings, start=True)
    specs, notes = resolve_wildcards(specs)
    for line in notes:
        err.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    run_id = nightly_run_id(sw.name, _parse_date(date, "date")) if nightly else None
    sub = submit(specs, run_id=run_id, name=sw.name, tags={"sweep": sw.name})
    verb = "submitted" if sub.created else "already exists (nothing enqueued)"
    err.print(f"run {sub.run_id} {verb}: {len(sub.jobs)} jobs from {len(specs)} points", highlight=False)
    if sub.unserved:
        err.print(f"[yellow]warning[/]: no live worker serves {', '.join(sub.unserved)}")
    if wait:
        _follow(sub.run_id, json_out, timeout)
    elif json_out:
        print(json.dumps({"run_id": sub.run_id, "created": sub.created, "jobs": [j.job_id for j in sub.jobs]}))
    else:
        out.print(sub.run_id)


@schedule_app.command("add")
@handles_errors
def schedule_add(
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    sweep_file: Path = typer.Option(..., "--sweep", help="Sweep file; its content is stored with the schedule."),
    cron: str | None = typer.Option(None, "--cron", help='5-field cron in UTC, e.g. "0 2 * * *".'),
    every: float | None = typer.Option(None, "--every", help="Or an interval in seconds."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a schedule of that name."),
    strict: Strict = False,
    max_memory: MaxMemory = None,
) -> None:
    """Add (or with --replace, update) a schedule."""
    from farm.nightly.schedule import ScheduleBook

    sw = _load(sweep_file, max_memory, strict)
    s = ScheduleBook().add(name, sw, cron=cron, every_s=every, source=str(sweep_file), replace=replace)
    out.print(f"schedule {s.name}: {s.when}, sweep {sw.name} ({len(sw.specs)} points, {sw.job_count()} jobs)")


@schedule_app.command("list")
@handles_errors
def schedule_list(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List schedules with their next firing and last run."""
    from farm.nightly.schedule import ScheduleBook

    book = ScheduleBook()
    rows = [(s, (book.fires(s.name, 1) or [None])[0]) for s in book.all()]
    if json_out:
        docs = [
            {**s.__dict__, "next_at": s.next_at.isoformat() if s.next_at else None, "last": last} for s, last in rows
        ]
        print(json.dumps(docs, indent=2))
        return
    t = Table(title=f"{len(rows)} schedules")
    for col in ("name", "when", "sweep", "source", "next (UTC)", "last run"):
        t.add_column(col)
    for s, last in rows:
        # redbeat's estimate can land a fraction of a second early: show it to the nearest second.
        nxt = f"{(s.next_at + timedelta(seconds=0.5)).astimezone(UTC):%Y-%m-%d %H:%M:%S}" if s.next_at else "-"
        last_run = "-"
        if last and last.get("error"):
            last_run = f"[red]failed[/]: {last['error'][:60]}"
        elif last:
            last_run = f"{last['run_id']}{'' if last['created'] else ' (existing)'}"
        t.add_row(s.name, s.when, s.sweep_name, s.source, nxt, last_run)
    out.print(t)


@schedule_app.command("remove")
@handles_errors
def schedule_remove(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Remove a schedule (runs it already made are kept)."""
    from farm.nightly.schedule import ScheduleBook

    ScheduleBook().remove(name)
    out.print(f"schedule {name} removed")


@schedule_app.command("run")
@handles_errors
def schedule_run(
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    fresh: bool = typer.Option(False, "--fresh", help="A new run even if this night's run exists."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run."),
    json_out: bool = typer.Option(False, "--json", help="With --wait: print {run_id, results}."),
) -> None:
    """Fire a schedule now, as `farm beat` would (tonight's run id: a second firing adds nothing)."""
    from farm.nightly.schedule import fire

    f = fire(name, fresh=fresh)
    verb = "submitted" if f.created else "already exists (nothing enqueued; --fresh for a new run)"
    err.print(f"run {f.run_id} {verb}: {f.jobs} jobs", highlight=False)
    for line in f.skipped:
        err.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    if f.unserved:
        err.print(f"[yellow]warning[/]: no live worker serves {', '.join(f.unserved)}")
    if wait:
        _follow(f.run_id, json_out, None)
    else:
        out.print(f.run_id)


@app.command()
@handles_errors
def beat(
    max_interval: float = typer.Option(30.0, "--max-interval", help="Longest sleep between checks (s)."),
    loglevel: str = typer.Option("info", "--loglevel", help="Celery log level."),
) -> None:
    """Fire schedules: Celery beat with the celery-redbeat scheduler (one active beat per farm)."""
    from farm.nightly.schedule import run_beat

    run_beat(get_settings(), max_interval=max_interval, loglevel=loglevel)


def _verdict_table(verdicts: list, title: str) -> Table:
    from farm.cli.render import fmt_seconds

    t = Table(title=title)
    for col in ("kind", "machine", "device", "model", "spec", "phase", "new", "baseline", "change", "z", "p", "conf."):
        t.add_column(col)
    style = {"regression": "bold red", "improvement": "green", "no-verdict": "dim"}
    for v in verdicts:
        t.add_row(
            f"[{style[v.kind]}]{v.kind}[/]" if v.kind in style else v.kind,
            v.machine,
            v.device,
            v.model,
            v.spec_hash,
            v.phase,
            fmt_seconds(v.new_s),
            fmt_seconds(v.baseline_s),
            f"{v.change:+.1%}" if v.change is not None else "-",
            f"{v.robust_z:.1f}" if v.robust_z is not None else "-",
            f"{v.p_value:.2g}" if v.p_value is not None else "-",
            f"{v.confidence:.2%}" if v.confidence is not None else "-",
        )
    return t


def _notify(verdicts: list, notify: bool) -> None:
    from farm.nightly.webhook import notify as post

    for d in post(get_settings().webhook_url if notify else None, verdicts):
        if not d.ok:
            err.print(f"[yellow]webhook[/] {d.job_id} {d.phase}: {d.detail}", highlight=False)


@app.command()
@handles_errors
def regressions(
    since: str | None = typer.Option(
        None, "--since", help="Judge every result since then (ISO date/time, UTC, or 12h, 7d), not only the newest."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
    show_all: bool = typer.Option(False, "--all", help="Also list unchanged series and those without a verdict."),
    notify: bool = typer.Option(True, "--notify/--no-notify", help="POST each regression to FARM_WEBHOOK_URL."),
    html: Path | None = typer.Option(None, "--html", help="Also write a history page (per-night plots)."),
    machine: list[str] | None = typer.Option(None, "--machine", help="Only this machine tag (repeatable)."),
    device: list[str] | None = typer.Option(None, "--device", help="Only this device tag (repeatable)."),
) -> None:
    """Regressions and improvements: each series' newest result against its history."""
    from farm.cluster.controller import store_for
    from farm.nightly.regress import changes, detect
    from farm.reports.report import parse_when

    results = store_for().query(machines=machine or (), devices=device or ())
    verdicts = detect(results, since=parse_when(since, "since"))
    shown = verdicts if show_all else changes(verdicts)
    if json_out:
        print(json.dumps([v.model_dump(mode="json") for v in shown], indent=2))
    else:
        n_reg = sum(v.kind == "regression" for v in verdicts)
        out.print(_verdict_table(shown, f"{n_reg} regressions in {len(verdicts)} judged series points"))
    if html is not None:
        from farm.reports.history import write_page

        write_page(html, results)  # every point judged, so each night's verdict is marked
        err.print(f"history page: {html}")
    _notify(verdicts, notify)


@app.command()
@handles_errors
def check(
    run_id: Annotated[str, typer.Argument(help="The run to judge against history.")],
    json_out: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
    notify: bool = typer.Option(True, "--notify/--no-notify", help="POST each regression to FARM_WEBHOOK_URL."),
) -> None:
    """Exit 1 when any result of the run regressed (for CI gating); 4 when the run does not exist."""
    from farm.cluster.controller import store_for
    from farm.nightly.regress import check_run

    store = store_for()
    run = store.get_run(run_id)
    verdicts = check_run(store.query(), run_id)
    if json_out:
        print(json.dumps({"run_id": run_id, "verdicts": [v.model_dump(mode="json") for v in verdicts]}, indent=2))
    else:
        jobs = f"{len(run['jobs'])} jobs, " if run["jobs"] else ""
        out.print(_verdict_table(verdicts, f"run {run_id}: {jobs}{len(verdicts)} phase results judged"))
    _notify(verdicts, notify)
    regressed = [v for v in verdicts if v.kind == "regression"]
    if regressed:
        err.print(f"[bold red]{len(regressed)} regression(s)[/] in run {run_id}")
        raise typer.Exit(EXIT_JOB_FAILED)
