"""Reports: report, compare, diff, import (thin over farm.reports.report, farm.reports.diff, farm.reports.importer).

Plain functions; `farm.cli.main` registers them on the app and maps their errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from farm.cli import options as o
from farm.cli.lazy import lazy_module
from farm.cli.output import Format, JsonAlias, Output, emit, fmt_of, out, write
from farm.cli.repair_cmds import confirm

if TYPE_CHECKING:
    from farm.cluster import controller
    from farm.reports import compare as compare_lib
    from farm.reports import diff as diff_lib
    from farm.reports import importer, listing
    from farm.reports import pool as pool_lib
    from farm.reports import report as report_lib
    from farm.reports.report import Selection
else:  # run on first use (farm.cli.lazy): numpy, celery, redis, the store
    controller = lazy_module("farm.cluster.controller")
    compare_lib = lazy_module("farm.reports.compare")
    diff_lib = lazy_module("farm.reports.diff")
    importer = lazy_module("farm.reports.importer")
    listing = lazy_module("farm.reports.listing")
    pool_lib = lazy_module("farm.reports.pool")
    report_lib = lazy_module("farm.reports.report")

# farm.reports.series.SERIES_THRESHOLD, shown in --help, without importing numpy and the store for
# it (tests/test_cli_startup.py checks that the two agree).
SERIES_THRESHOLD = 2000

ListOpt = o.ListOpt
_split = o.split  # the run-selection grammar's list splitting (farm.cli.options), for `import --replace`
Baseline = Annotated[
    str | None,
    typer.Option(help="What speedups are relative to: device=cpu (default: same run), run=<id>, machine=<tag>."),
]


def _report(
    sel: Selection,
    baseline: str | None,
    fmt: str | None,
    output: Path | None,
    json_out: bool = False,
    every_result: bool = False,
    wide: bool = False,
) -> None:
    fmt = fmt_of(fmt, output, json_out)
    s = controller.store_for()
    # HTML carries the history view (a phase's time per night, regressions marked) when there is one.
    rep = report_lib.select(
        s, sel, compare_lib.parse_baseline(baseline), history=fmt == "html", every_result=every_result
    )
    named = [label for label in (o.run_label(s, r) for r in sel.runs) if label.endswith(")")]
    if named:
        rep.title += f"; {', '.join(named)}"
    emit(rep, fmt, output, wide=wide)


def report(
    runs: o.Runs = None,
    run: o.RunOpt = None,
    machine: o.Machine = None,
    device: o.Device = None,
    model: o.ModelSel = None,
    spec_hash: o.SpecHash = None,
    since: o.Since = None,
    until: o.Until = None,
    baseline: Baseline = None,
    every_result: bool = typer.Option(
        False,
        "--every-result",
        help="One row per result even when the selection spans more than "
        f"{SERIES_THRESHOLD:,} results (then: one row per series, with its history).",
    ),
    fmt: Format = None,
    output: Output = None,
    json_out: JsonAlias = False,
    wide: o.Wide = False,
) -> None:
    """Report runs (RUN... or --run; all stored results when no run or selector is given): per phase the
    median with its 95% CI, tokens/s, FLOP/s, MFU, memory, speedup, flags. Over more than
    {threshold} results without a run: one row per series (its latest result) with its history."""
    sel = o.selection((), machine, device, model, spec_hash, since, until)
    _report(
        replace(sel, runs=o.run_ids(controller.store_for(), runs, run)),
        baseline,
        fmt,
        output,
        json_out,
        every_result,
        wide,
    )


report.__doc__ = (report.__doc__ or "").replace("{threshold}", f"{SERIES_THRESHOLD:,}")  # the help's number


def compare(
    runs: o.Runs = None,
    run: o.RunOpt = None,
    machine: o.Machine = None,
    device: o.Device = None,
    model: o.ModelSel = None,
    spec_hash: o.SpecHash = None,
    since: o.Since = None,
    until: o.Until = None,
    baseline: Baseline = None,
    pool: bool = typer.Option(
        False,
        "--pool",
        help="One row per machine and device x spec x phase, pooling every selected run: "
        "the median of per-run medians, an interval that resamples runs and repeats, the between-run spread.",
    ),
    fmt: Format = None,
    output: Output = None,
    json_out: JsonAlias = False,
    wide: o.Wide = False,
) -> None:
    """Compare results across runs (RUN... or --run), machines and devices chosen by selectors (all stored
    results if none)."""
    sel = o.selection((), machine, device, model, spec_hash, since, until)
    s = controller.store_for()
    sel = replace(sel, runs=o.run_ids(s, runs, run))
    if not pool:
        _report(sel, baseline, fmt, output, json_out, wide=wide)
        return
    fmt = fmt_of(fmt, output, json_out)
    base = compare_lib.parse_baseline(baseline)
    emit(pool_lib.pool_listing(pool_lib.select_pooled(s, sel, base), base, sel), fmt, output)


def diff(
    result_a: Annotated[str, typer.Argument(help="Job id of the first result.")],
    result_b: Annotated[str, typer.Argument(help="Job id of the second result.")],
    show_all: bool = typer.Option(False, "--all", help="List equal keys too."),
    fmt: Format = None,
    output: Output = None,
    json_out: JsonAlias = False,
) -> None:
    """The environment difference of two results: hardware, drivers, versions, precision, spec, peak."""
    s = controller.store_for()
    d = diff_lib.environment_diff(s.get_result(result_a), s.get_result(result_b), show_all)
    emit(diff_lib.diff_listing(d), fmt_of(fmt, output, json_out), output)


def import_(
    file: Annotated[Path, typer.Argument(help='JSON from `farm results RUN --json` or {"run_id", "results": [...]}.')],
    replace: Annotated[
        ListOpt,
        typer.Option("--replace", help="Overwrite the stored result of this job id (repeatable or comma list)."),
    ] = None,
    yes: bool = typer.Option(False, "--yes", "-y", help="Replace without asking."),
    json_out: JsonAlias = False,
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Validate, re-check (statistics from raw times, peak plausibility) and store results made elsewhere.

    Never writes into an existing run or job; `--replace JOB_ID` overwrites that job's stored result
    (asked first; `--yes` in scripts)."""
    fmt = fmt_of(fmt, output, json_out)
    results = importer.validate(importer.read_file(file))  # bad input is refused before Redis is touched
    replaced = _split(replace)
    if replaced:
        confirm(f"replace the stored result of {', '.join(replaced)}?", yes)
    summary = importer.import_results(controller.store_for(), results, file.name, replaced)
    if fmt == "json":
        write(json.dumps(summary.__dict__, indent=1), output, fmt)
        return
    title = f"stored {len(summary.stored)}, already present {len(summary.existing)}"
    if summary.replaced:
        title += f", replaced {len(summary.replaced)}"
    lst = listing.Listing(f"{title}; runs: {', '.join(summary.runs)}", ["job", "flagged"])
    for job_id, why in summary.flagged.items():
        lst.add(job_id, why, status="invalid")
    if fmt == "terminal" and output is None:
        out.print(lst.title, markup=False, highlight=False)
        for job_id, why in summary.flagged.items():
            out.print(Text.assemble(("flagged", "bold magenta"), f" {job_id}: {why}"), highlight=False)
        return
    emit(lst, fmt, output)
