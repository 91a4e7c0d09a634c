"""The one way the CLI follows a run: a progress bar per job on stderr (submit --wait, sweep --wait,
schedule run --wait, status --watch), then its results and exit code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from farm.cli.lazy import lazy_module
from farm.cli.output import EXIT_JOB_FAILED, EXIT_UNSERVED, emit_results, err, term, warn

if TYPE_CHECKING:
    from farm.cluster import controller
    from farm.cluster.controller import JobView
    from farm.results import result
    from farm.results.result import JobResult
    from farm.settings import Settings
else:  # run on first use (farm.cli.lazy): celery, redis, the store
    controller = lazy_module("farm.cluster.controller")
    result = lazy_module("farm.results.result")


def _tracker(progress: Progress) -> Callable[[list[JobView]], None]:
    """on_update for controller.wait: one bar per job, its phase and repeats, its state."""
    bars: dict[str, TaskID] = {}

    def update(views: list[JobView]) -> None:
        for v in views:
            if v.job_id not in bars:
                bars[v.job_id] = progress.add_task(term(f"{v.job_id} {v.device}"), total=None, state=term(v.state))
            state = v.status or (v.state if v.served else f"unserved: no live worker on queue {v.queue}")
            if v.phase and not v.finished:
                state = f"{v.state} {v.phase}"
            total = v.total or None
            progress.update(bars[v.job_id], completed=v.done, total=total, state=term(state))  # from Redis
            if v.finished:
                progress.update(bars[v.job_id], completed=1 if total is None else total, total=total or 1)

    return update


def follow(
    run_id: str, *, settings: Settings | None = None, timeout: float | None = None, transient: bool = False
) -> list[JobResult]:
    """Follow a run with progress bars until every servable job ends; its stored results."""
    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}", markup=False),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
    )
    with progress:
        return controller.wait(run_id, settings=settings, timeout=timeout, on_update=_tracker(progress))


def cancel_command(run_id: str, job_ids: Sequence[str]) -> str:
    """The exact `farm cancel` command that drops these jobs of the run (and no other)."""
    return f"farm cancel {run_id} --job {','.join(job_ids)}"


def say_unserved(run_id: str, jobs: Sequence[tuple[str, str, str]]) -> None:
    """Per device with jobs (job id, device, queue) no live worker serves: that none does, that its jobs
    stay queued until one does, and the `farm cancel` command that drops them."""
    by_device: dict[tuple[str, str], list[str]] = {}
    for job_id, device, queue in jobs:
        by_device.setdefault((device, queue), []).append(job_id)
    for (device, queue), ids in by_device.items():
        these = f"job {ids[0]} stays" if len(ids) == 1 else f"{len(ids)} jobs ({', '.join(ids)}) stay"
        warn(
            f"device {device}: no live worker serves queue {queue!r}; {these} queued until one does "
            f"(it runs then, however late); to drop {'it' if len(ids) == 1 else 'them'}: "
            f"{cancel_command(run_id, ids)}",
            label="unserved",
        )


def follow_and_print(
    run_id: str,
    fmt: str,
    output: Path | None = None,
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
    skip_unserved: bool = False,
) -> None:
    """Follow a run, print its results; exit 1 when a job did not succeed, 5 when jobs are left unserved
    (each device named, with the `farm cancel` command that drops its jobs; they stay queued)."""
    results = follow(run_id, settings=settings, timeout=timeout, transient=fmt != "terminal" or output is not None)
    store = controller.store_for(settings)
    left = [v for v in controller.job_views(run_id, store) if not v.finished]
    if left and skip_unserved:
        cancelled, _ = controller.cancel(run_id, job_ids=[v.job_id for v in left], settings=settings)
        err.print(Text.assemble(("cancelled", "yellow"), f" {len(cancelled)} unserved job(s): {', '.join(cancelled)}"))
        left = []
    say_unserved(run_id, [(v.job_id, v.device, v.queue) for v in left])
    skipped = store.skipped_devices(run_id)  # the devices the embedded farm left out, with why
    doc: dict[str, Any] = {"run_id": run_id, "results": [r.model_dump(mode="json") for r in results],
                           "skipped_devices": [d.model_dump(mode="json") for d in skipped]}  # fmt: skip
    emit_results(results, fmt, output, title=f"run {run_id}", json_doc=doc, skipped=[(run_id, d) for d in skipped])
    if left:
        raise typer.Exit(EXIT_UNSERVED)
    if any(r.status not in result.MEASURED_STATUSES for r in results):  # unverified is measured (and flagged)
        raise typer.Exit(EXIT_JOB_FAILED)
