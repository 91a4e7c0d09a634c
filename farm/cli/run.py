"""`farm run`: run a spec locally, in this process, with no broker."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from farm.cli import options as o
from farm.cli.app import app, err, out
from farm.cli.errors import EXIT_JOB_FAILED, handles_errors
from farm.cli.render import breakdown_lines, results_json, results_table


@app.command()
@handles_errors
def run(
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
    json_out: bool = typer.Option(False, "--json", help="Print the job results as a JSON list."),
) -> None:
    """Run a benchmark spec on this machine, in this process (no broker, no workers)."""
    spec = o.build_spec(spec_file, **o.spec_options(locals()))
    from farm.engine.runner import prepare_local, run_job  # imports torch: only once the input is valid

    jobs = prepare_local(spec)
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=json_out,
    ) as progress:
        for job in jobs:
            tasks = {p: progress.add_task(f"{job.device} {job.spec.model_name} {p}", total=None) for p in spec.phases}

            def on_progress(phase: str, done: int, total: int, _tasks: dict = tasks) -> None:
                progress.update(_tasks[phase], completed=done, total=total)

            results.append(run_job(job, on_progress=on_progress))
    if json_out:
        print(results_json(results))
    else:
        out.print(results_table(results, title=f"{spec.model_name}, batch {spec.batch} x seq {spec.seq}, {spec.dtype}"))
        for line in breakdown_lines(results):
            out.print(line, highlight=False)
    if any(r.status != "ok" for r in results):
        raise typer.Exit(EXIT_JOB_FAILED)
