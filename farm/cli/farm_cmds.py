"""The farm: submit, status, workers, results, cancel, worker, up, down (thin over farm.cluster).

Plain functions; `farm.cli.main` registers them on the app and maps their errors."""

from __future__ import annotations

import json
import socket
import time
from typing import Annotated

import typer

from farm.cli import options as o
from farm.cli.follow import follow, follow_and_print
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
from farm.cluster import controller, embedded
from farm.cluster.controller import JobView
from farm.reports.listing import Listing
from farm.settings import Settings, get_settings, mask_url

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
    name: str | None = typer.Option(None, help="A name for the run."),
    wait_: bool = typer.Option(False, "--wait", help="Follow the run until every servable job ends."),
    json_out: bool = typer.Option(False, "--json", help='Print JSON (with --wait: {"run_id", "results"}).'),
    skip_unserved: bool = typer.Option(
        False, "--skip-unserved", help="With --wait: cancel jobs no live worker serves instead of exiting 5."
    ),
    timeout: float | None = typer.Option(None, help="With --wait: give up after this many seconds."),
    unserved_after: UnservedAfter = controller.UNSERVED_AFTER_S,
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Queue a benchmark on the farm (one job per device); with --wait, follow it and print the results."""
    spec = o.build_spec(spec_file, **o.spec_options(locals()))
    fmt_name = fmt_of(fmt, output, json_out)
    settings = get_settings()
    (spec,), _, _ = embedded.ensure_local([spec], settings, say=note)
    sub = controller.submit(spec, name=name, tags=spec.tags or None, settings=settings)
    note(f"run {sub.run_id}: {len(sub.jobs)} job(s) queued")
    if wait_:
        await_workers(sub.run_id, unserved_after, settings)
    else:
        for q in sub.unserved:
            names = ", ".join(j.job_id for j in sub.jobs if j.queue == q)
            warn(f"no live worker serves queue {q!r}; job(s) {names} stay queued")
    if wait_:
        follow_and_print(sub.run_id, fmt_name, output, settings=settings, timeout=timeout, skip_unserved=skip_unserved)
    elif fmt_name == "json":
        doc = {"run_id": sub.run_id, "jobs": [j.job_id for j in sub.jobs], "unserved": sub.unserved}
        write(json.dumps(doc), output, fmt_name)
    else:
        write(sub.run_id, output, fmt_name)


def await_workers(run_id: str, unserved_after: float, settings: Settings | None = None) -> list[str]:
    """Before following a run: give workers that are still starting `unserved_after` s to serve its queues."""

    def say(queues: list[str], left: float) -> None:
        note(f"waiting up to {left:.0f} s for a live worker on queue(s) {', '.join(queues)}")

    left = controller.await_service(run_id, unserved_after=unserved_after, settings=settings, on_waiting=say)
    for q in left:
        warn(f"no live worker serves queue {q!r} after {unserved_after:g} s")
    return left


def _status_listing(run_id: str, views: list[JobView]) -> Listing:
    counts: dict[str, int] = {}
    for v in views:
        key = "unserved" if v.unserved else v.state
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    doc = {"run_id": run_id, "jobs": [v.__dict__ for v in views]}
    lst = Listing(
        f"run {run_id}: {summary}",
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
    run: str = typer.Argument("latest", help="Run id ('latest', the default: the newest run)."),
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
    emit(_status_listing(run_id, controller.job_views(run_id, store)), fmt_of(fmt, output, json_out), output)


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
    lst = Listing(
        f"{len(live)} live worker(s)", ["name", "host", "device", "tags", "queues", "job", "last beat"], doc=live
    )
    now = time.time()
    for w in live:
        beat = f"{now - w['last_heartbeat']:.0f} s ago"
        lst.add(w["name"], w["host"], w["device"], ",".join(w["tags"]), ",".join(w["queues"]), w["job"] or "idle", beat)
    emit(lst, fmt_of(fmt, output, json_out), output)


def results(
    run: str = typer.Argument(..., help="Run id ('latest' for the newest run)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list of job results."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV, one row per job and phase (the report's CSV)."),
    fmt: Format = None,
    output: Output = None,
) -> None:
    """The stored results of a run."""
    store = controller.store_for()
    run_id = store.resolve_run(run)
    jobs = store.get_run(run_id)["jobs"]  # NotFoundError (exit 4) for an unknown run
    res = store.get_results(jobs)
    title = f"run {run_id}: {len(res)}/{len(jobs)} job(s) with results"
    emit_results(res, fmt_of(fmt, output, json_out, csv_out), output, title=title)


def cancel(run: str = typer.Argument(..., help="Run id ('latest' for the newest run).")) -> None:
    """Cancel a run's queued jobs: revoked and stored as `cancelled` (running jobs finish)."""
    run_id = controller.store_for().resolve_run(run)
    cancelled, running = controller.cancel(run_id)
    out.print(f"cancelled {len(cancelled)} job(s)" + (f": {', '.join(cancelled)}" if cancelled else ""), markup=False)
    if running:
        note(f"still running (not interrupted): {', '.join(running)}")


def worker(
    device: str = typer.Option("auto", help="cpu, cuda, or auto (cuda when NVML sees a GPU)."),
    gpu: int | None = typer.Option(None, help="The GPU index this worker serves (one worker per GPU)."),
    queues: str | None = typer.Option(
        None, help="Comma list of queues to consume instead of the detected ones (skips the CUDA device check)."
    ),
    concurrency: int = typer.Option(1, help="Jobs at once on a CPU worker (GPU workers: always 1)."),
    name: str | None = typer.Option(None, help="Worker name (default: device-host-pid)."),
    loglevel: str = typer.Option("info", help="debug, info, warning, error."),
) -> None:
    """Serve jobs: subscribe to the queues this machine can serve and run one job at a time per GPU.

    `--device cuda` without a usable CUDA device (or `--gpu N` beyond those found) exits 2 at once."""
    # The worker imports torch (farm.engine.runner): only this command pays for it.
    from farm.cluster.worker import plan_worker, run_worker

    cfg = plan_worker(device, gpu, queues.split(",") if queues else None, name, concurrency)
    note(f"worker {cfg.name} on {socket.gethostname()}: device {cfg.device}, queues {','.join(cfg.queues)}")
    run_worker(cfg, loglevel)


def up() -> None:
    """Start the embedded farm here: a private redis-server and local workers (CPU, one per GPU)."""
    state = embedded.up()
    out.print(f"embedded farm up: redis {mask_url(state['url'])} (pid {state['redis']['pid']})", highlight=False)
    for w in state["workers"]:
        out.print(f"  worker {w['name']} (pid {w['pid']}, {w['device']}), log {w['log']}", highlight=False)


def down() -> None:
    """Stop the embedded farm: exactly the redis-server and workers that `farm up` started."""
    stopped = embedded.down()
    if not stopped:
        out.print("no embedded farm is running")
    for s in stopped:
        out.print(f"stopped {s}", highlight=False, markup=False)
