"""`farm publish DIR`: write the farm's static site (thin over farm.reports.publish)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from farm.cli.lazy import lazy_module
from farm.cli.output import err

if TYPE_CHECKING:
    from farm.cluster import controller
    from farm.reports import publish as publishing
else:  # run on first use (farm.cli.lazy): scipy (the regressions), celery, the report modules
    controller = lazy_module("farm.cluster.controller")
    publishing = lazy_module("farm.reports.publish")

# farm.reports.publish.MAX_RUN_PAGES, the default shown in --help, without importing that module
# for it (tests/test_cli_startup.py checks that the two agree).
MAX_RUN_PAGES = 30


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

        site = publishing.publish(controller.store_for(), directory, max_run_pages=runs, on_progress=on_progress)
    err.print(
        f"wrote {len(site.pages)} pages to {directory} ({site.results} results, {site.specs} specs, "
        f"{site.runs} run pages, {site.regressions} regressions); open {directory / 'index.html'}",
        highlight=False,
        markup=False,
    )
