"""`farm publish DIR`: write the farm's static site (thin over farm.reports.publish)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from farm.cli.output import err
from farm.cluster.controller import store_for
from farm.reports.publish import MAX_RUN_PAGES
from farm.reports.publish import publish as publish_site


def publish(
    directory: Path = typer.Argument(..., help="Where to write the site (created if missing; pages replaced)."),
    runs: int = typer.Option(MAX_RUN_PAGES, "--runs", min=0, max=10_000, help="Newest runs that get a page."),
) -> None:
    """Write a static site of every stored result: index, comparisons, history per spec, regressions."""
    if directory.exists() and not directory.is_dir():
        raise OSError(20, f"{directory} exists and is not a directory")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("reading results", total=None)

        def on_progress(page: str, done: int, total: int) -> None:
            bar.update(task, description=f"writing {page}", completed=done, total=total)

        site = publish_site(store_for(), directory, max_run_pages=runs, on_progress=on_progress)
    err.print(
        f"wrote {len(site.pages)} pages to {directory} ({site.results} results, {site.specs} specs, "
        f"{site.runs} run pages, {site.regressions} regressions); open {directory / 'index.html'}",
        highlight=False,
        markup=False,
    )
