"""The farm: submit, status, workers, results, cancel, worker, up, down (thin over farm.cluster.controller)."""

from __future__ import annotations

import csv
import functools
import io
import json
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from farm.cli import options as o
from farm.cli.app import app, err, out
from farm.cli.errors import EXIT_JOB_FAILED, EXIT_UNSERVED, handles_errors
from farm.cli.render import breakdown_lines, results_json, results_table
from farm.cluster.controller import JobView
from farm.errors import BrokerError
from farm.results.result import JobResult

F = TypeVar("F", bound=Callable[..., Any])


def redis_errors(fn: F) -> F:
    """Redis failing under a command (connection lost, credentials refused) is a BrokerError (exit 3)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis
        from kombu.exceptions import OperationalError

        try:
            return fn(*args, **kwargs)
        except redis.AuthenticationError as e:
            raise BrokerError(f"Redis refused the credentials: {e}") from None
        except (redis.RedisError, OperationalError) as e:
            raise BrokerError(f"Redis failed under the command: {e}") from None

    return wrapper  # type: ignore[return-value]


def _progress(transient: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
    )


def _tracker(progress: Progress) -> Callable[[list[JobView]], None]:
    """on_update for controller.wait: one bar per job, its phase and repeats, its state."""
    bars: dict[str, TaskID] = {}

    def update(views: list[JobView]) -> None:
        for v in views:
            if v.job_id not in bars:
                bars[v.job_id] = progress.add_task(f"{v.job_id} {v.device}", total=None, state=v.state)
            state = v.status or (v.state if v.served else f"unserved: no live worker on queue {v.queue}")
            if v.phase and not v.finished:
                state = f"{v.state} {v.phase}"
            total = v.total or None
            progress.update(bars[v.job_id], completed=v.done, total=total, state=state)
            if v.finished:
                progress.update(bars[v.job_id], completed=1 if total is None else total, total=total or 1)

    return update


@app.command()
@handles_errors
@redis_errors
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
    json_out: bool = typer.Option(False, "--json", help='With --wait: print {"run_id", "results"} as JSON.'),
    skip_unserved: bool = typer.Option(
        False, "--skip-unserved", help="With --wait: cancel jobs no live worker serves instead of exiting 5."
    ),
    timeout: float | None = typer.Option(None, help="With --wait: give up after this many seconds."),
) -> None:
    """Queue a benchmark on the farm (one job per device); with --wait, follow it and print the results."""
    from farm.cluster import controller, embedded
    from farm.settings import get_settings

    spec = o.build_spec(spec_file, **o.spec_options(locals()))
    settings = get_settings()
    if embedded.is_embedded(settings):
        # Embedded default: nothing but this machine could serve a job, so drop what it lacks.
        spec, skipped = embedded.local_only(spec)
        for d in skipped:
            err.print(f"[yellow]warning:[/] skipping device {d!r}: this machine has none (embedded farm)")
        if not embedded.running_url(settings):
            err.print("starting the embedded farm (redis-server and local workers; `farm down` stops them)")
        embedded.resolve_redis_url(settings, start=True)
    sub = controller.submit(spec, name=name, tags=spec.tags or None, settings=settings)
    err.print(f"run {sub.run_id}: {len(sub.jobs)} job(s) queued", highlight=False)
    for q in sub.unserved:
        names = ", ".join(j.job_id for j in sub.jobs if j.queue == q)
        err.print(f"[yellow]warning:[/] no live worker serves queue {q!r}; job(s) {names} stay queued")
    if not wait_:
        if json_out:
            print(json.dumps({"run_id": sub.run_id, "jobs": [j.job_id for j in sub.jobs], "unserved": sub.unserved}))
        else:
            out.print(sub.run_id, highlight=False)
        return
    with _progress(transient=json_out) as progress:
        results = controller.wait(sub.run_id, settings=settings, timeout=timeout, on_update=_tracker(progress))
    done = {r.job_id for r in results}
    left = [j for j in sub.jobs if j.job_id not in done]
    if left and skip_unserved:
        cancelled, _ = controller.cancel(sub.run_id, job_ids=[j.job_id for j in left], settings=settings)
        err.print(f"[yellow]cancelled[/] {len(cancelled)} unserved job(s): {', '.join(cancelled)}")
        left = []
    for j in left:
        err.print(
            f"[yellow]unserved:[/] job {j.job_id} ({j.device}) waits on queue {j.queue!r}; no live worker serves it"
        )
    _print_results(sub.run_id, results, json_out, title=f"run {sub.run_id}")
    if left:
        raise typer.Exit(EXIT_UNSERVED)
    if any(r.status != "ok" for r in results):
        raise typer.Exit(EXIT_JOB_FAILED)


def _print_results(run_id: str, results: list[JobResult], json_out: bool, title: str) -> None:
    if json_out:
        print(json.dumps({"run_id": run_id, "results": [r.model_dump(mode="json") for r in results]}, indent=2))
        return
    out.print(results_table(results, title=title))
    for line in breakdown_lines(results):
        out.print(line, highlight=False)


def _status_table(run_id: str, views: list[JobView]) -> Table:
    counts: dict[str, int] = {}
    for v in views:
        key = "unserved" if v.unserved else v.state
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    t = Table(title=f"run {run_id}: {summary}", header_style="bold")
    for col in ("job", "device", "queue", "state", "worker", "progress", "attempts", "result"):
        t.add_column(col)
    for v in views:
        state = "unserved" if v.unserved else v.state
        prog = f"{v.phase} {v.done}/{v.total}" if v.phase else "-"
        t.add_row(v.job_id, v.device, v.queue, state, v.worker or "-", prog, str(v.attempts), v.status or "-")
    return t


@app.command()
@handles_errors
@redis_errors
def status(
    run: str | None = typer.Argument(None, help="Run id (default: the latest run)."),
    watch: bool = typer.Option(False, "--watch", help="Follow the run with progress bars until it ends."),
) -> None:
    """Jobs of a run by state (queued, running, done, cancelled, unserved) and their progress."""
    from farm.cluster import controller

    store = controller.store_for()
    run_id = run or store.latest_run()
    if watch:
        with _progress(transient=False) as progress:
            controller.wait(run_id, on_update=_tracker(progress))
    out.print(_status_table(run_id, controller.job_views(run_id, store)))


@app.command()
@handles_errors
@redis_errors
def workers(
    json_out: bool = typer.Option(False, "--json", help="Print the live workers as JSON."),
    check_host: str | None = typer.Option(
        None, "--check-host", help="Exit 0 only if a live worker runs on HOST (container health check)."
    ),
) -> None:
    """Live workers (heartbeat not expired): tags, queues and the job each runs now."""
    from farm.cluster import controller

    live = controller.live_workers()
    if check_host is not None:
        host = check_host.lower()
        if not any(host in (w["host"].lower(), w["machine"].lower()) for w in live):
            err.print(f"no live worker on host {check_host!r}")
            raise typer.Exit(EXIT_JOB_FAILED)
        return
    if json_out:
        print(json.dumps(live, indent=2))
        return
    t = Table(title=f"{len(live)} live worker(s)", header_style="bold")
    for col in ("name", "host", "device", "tags", "queues", "job", "last beat"):
        t.add_column(col)
    now = time.time()
    for w in live:
        job = w["job"] or "idle"
        beat = f"{now - w['last_heartbeat']:.0f} s ago"
        t.add_row(w["name"], w["host"], w["device"], ",".join(w["tags"]), ",".join(w["queues"]), job, beat)
    out.print(t)


CSV_FIELDS = [
    "run_id",
    "job_id",
    "device",
    "torch_device",
    "model",
    "status",
    "phase",
    "phase_status",
    "median_s",
    "ci_low_s",
    "ci_high_s",
    "n",
    "flops",
    "achieved_flops",
    "mfu",
    "tokens_per_s",
    "peak_memory_bytes",
    "machine",
    "worker",
    "finished_at",
    "error",
]


def results_csv(results: list[JobResult]) -> str:
    """One row per job and phase (a job without phases gets one row), for spreadsheets."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in results:
        base: dict[str, Any] = {
            "run_id": r.run_id,
            "job_id": r.job_id,
            "device": r.device,
            "torch_device": r.torch_device or "",
            "model": r.model_name,
            "status": r.status,
            "machine": r.machine.machine_tag if r.machine else "",
            "worker": r.worker or "",
            "finished_at": r.finished_at.isoformat() if r.finished_at else "",
            "error": (r.error or "").splitlines()[0] if r.error else "",
        }
        if not r.phases:
            w.writerow(base)
        for name, p in r.phases.items():
            s = p.stats
            w.writerow(
                {
                    **base,
                    "phase": name,
                    "phase_status": p.status,
                    "median_s": p.median_s,
                    "ci_low_s": s.ci_low_s if s else "",
                    "ci_high_s": s.ci_high_s if s else "",
                    "n": s.n if s else 0,
                    "flops": p.flops,
                    "achieved_flops": p.achieved_flops or "",
                    "mfu": p.mfu if p.mfu is not None else "",
                    "tokens_per_s": p.tokens_per_s or "",
                    "peak_memory_bytes": p.peak_memory_bytes or "",
                }
            )
    return buf.getvalue()


@app.command()
@handles_errors
@redis_errors
def results(
    run: str = typer.Argument(..., help="Run id."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list of job results."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV, one row per job and phase."),
) -> None:
    """The stored results of a run."""
    from farm.cluster import controller

    store = controller.store_for()
    run_info = store.get_run(run)  # NotFoundError (exit 4) for an unknown run
    res = store.get_results(run_info["jobs"])
    if json_out:
        print(results_json(res))
    elif csv_out:
        print(results_csv(res), end="")
    else:
        _print_results(run, res, False, title=f"run {run}: {len(res)}/{len(run_info['jobs'])} job(s) with results")


@app.command()
@handles_errors
@redis_errors
def cancel(run: str = typer.Argument(..., help="Run id.")) -> None:
    """Cancel a run's queued jobs: revoked and stored as `cancelled` (running jobs finish)."""
    from farm.cluster import controller

    cancelled, running = controller.cancel(run)
    out.print(f"cancelled {len(cancelled)} job(s)" + (f": {', '.join(cancelled)}" if cancelled else ""))
    if running:
        err.print(f"still running (not interrupted): {', '.join(running)}")


@app.command()
@handles_errors
def worker(
    device: str = typer.Option("auto", help="cpu, cuda, or auto (cuda when NVML sees a GPU)."),
    gpu: int | None = typer.Option(None, help="The GPU index this worker serves (one worker per GPU)."),
    queues: str | None = typer.Option(None, help="Comma list of queues to consume instead of the detected ones."),
    concurrency: int = typer.Option(1, help="Jobs at once on a CPU worker (GPU workers: always 1)."),
    name: str | None = typer.Option(None, help="Worker name (default: device-host-pid)."),
    loglevel: str = typer.Option("info", help="debug, info, warning, error."),
) -> None:
    """Serve jobs: subscribe to the queues this machine can serve and run one job at a time per GPU."""
    from farm.cluster.worker import plan_worker, run_worker

    cfg = plan_worker(device, gpu, queues.split(",") if queues else None, name, concurrency)
    err.print(f"worker {cfg.name} on {socket.gethostname()}: device {cfg.device}, queues {','.join(cfg.queues)}")
    run_worker(cfg, loglevel)


@app.command()
@handles_errors
@redis_errors
def up() -> None:
    """Start the embedded farm here: a private redis-server and local workers (CPU, one per GPU)."""
    from farm.cluster import embedded
    from farm.settings import mask_url

    state = embedded.up()
    out.print(f"embedded farm up: redis {mask_url(state['url'])} (pid {state['redis']['pid']})", highlight=False)
    for w in state["workers"]:
        out.print(f"  worker {w['name']} (pid {w['pid']}, {w['device']}), log {w['log']}", highlight=False)


@app.command()
@handles_errors
@redis_errors
def down() -> None:
    """Stop the embedded farm: exactly the redis-server and workers that `farm up` started."""
    from farm.cluster import embedded

    stopped = embedded.down()
    if not stopped:
        out.print("no embedded farm is running")
    for s in stopped:
        out.print(f"stopped {s}", highlight=False)
