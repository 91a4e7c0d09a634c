"""The CLI's consoles, its one way to print data (`emit`, `emit_results`), and `fail`.

Data (tables, results, JSON) go to stdout or `-o FILE`; progress, warnings and errors to stderr,
so that `--json` output on stdout stays machine-readable. Exit codes: see `farm.cli.main`.

Both consoles (`out`, `err`) are `SafeConsole`s: a string printed is text, never Rich markup
(unless `markup=True` is passed, as `fail` does with its escaped message), and control and bidi
characters in strings and `Text`s are shown escaped (`farm.reports.cells.term`), so data that
reaches a print cannot raise `MarkupError` or drive the terminal. `-o FILE` is written whole or
not at all (`write`: a temporary file, then a rename); a file that cannot be written (a missing
directory, a directory, a read-only place, a full device) is an OSError, one line and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from farm.cli.lazy import lazy_module

if TYPE_CHECKING:
    from farm.reports import cells, formats, report
    from farm.reports.listing import Listing
    from farm.reports.report import Report
    from farm.results import records
    from farm.results import result as result_model
    from farm.results.result import JobResult
    from farm.spec import SkippedDevice
else:  # run on first use (farm.cli.lazy): the report modules load numpy and the store
    cells = lazy_module("farm.reports.cells")
    formats = lazy_module("farm.reports.formats")
    report = lazy_module("farm.reports.report")
    records = lazy_module("farm.results.records")
    result_model = lazy_module("farm.results.result")

EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_BROKER, EXIT_NOT_FOUND, EXIT_UNSERVED = 0, 1, 2, 3, 4, 5


def term(text: str) -> str:
    """`farm.reports.cells.term`: control and bidi characters shown escaped. Text without any (each is
    a non-printable character, `str.isprintable`) is returned as it is, without loading the report
    modules that farm.reports.cells imports: `farm --version` prints through here."""
    return text if text.isprintable() else cells.term(text)


def safe_text(text: Text) -> Text:
    """A copy of `text` with its control and bidi characters shown escaped (`term`), styles kept."""
    if text.plain.isprintable() or not cells.UNSAFE.search(text.plain):
        return text
    cuts = sorted({i for span in text.spans for i in (span.start, span.end) if 0 < i < len(text)})
    safe = Text(style=text.style, justify=text.justify, overflow=text.overflow, no_wrap=text.no_wrap, end=text.end)
    for piece in text.divide(cuts):
        start = len(safe)
        safe.append(term(piece.plain))
        for span in piece.spans:  # each covers the whole piece: the cuts are at every span's edges
            safe.stylize(span.style, start, len(safe))
    return safe


class SafeConsole(Console):
    """A Console whose `print` shows strings as text (not markup, unless `markup=True` is passed) and
    escapes the control and bidi characters of strings and `Text`s (tables are built of escaped
    `Text` cells by `farm.reports.formats`)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if kwargs.get("markup") is not True:
            objects = tuple(Text(term(o)) if isinstance(o, str) else o for o in objects)
        super().print(*(safe_text(o) if isinstance(o, Text) else o for o in objects), **kwargs)


# Piped output gets a wide console (the lines below a report's table are not folded at Rich's 80-column
# default); COLUMNS, where set, is the width either way (`width`).
out = SafeConsole(soft_wrap=False, width=None if sys.stdout.isatty() else 240, markup=False)
err = SafeConsole(stderr=True, markup=False)


def width() -> int:
    """The width data is printed at: COLUMNS where it is set (a terminal's, a test's, a script's),
    else the terminal's (Rich's console width), else 240 for piped output."""
    columns = os.environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isdigit() and int(columns) > 0 else out.width


Format = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="terminal, markdown, csv, json or html (default: from -o's suffix, else terminal)."
    ),
]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")]
JsonAlias = Annotated[bool, typer.Option("--json", help="Print JSON (the same as --format json).")]


def one_line(message: str) -> str:
    """Control and bidi characters (a newline, an escape sequence) shown escaped: one line that cannot
    drive a terminal (`farm.reports.cells.term`)."""
    return term(message)


def fail(message: str, code: int) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise.

    The message is text, never markup: a path or value such as `[draft].yaml` is printed as is.
    """
    err.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def _unfolded() -> bool:
    """Notes are folded at word boundaries on a terminal (its own wrap cuts words), one line each
    when piped (a log or a script's grep sees the whole line)."""
    return not err.is_terminal


def warn(message: str, label: str = "warning") -> None:
    """A yellow `label:` and the message (text, not markup) on stderr."""
    err.print(Text.assemble((f"{label}:", "yellow"), " ", term(message)), highlight=False, soft_wrap=_unfolded())


def note(message: str) -> None:
    """A plain line on stderr (text, not markup)."""
    err.print(Text(term(message)), highlight=False, soft_wrap=_unfolded())


def fmt_of(fmt: str | None, output: Path | None, json_alias: bool = False, csv_alias: bool = False) -> str:
    """The format asked for: `--format`, its aliases (`--json`, `--csv`), -o's suffix, else terminal."""
    if fmt is None and json_alias:
        fmt = "json"
    if fmt is None and csv_alias:
        fmt = "csv"
    return formats.choose_format(fmt, str(output) if output is not None else None)


def write(text: str, output: Path | None, fmt: str) -> None:
    """Text to stdout, or to the output file, whole or not at all (a line on stderr says so).

    OSError (`cannot write FILE: why`) when the file cannot be written: the old file, if any, is kept.
    """
    if output is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return
    cells.write_text_atomic(output, text)  # OSError: `cannot write FILE: why`
    err.print(Text(f"wrote {output} ({fmt})"))


def emit(
    obj: Report | Listing, fmt: str, output: Path | None = None, after: Sequence[str] = (), wide: bool = False
) -> None:
    """A report or listing in its format; `after` lines follow the terminal table (not other formats).

    In a terminal a report's table fits the width (`width`: COLUMNS, else the terminal's), its
    explanations wrapped below it; `wide`: every column, the table wider than the terminal where it
    must be (its lines then wrap in the terminal; nothing is cut). Files and other formats carry
    every column."""
    if fmt == "terminal" and output is None:
        w = width()  # COLUMNS where set (read now: a console made at import would keep an old one)
        layout = formats.terminal(obj, wide, width=w)  # a listing too wide for it: laid out to read
        out.print(layout, crop=False, width=w)  # a table too wide is wider, never cut
        for line in after:
            out.print(Text(term(line)), highlight=False, width=w)
        return
    write(formats.render(obj, fmt), output, fmt)


def results_report(
    results: Sequence[JobResult], title: str, skipped: Sequence[tuple[str, SkippedDevice]] = ()
) -> Report:
    """Results as a report (the one terminal table, CSV layout and HTML page); `skipped`: the devices
    their runs asked for that the embedded farm skipped (a note each)."""
    return report.add_skipped(report.build_report(records.records_from_results(results), title=title), skipped)


def emit_results(
    results: Sequence[JobResult],
    fmt: str,
    output: Path | None,
    title: str,
    json_doc: Any = None,
    wide: bool = False,
    skipped: Sequence[tuple[str, SkippedDevice]] = (),
) -> None:
    """Job results in a format; JSON is `json_doc` (default: the list of results, as stored); `wide`:
    every column of the terminal table (`emit`); `skipped`: the runs' devices the embedded farm
    skipped (`report.skipped_of_runs`), a note each in the other formats."""
    if fmt == "json":
        doc = json_doc if json_doc is not None else [r.model_dump(mode="json") for r in results]
        write(json.dumps(doc, indent=2), output, fmt)
        return
    emit(results_report(results, title, skipped), fmt, output, after=breakdown_lines(results), wide=wide)


def breakdown_lines(results: Iterable[JobResult]) -> list[str]:
    """The parts timed apart from the phases (device set-up, transfers, compile), one line per job;
    then how it was measured: the host lock's wait, the host's load, what stopped `repeats: auto`,
    whether the process was fresh."""
    lines = []
    for r in results:
        parts = [
            f"{p}.{k}={cells.fmt_seconds(v)}"
            for p, ph in r.phases.items()
            for k, v in ph.breakdown.items()
            if k.endswith("_s")
        ]
        if parts:
            lines.append(f"{r.device}: " + ", ".join(parts))
        how = []
        for name, ph in r.phases.items():
            if ph.host is not None and ph.host.lock_wait_s > 0:
                how.append(f"{name}.host_lock_wait={cells.fmt_seconds(ph.host.lock_wait_s)} (not timed)")
            if ph.host is not None and ph.host.load_avg_1m is not None:
                how.append(f"{name}.load_avg_1m={ph.host.load_avg_1m:.2f}")
            if ph.repeats_stop:
                how.append(f"{name}: repeats auto stopped by {ph.repeats_stop} (n={len(ph.times_s)})")
        if r.fresh_process is not None:
            how.append("fresh process" if r.fresh_process else "not a fresh process (the device was used before)")
        if r.cpu_gemm == result_model.CPU_GEMM_ONEDNN:
            how.append("float32 linears and attention on oneDNN")
        if how:
            lines.append(f"{r.device}: " + ", ".join(how))
        for w in r.warnings:
            lines.append(f"{r.device}: warning: {w}")
    return lines
