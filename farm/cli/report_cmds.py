"""Reports: report, compare, diff, import (thin over farm.reports.report, farm.reports.diff, farm.reports.importer).

Plain functions; `farm.cli.main` registers them on the app and maps their errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from farm.cli.output import Format, JsonAlias, Output, emit, fmt_of, out, write
from farm.cluster.controller import store_for
from farm.dates import parse_when
from farm.reports.compare import parse_baseline
from farm.reports.diff import diff_listing, environment_diff
from farm.reports.importer import import_file, read_file, validate
from farm.reports.listing import Listing
from farm.reports.pool import pool_listing, select_pooled
from farm.reports.report import Selection, select

ListOpt = list[str] | None
Baseline = Annotated[
    str | None,
    typer.Option(help="What speedups are relative to: device=cpu (default: same run), run=<id>, machine=<tag>."),
]
Machine = Annotated[ListOpt, typer.Option("--machine", help="Machine tag (repeatable or comma list).")]
Device = Annotated[ListOpt, typer.Option("--device", help="Device tag, exactly as stored: cpu, cuda, cuda:h100.")]
ModelSel = Annotated[ListOpt, typer.Option("--model", help="Model preset name, e.g. gpt2.")]
SpecHash = Annotated[ListOpt, typer.Option("--spec-hash", help="Spec hash (same work on any device).")]
Since = Annotated[str | None, typer.Option(help="Finished at or after: ISO date/time (UTC) or 30m, 12h, 7d.")]
Until = Annotated[str | None, typer.Option(help="Finished at or before: ISO date/time (UTC) or 30m, 12h, 7d.")]


def _split(values: ListOpt) -> tuple[str, ...]:
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def _report(
    runs: tuple[str, ...],
    machine: ListOpt,
    device: ListOpt,
    model: ListOpt,
    spec_hash: ListOpt,
    since: str | None,
    until: str | None,
    baseline: str | None,
    fmt: str | None,
    output: Path | None,
) -> None:
    fmt = fmt_of(fmt, output)
    s = store_for()
    selection = Selection(
        runs=tuple(s.resolve_run(r) for r in runs),
        machines=_split(machine),
        devices=_split(device),
        models=_split(model),
        spec_hashes=_split(spec_hash),
        since=parse_when(since, "since"),
        until=parse_when(until, "until"),
    )
    # HTML carries the history view (a phase's time per night, regressions marked) when there is one.
    emit(select(s, selection, parse_baseline(baseline), history=fmt == "html"), fmt, output)


def report(
    runs: Annotated[list[str], typer.Argument(help="Run ids ('latest' for the newest run).")],
    machine: Machine = None,
    device: Device = None,
    model: ModelSel = None,
    spec_hash: SpecHash = None,
    since: Since = None,
    until: Until = None,
    baseline: Baseline = None,
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Report runs: per phase the median with its 95% CI, tokens/s, TFLOP/s, MFU, memory, speedup, flags."""
    _report(tuple(runs), machine, device, model, spec_hash, since, until, baseline, fmt, output)


def compare(
    run: Annotated[ListOpt, typer.Option("--run", help="Run id ('latest' too; repeatable or comma list).")] = None,
    machine: Machine = None,
    device: Device = None,
    model: ModelSel = None,
    spec_hash: SpecHash = None,
    since: Since = None,
    until: Until = None,
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
) -> None:
    """Compare results across runs, machines and devices chosen by selectors (all stored results if none)."""
    if not pool:
        fmt = "json" if json_out and fmt is None else fmt
        _report(_split(run), machine, device, model, spec_hash, since, until, baseline, fmt, output)
        return
    fmt = fmt_of(fmt, output, json_out)
    s = store_for()
    selection = Selection(
        runs=tuple(s.resolve_run(r) for r in _split(run)),
        machines=_split(machine),
        devices=_split(device),
        models=_split(model),
        spec_hashes=_split(spec_hash),
        since=parse_when(since, "since"),
        until=parse_when(until, "until"),
    )
    base = parse_baseline(baseline)
    emit(pool_listing(select_pooled(s, selection, base), base, selection), fmt, output)


def diff(
    result_a: Annotated[str, typer.Argument(help="Job id of the first result.")],
    result_b: Annotated[str, typer.Argument(help="Job id of the second result.")],
    show_all: bool = typer.Option(False, "--all", help="List equal keys too."),
    fmt: Format = None,
    output: Output = None,
    json_out: JsonAlias = False,
) -> None:
    """The environment difference of two results: hardware, drivers, versions, precision, spec, peak."""
    s = store_for()
    d = environment_diff(s.get_result(result_a), s.get_result(result_b), show_all)
    emit(diff_listing(d), fmt_of(fmt, output, json_out), output)


def import_(
    file: Annotated[Path, typer.Argument(help='JSON from `farm results RUN --json` or {"run_id", "results": [...]}.')],
    json_out: JsonAlias = False,
    fmt: Format = None,
    output: Output = None,
) -> None:
    """Validate, re-check (statistics from raw times, peak plausibility) and store results made elsewhere."""
    fmt = fmt_of(fmt, output, json_out)
    validate(read_file(file))  # bad input is refused before Redis is touched
    summary = import_file(store_for(), file)
    if fmt == "json":
        write(json.dumps(summary.__dict__, indent=1), output, fmt)
        return
    lst = Listing(
        f"stored {len(summary.stored)}, already present {len(summary.existing)}; runs: {', '.join(summary.runs)}",
        ["job", "flagged"],
    )
    for job_id, why in summary.flagged.items():
        lst.add(job_id, why, status="invalid")
    if fmt == "terminal" and output is None:
        out.print(lst.title, markup=False, highlight=False)
        for job_id, why in summary.flagged.items():
            out.print(Text.assemble(("flagged", "bold magenta"), f" {job_id}: {why}"), highlight=False)
        return
    emit(lst, fmt, output)
