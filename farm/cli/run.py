"""`farm run`: run a spec locally, in this process, with no broker (thin over farm.engine.runner.run_spec)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from farm.cli import options as o
from farm.cli.lazy import lazy_module
from farm.cli.output import EXIT_JOB_FAILED, Format, Output, emit_results, err, fmt_of, term, warn
from farm.spec import Job

if TYPE_CHECKING:
    from farm.reports import report
    from farm.results import result
else:  # run on first use (farm.cli.lazy): numpy and the store
    report = lazy_module("farm.reports.report")
    result = lazy_module("farm.results.result")


def run(
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
    json_out: bool = typer.Option(False, "--json", help="Print the job results as a JSON list."),
    fmt: Format = None,
    output: Output = None,
) -> None:
    spec = o.build_spec(spec_file, **o.spec_options(locals()))
    fmt_name = fmt_of(fmt, output, json_out)
    # farm.engine.runner imports torch: only once the input is valid, and only for this command.
    from farm.engine.runner import run_spec

    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}", markup=False),
        TimeElapsedColumn(),
        console=err,
        transient=fmt_name != "terminal" or output is not None,
    )
    bars: dict[str, TaskID] = {}

    def on_progress(job: Job, what: str, done: int, total: int) -> None:
        """One bar per job over all its phases' steps; `what` says what it does now (a phase, compiling,
        measuring the CPU roofline)."""
        if job.job_id not in bars:
            bars[job.job_id] = progress.add_task(term(f"{job.device} {job.spec.model_name}"), total=None, what="")
        progress.update(bars[job.job_id], completed=done, total=total or None, what=term(what))

    with progress:
        results = run_spec(spec, on_progress=on_progress)
    title = f"{spec.model_name}, batch {spec.batch} x seq {spec.seq}, {spec.dtype}"
    emit_results(results, fmt_name, output, title=title)
    for r in results:
        if r.status == "unverified":  # measured, but no ceiling checked it: never passed off as ok
            warn(f"{r.device}: unverified: {r.error or report.UNVERIFIED_TEXT}")
    if any(r.status not in result.MEASURED_STATUSES for r in results):  # unverified is measured: warned, exit 0
        raise typer.Exit(EXIT_JOB_FAILED)


run.__doc__ = f"""Run a benchmark spec on this machine, in this process (no broker, no workers).

{o.DEFAULTS_LINE}"""
