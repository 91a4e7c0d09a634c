"""The farm: submit, status, workers, results, cancel, worker, up, down (thin over farm.cluster).

Plain functions; `farm.cli.main` registers them on the app and maps their errors."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from farm.cli import options as o
from farm.cli.follow import follow, follow_and_print, say_unserved
from farm.cli.lazy import lazy_module
from farm.cli.output import (
    EXIT_JOB_FAILED,
    Format,
    JsonAlias,
    Output,
    emit,
    emit_results,
    err,
    fmt_of,
    note,
    out,
    warn,
    write,
)
from farm.errors import NotFoundError, SpecError
from farm.spec import BenchSpec

if TYPE_CHECKING:
    from farm import settings as farm_settings
    from farm.cluster import controller, embedded
    from farm.cluster.controller import JobView
    from farm.reports import listing
    from farm.reports import report as report_lib
    from farm.reports.listing import Listing
    from farm.results.result import JobResult
    from farm.settings import Settings
else:  # run on first use (farm.cli.lazy): celery, redis, the store, numpy
    controller = lazy_module("farm.cluster.controller")
    embedded = lazy_module("farm.cluster.embedded")
    listing = lazy_module("farm.reports.listing")
    report_lib = lazy_module("farm.reports.report")
    farm_settings = lazy_module("farm.settings")

# farm.cluster.controller.UNSERVED_AFTER_S, the default shown in --help, without importing celery
# for it (tests/test_cli_startup.py checks that the two agree).
UNSERVED_AFTER_S = 60.0

UnservedAfter = Annotated[
    float,
    typer.Option(
        "--unserved-after",
        min=0,
        envvar="FARM_UNSERVED_AFTER",
        help="With --wait: seconds to wait for a worker to serve each queue before a job counts as unserved.",
    ),
]


def submit(
    spec_file: o.SpecFile = None,
    model: o.Model = None,
    phases: o.Phases = None,
    devices: o.Devices = None,
    batch: o.Batch = None,
    seq: o.Seq = None,
    gen_tokens: o.GenTokens = None,
    world_size: o.WorldSize = None,
    repeats: o.Repeats = None,
    warmup: o.Warmup = None,
    dtype: o.DType = None,
    precision_mode: o.PrecisionMode = None,
    matmul_precision: o.MatmulPrecision = None,
    threads: o.Threads = None,
    compile: o.Compile = None,
    optimizer: o.Optimizer = None,
    seed: o.Seed = None,
    time_limit: o.TimeLimit = None,
    checkpoint: o.Checkpoint = None,
    tag: o.Tag = None,
    name: o.Name = None,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Validate, expand devices against the live workers (if Redis answers), print the jobs and "
        "queues that would be queued; queue nothing (never starts the embedded farm).",
    ),
    wait_: bool = typer.Option(False, "--wait", help="Follow the run until every servable job ends."),
    json_out: bool = typer.Option(
        False, "--json", help='Print JSON (with --wait: {"run_id", "results", "skipped_devices"}).'
    ),
    skip_unserved: bool = typer.Option(
        False, "--skip-unserved", help="With --wait: cancel jobs no live worker serves instead of exiting 5."
    ),
    timeout: float | None = typer.Option(None, help="With --wait: give up after this many seconds."),
    unserved_after: UnservedAfter = UNSERVED_AFTER_S,
    fmt: Format = None,
    output: Output = None,
) -> None:
    spec = o.build_spec(spec_file, **o.spec_options(locals()))
    fmt_name = fmt_of(fmt, output, json_out)
    settings = farm_settings.get_settings()
    if dry_run:
        emit(_plan_listing(_dry_run_plan(spec, settings)), fmt_name, output)
        return
    (spec,), skipped, _ = embedded.ensure_local([spec], settings, say=note)
    sub = controller.submit(spec, name=name, tags=spec.tags or None, settings=settings, skipped=skipped)
    note(f"run {sub.run_id}: {len(sub.jobs)} job(s) queued")
    if wait_:
        await_workers(sub.run_id, unserved_after, settings)
    else:
        say_unserved(sub.run_id, [(j.job_id, j.device, j.queue) for j in sub.jobs if j.queue in sub.unserved])
    if wait_:
        follow_and_print(sub.run_id, fmt_name, output, settings=settings, timeout=timeout, skip_unserved=skip_unserved)
    elif fmt_name == "json":
        doc = {"run_id": sub.run_id, "jobs": [j.job_id for j in sub.jobs], "unserved": sub.unserved}
        write(json.dumps(doc), output, fmt_name)
    else:
        write(sub.run_id, output, fmt_name)


submit.__doc__ = f"""Queue a benchmark on the farm (one job per device); with --wait, follow it and print the results.

{o.DEFAULTS_LINE}"""


def _dry_run_plan(spec: BenchSpec, settings: Settings) -> controller.Plan:
    """The plan of `submit --dry-run`: with the embedded default, only this machine's devices (as submit)."""
    if embedded.is_embedded(settings):
        spec, skipped = embedded.local_only(spec, embedded.live_tags(settings))
        for d in skipped:
            warn(f"skipping device {d.device!r}: {d.reason} (embedded farm)")
    return controller.plan(spec, settings=settings)


def _plan_listing(plan: controller.Plan) -> Listing:
    """The jobs a dry run would queue, one row each, with whether a live worker serves its queue."""
    queues = list(dict.fromkeys(j.queue for j in plan.jobs))
    seen = "live workers unknown" if plan.workers is None else f"{plan.workers} live worker(s)"
    doc = {
        "dry_run": True,
        "jobs": [{"job_id": j.job_id, "device": j.device, "queue": j.queue, "spec": j.spec.model_dump(mode="json")}
                 for j in plan.jobs],
        "queues": queues,
        "unserved": plan.unserved,
        "live_workers": plan.workers,
        "notes": plan.notes,
    }  # fmt: skip
    lst = listing.Listing(
        f"dry run: {len(plan.jobs)} job(s) on queue(s) {', '.join(queues)}; {seen}; nothing queued",
        ["job", "device", "queue", "model", "batch x seq", "dtype", "phases", "repeats", "served"],
        doc=doc,
        notes=list(plan.notes),
    )
    for j in plan.jobs:
        served = None if plan.workers is None else ("no live worker" if j.queue in plan.unserved else "yes")
        sp = j.spec
        lst.add(
            j.job_id, j.device, j.queue, sp.model_name, f"{sp.batch} x {sp.seq}", sp.dtype, ",".join(sp.phases),
            f"{sp.warmup} + {sp.repeats}", served, status="unserved" if served == "no live worker" else None,
        )  # fmt: skip
    return lst


def await_workers(run_id: str, unserved_after: float, settings: Settings | None = None) -> list[str]:
    """Before following a run: give workers that are still starting `unserved_after` s to serve its queues."""

    def say(queues: list[str], left: float) -> None:
        note(f"waiting up to {left:.0f} s for a live worker on queue(s) {', '.join(queues)}")

    left = controller.await_service(run_id, unserved_after=unserved_after, settings=settings, on_waiting=say)
    for q in left:
        warn(f"no live worker serves queue {q!r} after {unserved_after:g} s")
    return left


def _status_listing(run_id: str, views: list[JobView], name: str = "") -> Listing:
    counts: dict[str, int] = {}
    for v in views:
        key = "unserved" if v.unserved else v.state
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    doc = {"run_id": run_id, "name": name or None, "jobs": [v.__dict__ for v in views]}
    lst = listing.Listing(
        f"run {run_id}{f' ({name})' if name else ''}: {summary}",
        ["job", "device", "queue", "state", "worker", "progress", "attempts", "result"],
        doc=doc,
    )
    for v in views:
        state = "unserved" if v.unserved else v.state
        prog = f"{v.phase} {v.done}/{v.total}" if v.phase else None
        lst.add(
            v.job_id, v.device, v.queue, state, v.worker or None, prog, v.attempts, v.status, status=v.status or state
        )
    return lst


def status(
    run: str = typer.Argument("latest", help="Run id, or 'latest' (the default): the newest run."),
    watch: bool = typer.Option(False, "--watch", help="Follow the run with progress bars until it ends."),
    fmt: Format = None,
    output: Output = None,
    json_out: JsonAlias = False,
) -> None:
    """Jobs of a run by state (queued, running, done, cancelled, unserved) and their progress."""
    store = controller.store_for()
    run_id = store.resolve_run(run)
    if watch:
        follow(run_id)
    name = store.get_run(run_id).get("name") or ""  # NotFoundError (exit 4) for an unknown run
    emit(_status_listing(run_id, controller.job_views(run_id, store), name), fmt_of(fmt, output, json_out), output)


def workers(
    json_out: bool = typer.Option(False, "--json", help="Print the live workers as JSON."),
    check_host: str | None = typer.Option(
        None, "--check-host", help="Exit 0 only if a live worker runs on HOST (container health check)."
    ),
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Live workers (heartbeat not expired): tags, queues and the job each runs now."""
    live = controller.live_workers()
    if check_host is not None:
        host = check_host.lower()
        if not any(host in (w["host"].lower(), w["machine"].lower()) for w in live):
            err.print(f"no live worker on host {check_host!r}", markup=False)
            raise typer.Exit(EXIT_JOB_FAILED)
        return
    # Times as ISO 8601 (UTC), like results; the table says how long ago.
    doc = [{**w, "started_at": _iso(w["started_at"]), "last_heartbeat": _iso(w["last_heartbeat"])} for w in live]
    lst = listing.Listing(
        f"{len(live)} live worker(s)", ["name", "host", "device", "tags", "queues", "job", "last beat"], doc=doc
    )
    now = time.time()
    for w in live:
        beat = f"{now - w['last_heartbeat']:.0f} s ago"
        lst.add(w["name"], w["host"], w["device"], ",".join(w["tags"]), ",".join(w["queues"]), w["job"] or "idle", beat)
    fmt = fmt_of(fmt, output, json_out)
    emit(lst, fmt, output)
    if fmt == "terminal" and output is None:
        note(_farm_line())


def _farm_line() -> str:
    """Where this farm is and how a second worker joins it (its URL, a password masked): the
    two-machine workflow without reading `embedded.json`."""
    settings = farm_settings.get_settings()
    url = embedded.resolve_redis_url(settings)
    source = "FARM_REDIS_URL" if settings.broker() else "the embedded farm (`farm up`)"
    shown = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)  # redis://user:secret@host -> user:***@host
    return (
        f"farm: {shown}, from {source}; another worker joins it with FARM_REDIS_URL={shown} farm worker --machine NAME"
    )


def _iso(epoch: float) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch else None


def results(
    runs: o.Runs = None,
    run: o.RunOpt = None,
    machine: o.Machine = None,
    device: o.Device = None,
    model: o.ModelSel = None,
    since: o.Since = None,
    until: o.Until = None,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list of job results."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV, one row per job and phase (the report's CSV)."),
    fmt: Format = None,
    output: Output = None,
    wide: o.Wide = False,
) -> None:
    """The stored results of runs (RUN... or --run), narrowed by selectors; with no run, every run the
    selectors match; with neither, the latest run (the rule of every read command)."""
    selectors = o.selection((), machine, device, model, None, since, until)  # bad dates: exit 2 first
    store = controller.store_for()
    run_ids = o.run_ids(store, runs, run)
    if not run_ids and selectors.narrows_runs():
        ids = selectors.query_ids(store)
        if not ids:
            raise NotFoundError(f"no stored results match {selectors.describe()}")
        res = store.get_results(ids)
        title = f"every run, {selectors.describe()}: {len(res)} result(s)"
        emit_results(res, fmt_of(fmt, output, json_out, csv_out), output, title=title, wide=wide)
        return
    run_ids = run_ids or (store.latest_run(),)
    found: dict[str, JobResult] = {}
    n_jobs = 0
    for run_id in run_ids:
        jobs = store.get_run(run_id)["jobs"]  # NotFoundError (exit 4) for an unknown run
        n_jobs += len(jobs)
        found.update((r.job_id, r) for r in store.get_results(jobs))
    sel = replace(selectors, runs=run_ids)
    if sel.narrows_runs() or not n_jobs:  # selectors, or runs recorded without jobs (imported)
        wanted = set(sel.query_ids(store))
        found = {j: r for j, r in found.items() if j in wanted}
        found.update((r.job_id, r) for r in store.get_results(sorted(wanted - set(found))))
    res = list(found.values())
    labels = ", ".join(o.run_label(store, r) for r in run_ids)
    title = f"run{'s' if len(run_ids) > 1 else ''} {labels}: {len(res)}/{n_jobs} job(s) with results"
    skipped = report_lib.skipped_of_runs(store, run_ids)  # devices the embedded farm skipped: a note each
    emit_results(res, fmt_of(fmt, output, json_out, csv_out), output, title=title, wide=wide, skipped=skipped)


def cancel(
    runs: o.Runs = None,
    run: o.RunOpt = None,
    job: o.ListOpt = typer.Option(
        None, "--job", help="Only these jobs of the named run(s) (repeatable or comma list), e.g. an unserved one."
    ),
    fmt: Format = None,
    output: Output = None,
    json_out: JsonAlias = False,
) -> None:
    """Cancel runs' queued jobs (RUN... or --run; 'latest' too), or only those named by --job: revoked
    and stored as `cancelled` (running jobs finish). A run must be named: cancelling is never a default."""
    store = controller.store_for()
    run_ids = o.run_ids(store, runs, run)
    if not run_ids:
        raise SpecError("run", "name the run to cancel (a run id, or 'latest')")
    job_ids = o.split(job) or None
    if job_ids is not None:
        known = {j for run_id in run_ids for j in store.get_run(run_id)["jobs"]}
        stray = [j for j in job_ids if j not in known]
        if stray:
            raise NotFoundError(f"job {stray[0]!r} is not a job of run(s) {', '.join(run_ids)}")
    lst = listing.Listing("", ["run", "job", "state"], doc=[])
    n = 0
    for run_id in run_ids:
        cancelled, running = controller.cancel(run_id, job_ids=job_ids)
        n += len(cancelled)
        lst.doc.append({"run_id": run_id, "cancelled": cancelled, "running": running})
        for j in cancelled:
            lst.add(run_id, j, "cancelled", status="cancelled")
        for j in running:
            lst.add(run_id, j, "still running (not interrupted)", status="running")
    lst.title = f"cancelled {n} job(s) of {', '.join(run_ids)}"
    fmt_name = fmt_of(fmt, output, json_out)
    if fmt_name == "terminal" and output is None:  # the short form people read
        all_cancelled = [j for d in lst.doc for j in d["cancelled"]]
        out.print(f"cancelled {n} job(s)" + (f": {', '.join(all_cancelled)}" if all_cancelled else ""), markup=False)
        running = [j for d in lst.doc for j in d["running"]]
        if running:
            note(f"still running (not interrupted): {', '.join(running)}")
        return
    emit(lst, fmt_name, output)


def worker(
    device: str = typer.Option("auto", help="cpu, cuda, or auto (cuda when NVML sees a GPU)."),
    gpu: int | None = typer.Option(None, help="The GPU index this worker serves (one worker per GPU)."),
    queues: str | None = typer.Option(
        None, help="Comma list of queues to consume instead of the detected ones (skips the CUDA device check)."
    ),
    concurrency: int = typer.Option(1, help="Jobs at once on a CPU worker (GPU workers: always 1)."),
    max_world_size: int | None = typer.Option(
        None,
        "--max-world-size",
        help="Devices one job may use (DDP train; consumes <queue>.x2 .. .xN). Default: the GPU count "
        "on a GPU worker without --gpu, else 1.",
    ),
    name: str | None = typer.Option(None, help="Worker name (default: device-host-pid)."),
    machine: str | None = typer.Option(
        None,
        "--machine",
        help="Machine tag to report instead of the host name's (FARM_MACHINE): a second machine on one "
        "host, e.g. to try a two-machine lab on one box.",
    ),
    loglevel: str = typer.Option("info", help="debug, info, warning, error."),
) -> None:
    """Serve jobs: subscribe to the queues this machine can serve and run one job at a time per GPU.

    `--device cuda` without a usable CUDA device (or `--gpu N` beyond those found) exits 2 at once."""
    # The worker imports torch (farm.engine.runner): only this command pays for it.
    from farm.cluster.worker import plan_worker, run_worker

    if machine is not None:
        # Through the setting, so the heartbeat, the job processes (forked) and their results agree.
        os.environ["FARM_MACHINE"] = machine
        farm_settings.get_settings.cache_clear()
        farm_settings.get_settings()  # ConfigError (exit 2) for a tag that is not one
    cfg = plan_worker(device, gpu, queues.split(",") if queues else None, name, concurrency, max_world_size)
    note(f"worker {cfg.name} on {socket.gethostname()}: device {cfg.device}, queues {','.join(cfg.queues)}")
    run_worker(cfg, loglevel)


def up() -> None:
    """Start the embedded farm here: a private redis-server and local workers (CPU, one per GPU)."""
    state = embedded.up()
    out.print(
        f"embedded farm up: redis {farm_settings.mask_url(state['url'])} (pid {state['redis']['pid']})", highlight=False
    )
    for w in state["workers"]:
        out.print(f"  worker {w['name']} (pid {w['pid']}, {w['device']}), log {w['log']}", highlight=False)


def down() -> None:
    """Stop the embedded farm: exactly the redis-server and workers that `farm up` started."""
    stopped = embedded.down()
    if not stopped:
        out.print("no embedded farm is running")
    for s in stopped:
        out.print(f"stopped {s}", highlight=False, markup=False)
