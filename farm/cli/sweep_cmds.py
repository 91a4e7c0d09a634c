"""Sweeps, schedules and regressions: sweep, schedule, beat, regressions, check.

Plain functions; `farm.cli.main` registers them on the app and maps their errors."""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from farm.cli import options as o
from farm.cli import sweep_plan
from farm.cli.farm_cmds import UNSERVED_AFTER_S, UnservedAfter, await_workers
from farm.cli.follow import follow_and_print, say_unserved
from farm.cli.lazy import lazy_module
from farm.cli.output import EXIT_JOB_FAILED, Format, JsonAlias, Output, emit, err, fmt_of, note, warn, write
from farm.dates import parse_when

if TYPE_CHECKING:
    from farm import settings as farm_settings
    from farm.cluster import controller, embedded
    from farm.nightly import regress, schedule, webhook
    from farm.nightly import sweep as sweep_lib
    from farm.nightly.regress import Verdict
    from farm.nightly.sweep import Sweep
    from farm.reports import cells, listing
    from farm.reports.listing import Listing
else:  # run on first use (farm.cli.lazy): scipy (the regressions), celery, redbeat, redis, the store
    controller = lazy_module("farm.cluster.controller")
    embedded = lazy_module("farm.cluster.embedded")
    regress = lazy_module("farm.nightly.regress")
    schedule = lazy_module("farm.nightly.schedule")
    sweep_lib = lazy_module("farm.nightly.sweep")
    webhook = lazy_module("farm.nightly.webhook")
    cells = lazy_module("farm.reports.cells")
    listing = lazy_module("farm.reports.listing")
    farm_settings = lazy_module("farm.settings")

MaxMemory = Annotated[str | None, typer.Option("--max-memory", help="Skip points predicted above this, e.g. 16GiB.")]
Strict = Annotated[bool, typer.Option("--strict", help="Refuse the sweep if any point is invalid or skipped.")]


def _load(file: Path, max_memory: str | None, strict: bool) -> Sweep:
    sweep = sweep_lib.load_sweep(
        file, max_memory=sweep_lib.parse_bytes(max_memory) if max_memory else None, strict=strict
    )
    for line in sweep.problems:
        err.print(Text.assemble(("skipped", "yellow"), f" {line}"), highlight=False)
    return sweep


def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep file (YAML/JSON): spec fields, `grid:`, `name:`.")],
    wait: bool = typer.Option(False, "--wait", help="Follow the run until every job has a result."),
    json_out: JsonAlias = False,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show the points and the jobs and queues they would make; submit nothing."
    ),
    tag: o.Tag = None,
    name: o.Name = None,
    strict: Strict = False,
    max_memory: MaxMemory = None,
    nightly: bool = typer.Option(False, "--nightly", help="Run id <name>-<YYYYMMDD>: a night runs once."),
    date: str | None = typer.Option(None, "--date", help="With --nightly: the night (default today, UTC)."),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up after this many seconds."),
    unserved_after: UnservedAfter = UNSERVED_AFTER_S,
    skip_unserved: bool = typer.Option(
        False, "--skip-unserved", help="With --wait: cancel jobs no live worker serves instead of exiting 5."
    ),
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Validate a sweep, show its job count, and submit every valid point as one run (named --name,
    else the sweep's name)."""
    fmt = fmt_of(fmt, output, json_out)
    tags = o.parse_tags(tag)
    sw = _load(file, max_memory, strict)
    settings = farm_settings.get_settings()
    if dry_run:
        sweep_plan.dry_run(sw, sweep_lib.with_tags(sw.specs, tags), settings, fmt, output)
        return
    specs, skipped, _ = embedded.ensure_local(sweep_lib.with_tags(sw.specs, tags), settings, say=note)
    specs, notes = sweep_lib.resolve_wildcards(specs)
    for line in notes:
        err.print(Text.assemble(("skipped", "yellow"), f" {line}"), highlight=False)
    run_id = sweep_lib.nightly_run_id(sw.name, parse_when(date, "date")) if nightly else None
    sub = controller.submit(
        specs, run_id=run_id, name=name or sw.name, tags={"sweep": sw.name, **(tags or {})}, skipped=skipped
    )
    verb = "submitted" if sub.created else "already exists (nothing enqueued)"
    note(f"run {sub.run_id} {verb}: {len(sub.jobs)} jobs from {len(specs)} points")
    if wait:
        await_workers(sub.run_id, unserved_after, settings)
        follow_and_print(sub.run_id, fmt, output, timeout=timeout, skip_unserved=skip_unserved)
        return
    say_unserved(sub.run_id, [(j.job_id, j.device, j.queue) for j in sub.jobs if j.queue in sub.unserved])
    if fmt == "json":
        write(
            json.dumps({"run_id": sub.run_id, "created": sub.created, "jobs": [j.job_id for j in sub.jobs]}),
            output,
            fmt,
        )
    else:
        write(sub.run_id, output, fmt)


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
    sw = _load(sweep_file, max_memory, strict)
    s = schedule.ScheduleBook().add(name, sw, cron=cron, every_s=every, source=str(sweep_file), replace=replace)
    write(
        f"schedule {s.name}: {s.when}, sweep {sw.name} ({len(sw.specs)} points, {sw.job_count()} jobs)",
        None,
        "terminal",
    )


def schedule_list(json_out: JsonAlias = False, fmt: Format = None, output: Output = None) -> None:
    """List schedules with their next firing and last run."""
    book = schedule.ScheduleBook()
    rows = [(s, next(iter(book.fires(s.name, 1)), None)) for s in book.all()]
    docs = [{**s.__dict__, "next_at": s.next_at.isoformat() if s.next_at else None, "last": last} for s, last in rows]
    lst = listing.Listing(
        f"{len(rows)} schedules", ["name", "when", "sweep", "source", "next (UTC)", "last run"], doc=docs
    )
    for s, last in rows:
        # redbeat's estimate can land a fraction of a second early: show it to the nearest second.
        nxt = f"{(s.next_at + timedelta(seconds=0.5)).astimezone(UTC):%Y-%m-%d %H:%M:%S}" if s.next_at else None
        last_run, status = None, None
        if last and last.get("error"):
            last_run, status = f"failed: {last['error'][:60]}", "failed"
        elif last:
            last_run = f"{last['run_id']}{'' if last['created'] else ' (existing)'}"
        lst.add(s.name, s.when, s.sweep_name, s.source, nxt, last_run, status=status)
    emit(lst, fmt_of(fmt, output, json_out), output)


def schedule_remove(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Remove a schedule (runs it already made are kept)."""
    schedule.ScheduleBook().remove(name)
    write(f"schedule {name} removed", None, "terminal")


def schedule_run(
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    fresh: bool = typer.Option(False, "--fresh", help="A new run even if this night's run exists."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run."),
    json_out: bool = typer.Option(False, "--json", help="With --wait: print {run_id, results}."),
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Fire a schedule now, as `farm beat` would (tonight's run id: a second firing adds nothing)."""
    fmt = fmt_of(fmt, output, json_out)
    f = schedule.fire(name, fresh=fresh)
    verb = "submitted" if f.created else "already exists (nothing enqueued; --fresh for a new run)"
    note(f"run {f.run_id} {verb}: {f.jobs} jobs")
    for line in f.skipped:
        err.print(Text.assemble(("skipped", "yellow"), f" {line}"), highlight=False)
    if f.unserved:
        warn(f"no live worker serves {', '.join(f.unserved)}")
    if wait:
        follow_and_print(f.run_id, fmt, output)
    else:
        write(f.run_id, output, fmt)


def beat(
    max_interval: float = typer.Option(30.0, "--max-interval", help="Longest sleep between checks (s)."),
    loglevel: str = typer.Option("info", "--loglevel", help="Celery log level."),
) -> None:
    """Fire schedules: Celery beat with the celery-redbeat scheduler (one active beat per farm)."""
    schedule.run_beat(farm_settings.get_settings(), max_interval=max_interval, loglevel=loglevel)


# farm.nightly.regress.RegressConfig.max_threshold in percent, shown in --help without importing scipy
# for it (tests/test_regress_cli.py checks that the two agree).
MAX_THRESHOLD_PCT = 10.0
MaxThreshold = Annotated[
    float,
    typer.Option(
        "--max-threshold",
        min=0.1,
        max=1000.0,
        help="Percent: a series whose threshold (the change a verdict needs at its spread) is above this "
        "is reported too-noisy (too noisy to gate), not unchanged.",
    ),
]
# How each kind is counted in a title, in this order.
_KIND_WORDS = {
    "regression": "regression(s)",
    "improvement": "improvement(s)",
    "suspect": "suspect (disturbed: the next clean night decides)",
    "unchanged": "unchanged",
    "too-noisy": "too noisy to gate",
    "no-verdict": "without a verdict",
}


def _tally(verdicts: list[Verdict], kinds: tuple[str, ...] = tuple(_KIND_WORDS)) -> str:
    """ "1 regression(s), 2 suspect (...), 3 unchanged": the kinds present among `kinds`."""
    n = regress.counts(verdicts)
    return ", ".join(f"{n[k]} {_KIND_WORDS[k]}" for k in kinds if n.get(k))


MAX_REMARKS = 10  # per table: the verdicts explained below it (the rest: --json)


def _verdicts(
    verdicts: list[Verdict], title: str, doc: Any, max_threshold: float, explained: tuple[str, ...] = ()
) -> Listing:
    """The verdict table: each verdict with the change it needed (`needs`; no confidence beside
    unchanged), and below it, one line per verdict that has more to say than that (a suspect, a
    too-noisy series, no verdict, except the kinds in `explained`: `check` prints those on stderr;
    a clean night that confirms or clears suspects; a change the rank test did not confirm)."""
    lst = listing.Listing(
        title,
        ["kind", "machine", "device", "model", "spec", "phase", "new", "baseline", "change", "needs", "p"],
        doc=doc,
    )
    remarks = []
    for v in verdicts:
        lst.add(
            v.kind,
            v.machine,
            v.device,
            v.model,
            v.spec_hash,
            v.phase,
            cells.fmt_seconds(v.new_s),
            cells.fmt_seconds(v.baseline_s),
            f"{v.change:+.1%}" if v.change is not None else None,
            regress.fmt_needed(v.needed) if v.needed is not None else None,
            f"{v.p_value:.2g}" if v.p_value is not None else None,
            status=v.kind,
        )
        undecided = v.kind in regress.UNDECIDED and v.kind not in explained
        if undecided or v.resolves or "rank test p=" in v.reason:
            remarks.append(f"{v.kind}: {v.machine} {v.device} {v.model} {v.phase} ({v.run_id}): {v.reason}")
    if any(v.needed is not None for v in verdicts):
        lst.notes.append(
            "needs: the change a verdict needs at the series' spread (4 x spread, at least 5%); a series that "
            f"needs more than {max_threshold:.1%} is too noisy to gate (--max-threshold)"
        )
    lst.notes += remarks[:MAX_REMARKS]
    if len(remarks) > MAX_REMARKS:
        lst.notes.append(f"{len(remarks) - MAX_REMARKS} more verdicts with remarks: --json has every reason")
    return lst


def _notify(verdicts: list[Verdict], notify: bool) -> None:
    for d in webhook.notify(farm_settings.get_settings().webhook_url if notify else None, verdicts):
        if not d.ok:
            err.print(Text.assemble(("webhook", "yellow"), f" {d.job_id} {d.phase}: {d.detail}"), highlight=False)


def regressions(
    since: str | None = typer.Option(
        None, "--since", help="Judge every result since then (ISO date/time, UTC, or 12h, 7d), not only the newest."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
    show_all: bool = typer.Option(False, "--all", help="Also list unchanged series and those without a verdict."),
    notify: bool = typer.Option(True, "--notify/--no-notify", help="POST each regression to FARM_WEBHOOK_URL."),
    html: Path | None = typer.Option(None, "--html", help="Also write a history page (per-night plots)."),
    machine: o.Machine = None,
    device: o.Device = None,
    model: o.ModelSel = None,
    until: Annotated[
        str | None, typer.Option(help="Judge as of then: results finished later are left out (ISO or 12h, 7d).")
    ] = None,
    max_threshold: MaxThreshold = MAX_THRESHOLD_PCT,
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Regressions and improvements: each series' newest result against its clean history. A result
    flagged contended, outlier, drift (or throttled on a GPU) is `suspect`, listed and counted apart:
    the series' next clean night confirms or clears it (docs/sweeps.md)."""
    sel = o.selection((), machine, device, model, None, None, until)
    store = controller.store_for()
    results = store.get_results(sel.query_ids(store))
    cfg = regress.RegressConfig(max_threshold=max_threshold / 100)
    verdicts = regress.detect(results, since=parse_when(since, "since"), cfg=cfg)
    shown = verdicts if show_all else [v for v in verdicts if v.kind in ("regression", "improvement", "suspect")]
    n_reg = sum(v.kind == "regression" for v in verdicts)
    doc = [v.model_dump(mode="json") for v in shown]
    apart = _tally(verdicts, ("suspect", "too-noisy"))
    title = f"{n_reg} regressions in {len(verdicts)} judged series points" + (f"; {apart}" if apart else "")
    emit(_verdicts(shown, title, doc, cfg.max_threshold), fmt_of(fmt, output, json_out), output)
    if html is not None:
        # farm.reports.history draws with matplotlib: imported only for --html.
        from farm.reports.history import write_page

        write_page(html, results)  # every point judged, so each night's verdict is marked
        note(f"history page: {html}")
    _notify(verdicts, notify)


EXIT_NO_VERDICT = 6  # `check --require-verdict`: some result could not be judged (farm.cli.main's table)
# What `check` says on stderr of a result it did not judge, and the short reason a summary counts.
_UNDECIDED = {
    "suspect": ("suspect", lambda v: ", ".join(v.flags)),
    "too-noisy": ("too noisy", lambda v: "threshold above the bound"),
    "no-verdict": ("no verdict", lambda v: v.reason),
}


def _why_no_verdict(run_id: str, verdicts: list[Verdict]) -> list[tuple[str, str]]:
    """(label, line) for each result `check` did not judge: `suspect` (disturbed: the next clean night
    confirms or clears it), `too noisy` (threshold above --max-threshold), `no verdict` (too little
    history); one line per series, a count per reason past ten of a kind; [] when every phase result
    was judged."""
    if not verdicts:
        return [("no verdict", f"run {run_id} has no measured phase results to judge")]
    lines: list[tuple[str, str]] = []
    for kind, (label, short) in _UNDECIDED.items():
        these = [v for v in verdicts if v.kind == kind]
        if len(these) <= 10:
            lines += [(label, f"{v.machine} {v.device} {v.model} {v.phase} (spec {v.spec_hash}): {v.reason}")
                      for v in these]  # fmt: skip
            continue
        reasons: dict[str, int] = {}
        for v in these:
            reasons[short(v)] = reasons.get(short(v), 0) + 1
        lines.append((label, f"{len(these)} of {len(verdicts)} series: " + "; ".join(
            f"{reason} ({n})" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))))  # fmt: skip
    return lines


def check(
    run_id: Annotated[str, typer.Argument(help="The run to judge against history ('latest' for the newest run).")],
    json_out: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
    notify: bool = typer.Option(True, "--notify/--no-notify", help="POST each regression to FARM_WEBHOOK_URL."),
    require_verdict: bool = typer.Option(
        False,
        "--require-verdict",
        help=f"Exit {EXIT_NO_VERDICT} when any phase result of the run cannot be judged (too little history, "
        "nothing measured, suspect: measured while disturbed, too noisy to gate): a CI gate that never passes blind.",
    ),
    max_threshold: MaxThreshold = MAX_THRESHOLD_PCT,
    machine: o.Machine = None,
    device: o.Device = None,
    model: o.ModelSel = None,
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Judge a run against history (for CI gating): exit 1 when a result regressed, 4 when the run does not
    exist; with --require-verdict, 6 when a result could not be judged (why is printed on stderr either way).

    A result flagged contended, outlier, drift (or throttled on a GPU) raises no regression on its own:
    it is `suspect`, and the series' next clean night confirms or clears it. Every verdict says the
    change it needed; a series that needs more than --max-threshold is too noisy to gate."""
    store = controller.store_for()
    run_id = store.resolve_run(run_id)
    run = store.get_run(run_id)
    sel = o.selection((), machine, device, model)
    cfg = regress.RegressConfig(max_threshold=max_threshold / 100)
    verdicts = regress.check_run(store.get_results(sel.query_ids(store)), run_id, cfg)
    doc = {
        "run_id": run_id,
        "counts": regress.counts(verdicts),
        "verdicts": [v.model_dump(mode="json") for v in verdicts],
    }
    jobs = f"{len(run['jobs'])} jobs, " if run["jobs"] else ""
    label = f"{run_id} ({run['name']})" if run.get("name") else run_id
    tally = _tally(verdicts)
    title = f"run {label}: {jobs}{len(verdicts)} phase results judged" + (f": {tally}" if tally else "")
    lst = _verdicts(verdicts, title, doc, cfg.max_threshold, explained=regress.UNDECIDED)  # those: on stderr
    emit(lst, fmt_of(fmt, output, json_out), output)
    _notify(verdicts, notify)  # regressions only: a suspect pages nobody
    why = _why_no_verdict(run_id, verdicts)
    for kind_label, line in why:
        warn(line, label=kind_label)
    regressed = [v for v in verdicts if v.kind == "regression"]
    if regressed:
        err.print(Text.assemble((f"{len(regressed)} regression(s)", "bold red"), f" in run {run_id}"))
        raise typer.Exit(EXIT_JOB_FAILED)
    if why and require_verdict:
        undecided = sum(v.kind in regress.UNDECIDED for v in verdicts)
        err.print(
            Text.assemble(
                (f"no verdict for {undecided} of {len(verdicts)} phase results", "yellow"),
                " (--require-verdict: suspect and too-noisy count as no verdict)",
            ),
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_NO_VERDICT)
