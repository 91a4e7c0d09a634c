"""Reports: report, compare, diff, import (thin over farm.reports.report, farm.reports.diff, farm.reports.importer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from farm.cli.app import app, err, out
from farm.cli.errors import handles_errors
from farm.errors import SpecError
from farm.results.store import ResultStore

ListOpt = list[str] | None
Format = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="terminal, markdown, csv, json or html (default: from -o's suffix, else terminal)."
    ),
]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")]
Baseline = Annotated[
    str | None,
    typer.Option(help="What speedups are relative to: device=cpu (default: same run), run=<id>, machine=<tag>."),
]
SUFFIX_FORMATS = {
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".csv": "csv",
    ".json": "json",
    ".txt": "terminal",
}


def store() -> ResultStore:
    """The results store: FARM_REDIS_URL / FARM_RESULTS_URL, or the running embedded farm."""
    from farm.cluster.controller import store_for

    return store_for()


def _split(values: ListOpt) -> tuple[str, ...]:
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def _emit(text_format: str, output: Path | None, render_terminal: object, text: str | None) -> None:
    if output is not None:
        output.write_text(text or "", encoding="utf-8")
        err.print(f"wrote {output} ({text_format})")
    elif text is None:
        out.print(render_terminal)
    else:
        print(text, end="" if text.endswith("\n") else "\n")


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
    from farm.reports.compare import parse_baseline
    from farm.reports.formats import FORMATS, render, to_terminal
    from farm.reports.report import Selection, parse_when, select

    fmt = fmt or (SUFFIX_FORMATS.get(output.suffix.lower(), "terminal") if output else "terminal")
    if fmt not in FORMATS:
        raise SpecError("format", f"{fmt!r} is not a format; allowed: {', '.join(FORMATS)}")
    s = store()
    if "latest" in runs:
        runs = tuple(s.latest_run() if r == "latest" else r for r in runs)
    selection = Selection(
        runs=runs,
        machines=_split(machine),
        devices=_split(device),
        models=_split(model),
        spec_hashes=_split(spec_hash),
        since=parse_when(since, "since"),
        until=parse_when(until, "until"),
    )
    report = select(s, selection, parse_baseline(baseline))
    if fmt == "terminal" and output is None:
        _emit(fmt, None, to_terminal(report), None)
    elif fmt == "html":
        from farm.reports.history import report_section
        from farm.reports.html import render_html

        # The history view (a phase's time per night, regressions marked) when there is history.
        section = report_section(s, report)
        _emit(fmt, output, None, render_html(report, extra_sections=[section] if section else []))
    else:
        _emit(fmt, output, None, render(report, fmt))


Machine = Annotated[ListOpt, typer.Option("--machine", help="Machine tag (repeatable or comma list).")]
Device = Annotated[ListOpt, typer.Option("--device", help="Device tag, exactly as stored: cpu, cuda, cuda:h100.")]
ModelSel = Annotated[ListOpt, typer.Option("--model", help="Model preset name, e.g. gpt2.")]
SpecHash = Annotated[ListOpt, typer.Option("--spec-hash", help="Spec hash (same work on any device).")]
Since = Annotated[str | None, typer.Option(help="Finished at or after: ISO date/time (UTC) or 30m, 12h, 7d.")]
Until = Annotated[str | None, typer.Option(help="Finished at or before: ISO date/time (UTC) or 30m, 12h, 7d.")]


@app.command()
@handles_errors
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


@app.command()
@handles_errors
def compare(
    run: Annotated[ListOpt, typer.Option("--run", help="Run id (repeatable or comma list).")] = None,
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
    """Compare results across runs, machines and devices chosen by selectors (all stored results if none)."""
    _report(_split(run), machine, device, model, spec_hash, since, until, baseline, fmt, output)


@app.command()
@handles_errors
def diff(
    result_a: Annotated[str, typer.Argument(help="Job id of the first result.")],
    result_b: Annotated[str, typer.Argument(help="Job id of the second result.")],
    show_all: bool = typer.Option(False, "--all", help="List equal keys too."),
    fmt: Annotated[str, typer.Option("--format", "-f", help="terminal, markdown or json.")] = "terminal",
) -> None:
    """The environment difference of two results: hardware, drivers, versions, precision, spec, peak."""
    from farm.reports.diff import diff_json, diff_markdown, diff_table, environment_diff

    if fmt not in ("terminal", "markdown", "json"):
        raise SpecError("format", f"{fmt!r}: allowed terminal, markdown, json")
    s = store()
    d = environment_diff(s.get_result(result_a), s.get_result(result_b), show_all)
    if fmt == "terminal":
        out.print(diff_table(d))
    else:
        print(diff_markdown(d) if fmt == "markdown" else diff_json(d))


@app.command("import")
@handles_errors
def import_(
    file: Annotated[Path, typer.Argument(help='JSON from `farm results RUN --json` or {"run_id", "results": [...]}.')],
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate, re-check (statistics from raw times, peak plausibility) and store results made elsewhere."""
    import json

    from farm.reports.importer import import_file, read_file, validate

    validate(read_file(file))  # bad input is refused before Redis is touched
    summary = import_file(store(), file)
    if json_out:
        print(json.dumps(summary.__dict__, indent=1))
        return
    out.print(f"stored {len(summary.stored)}, already present {len(summary.existing)}; runs: {', '.join(summary.runs)}")
    for job_id, why in summary.flagged.items():
        out.print(f"[bold magenta]flagged[/] {job_id}: {why}", highlight=False)
