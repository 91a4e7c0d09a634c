"""The one output layer: reports and listings in every format (`FORMATS`).

Reports: terminal (Rich), Markdown, CSV (one row per job and phase, `cells.row_dict`) and JSON
here, HTML in `farm.reports.html` (with the history section when the report carries it). Every
format carries the same flags: a short label in the table, the full text below it (CSV and JSON:
a `flags` field per row and `notes` for the report), the results counted per status (unverified
apart from ok) and the peak (and roofline) each MFU is relative to. Listings (`farm.reports.listing.Listing`):
the same formats. `render(obj, fmt)` is text; `terminal(obj)` the Rich renderable.
In a terminal a report's tables fit the width they are printed at (`FitTable`): the compact
columns by default (`COMPACT_COLUMNS`, the run id and spec in each table's title, what the cells
leave out below them), every column with `wide`; a file (`render(..., "terminal")`), Markdown,
CSV, JSON and HTML carry every column. Data text goes through its format's escaping function
(`farm.reports.cells`: `term`, `md`, `csv_cell`, `html.escape`). This module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from farm.errors import SpecError
from farm.reports import listing as lst
from farm.reports.cells import (
    COLUMNS,
    COMPACT_COLUMNS,
    HISTORY_COLUMN,
    ROW_FIELDS,
    STATUS_STYLE,
    cells,
    compact_cells,
    csv_cell,
    flag_lines,
    generation_lines,
    header_lines,
    history_lines,
    history_text,
    md,
    mfu_lines,
    plain_text,
    row_dict,
    scaling_lines,
    term,
)
from farm.reports.listing import Listing
from farm.reports.report import Group as SpecGroup
from farm.reports.report import Report, Row

FORMATS = ("terminal", "markdown", "csv", "json", "html")
SUFFIX_FORMATS = {
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".csv": "csv",
    ".json": "json",
    ".txt": "terminal",
}
# Flag kinds that colour a report row (the first one a row has wins).
_ROW_STYLED = ("invalid", "above-peak", "failed", "oom", "timeout", "unverified")
# The wide table (`--wide`): columns never wrapped (run id, phase, device, the numbers, CI, MFU,
# speedup); the others (machine, n, flags, history) may wrap at spaces, never inside a word.
_WIDE_WRAP = {"machine", "n", "flags", HISTORY_COLUMN}
_WIDE_RIGHT = set(COLUMNS[4:12])
# The compact table (the default): the machine, speedup and flags may wrap at spaces.
_COMPACT_WRAP = {"machine", "speedup", "flags"}
_COMPACT_RIGHT = {"median", "95% CI", "speedup", "MFU"}
COMPACT_HINT = (
    "compact table: --wide for every column (run, repeats, tokens/s, FLOP/s, the MFU's peak and roofline, "
    "peak memory, the speedup's notes); markdown, csv, json and html carry them all"
)


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


@dataclass
class FitTable:
    """A table laid out for the width it is printed at (`Console.print(width=...)`, else the console's).

    Each column is as wide as its header and its longest cell where that fits; else the columns that
    may wrap are narrowed, the one with the most room first, never below their header or their longest
    word, so no cell is cut (`…`) and no header is lost. Where even that does not fit, the table is
    wider than the console: print it with `crop=False` to keep its right-hand columns."""

    headers: list[str]
    rows: list[list[Text]]
    styles: list[str | None]
    wrap: set[int]  # indexes of the columns that may wrap at spaces
    right: set[int]  # indexes of the right-justified columns
    compact: bool = True

    def widths(self, available: int, gap: int = 2) -> list[int]:
        """Content widths (without padding) of the columns for a table at most `available` wide, `gap`
        columns between the compact table's columns."""
        natural = [max([cell_len(h), *(r[i].cell_len for r in self.rows)]) for i, h in enumerate(self.headers)]
        least = [
            max([cell_len(h), *(_longest_word(r[i].plain) for r in self.rows)]) if i in self.wrap else natural[i]
            for i, h in enumerate(self.headers)
        ]
        widths = list(natural)
        excess = sum(widths) + self._extra(gap) - available
        while excess > 0:
            room = max(((widths[i] - least[i], i) for i in self.wrap if widths[i] > least[i]), default=None)
            if room is None:
                break
            widths[room[1]] -= 1
            excess -= 1
        return widths

    def _extra(self, gap: int) -> int:
        """Columns the table takes beyond its cells: the gaps, or the wide table's padding and borders."""
        n = len(self.headers)
        return gap * (n - 1) if self.compact else 3 * n + 1

    def layout(self, available: int) -> tuple[list[int], int]:
        """The column widths and the gap: two spaces between the compact table's columns, one where
        two would not fit `available`. The wide table (its borders) wraps nothing where it cannot fit
        anyway: it is then as wide as its longest cells."""
        widths = self.widths(available)
        if sum(widths) + self._extra(2) <= available:
            return widths, 2
        if self.compact:
            return self.widths(available, gap=1), 1
        return self.widths(1 << 16), 2

    def table(self, available: int) -> Table:
        widths, gap = self.layout(available)
        if self.compact:  # no borders: a rule under the header, `gap` spaces between columns
            pad = (0, 1) if gap == 2 else 0
            t = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=pad, pad_edge=False, collapse_padding=True)
        else:
            t = Table()
        t.header_style = "bold"
        for i, (h, w) in enumerate(zip(self.headers, widths, strict=True)):
            t.add_column(
                h, justify="right" if i in self.right else "left", width=w, no_wrap=i not in self.wrap, overflow="fold"
            )
        for texts, style in zip(self.rows, self.styles, strict=True):
            t.add_row(*texts, style=style)
        return t

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        t = self.table(options.max_width)
        need = Measurement.get(console, options.update_width(1 << 16), t).maximum
        yield from console.render(t, options.update_width(max(options.max_width, need)))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        t = self.table(options.max_width)
        return Measurement.get(console, options.update_width(1 << 16), t)


def choose_format(fmt: str | None, output: str | None = None) -> str:
    """The format asked for; else from the output file's suffix; else terminal. SpecError if unknown."""
    if fmt is None and output is not None:
        suffix = output[output.rfind(".") :].lower() if "." in output.rsplit("/", 1)[-1] else ""
        fmt = SUFFIX_FORMATS.get(suffix, "terminal")
    fmt = fmt or "terminal"
    if fmt not in FORMATS:
        raise SpecError("format", f"{fmt!r} is not a format; allowed: {', '.join(FORMATS)}")
    return fmt


def _columns(report: Report) -> list[str]:
    """The table's columns: `COLUMNS`, and `history` in a series report."""
    return [*COLUMNS, HISTORY_COLUMN] if report.series else list(COLUMNS)


def _cells(report: Report, row: Row) -> list[str]:
    return [*cells(row), history_text(row)] if report.series else cells(row)


def _row_style(row: Row) -> str | None:
    return next((STATUS_STYLE[f.kind] for f in row.flags if f.kind in _ROW_STYLED), None)


def _fit_table(
    headers: list[str], texts: list[list[str]], rows: list[Row], wrap: set[str], right: set[str], compact: bool
) -> FitTable:
    return FitTable(
        headers=headers,
        rows=[[Text(term(c)) for c in t] for t in texts],
        styles=[_row_style(r) for r in rows],
        wrap={i for i, h in enumerate(headers) if h in wrap},
        right={i for i, h in enumerate(headers) if h in right},
        compact=compact,
    )


def _compact_groups(report: Report, g: SpecGroup) -> list[tuple[str, list[Row]]]:
    """A spec's rows per run (the run id in the title, not a column), runs in the order they appear;
    a series report's rows (the latest of each series, from many runs) stay in one table."""
    if report.series:
        return [(g.title, g.rows)]
    runs: dict[str, list[Row]] = {}
    for row in g.rows:
        runs.setdefault(row.record.run_id, []).append(row)
    return [(f"run {run} · {g.title}", rows) for run, rows in runs.items()]


def terminal_tables(report: Report, wide: bool = False) -> list[tuple[str, FitTable]]:
    """The titled tables of the terminal view: compact (`COMPACT_COLUMNS`, one table per spec and run)
    or wide (`COLUMNS`, one table per spec, the run id a column)."""
    tables = []
    for g in report.groups:
        if wide:
            texts = [_cells(report, row) for row in g.rows]
            tables.append((g.title, _fit_table(_columns(report), texts, g.rows, _WIDE_WRAP, _WIDE_RIGHT, False)))
            continue
        for title, rows in _compact_groups(report, g):  # a series report: its history below the table
            texts = [compact_cells(r) for r in rows]
            tables.append((title, _fit_table(COMPACT_COLUMNS, texts, rows, _COMPACT_WRAP, _COMPACT_RIGHT, True)))
    return tables


def to_terminal(report: Report, wide: bool = False) -> Group:
    """Rich renderables: the title and header lines, the tables (`terminal_tables`), then what
    explains them, as text wrapped to the width: the peaks (and rooflines) the MFUs are relative to,
    (compact) each MFU against its roofline and a series report's history, then generation, scaling,
    notes and every flag in full.

    The compact table (the default) fits an 80-column terminal with the usual cells; `wide` shows
    every column. Either way no cell is cut (`…`): a table that cannot fit is wider than the console
    (`FitTable`); print it with `crop=False` to keep its right-hand columns."""
    parts: list[Any] = [
        Text(term(report.title), style="bold"),
        *(Text(term(line), style="dim") for line in header_lines(report)),
    ]
    for title, table in terminal_tables(report, wide):
        parts += [Text(""), Text(term(title), style="bold"), table]
    parts.append(Text(""))
    for line in report.peaks:
        parts.append(Text(term(line), style="dim"))
    if not wide:
        for line in mfu_lines(report):
            parts.append(Text(f"MFU: {term(line)}"))
        for line in history_lines(report):
            parts.append(Text(f"history: {term(line)}"))
    for line in generation_lines(report):
        parts.append(Text(f"generation: {term(line)}"))
    for line in scaling_lines(report):
        parts.append(Text(f"scaling: {term(line)}"))
    for note in report.notes:
        parts.append(Text(f"note: {term(note)}", style="yellow"))
    for line in flag_lines(report):
        parts.append(Text(f"flag: {term(line)}"))
    if not wide and report.groups:
        parts.append(Text(COMPACT_HINT, style="dim"))
    return Group(*parts)


def to_text(report: Report, width: int = 240, wide: bool = True) -> str:
    """The terminal format as plain text (for `-o report.txt`): a file has no width to fit, so every
    column (`wide`) unless asked otherwise."""
    return plain_text(to_terminal(report, wide), width)


def to_markdown(report: Report) -> str:
    out = [f"# {md(report.title)}", "", *(f"{md(line)}  " for line in header_lines(report)), ""]
    for g in report.groups:
        cols = _columns(report)
        out += [f"## {md(g.title)}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(md(c) for c in _cells(report, row)) + " |" for row in g.rows]
        out.append("")
    if report.peaks:
        out += ["**Peaks**", "", *(f"- {md(line)}" for line in report.peaks), ""]
    generation = generation_lines(report)
    if generation:
        out += ["**Generation**", "", *(f"- {md(line)}" for line in generation), ""]
    scaling = scaling_lines(report)
    if scaling:
        out += ["**Scaling (DDP)**", "", *(f"- {md(line)}" for line in scaling), ""]
    if report.notes:
        out += ["**Notes**", "", *(f"- {md(n)}" for n in report.notes), ""]
    lines = flag_lines(report)
    if lines:
        out += ["**Flags**", "", *(f"- {md(line)}" for line in lines), ""]
    return "\n".join(out)


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in report.rows:
        d = row_dict(row)
        d["flags"] = "; ".join(d["flags"])
        w.writerow({k: csv_cell(v) for k, v in d.items()})
    return buf.getvalue()


def to_json(report: Report) -> str:
    doc = {
        "title": report.title,
        "generated_at": report.generated_at.isoformat(),
        "selection": report.selection.describe(),
        "baseline": report.baseline.describe(),
        "notes": report.notes,
        "skipped_devices": [{"run_id": r, **d.model_dump(mode="json")} for r, d in report.skipped_devices],
        "results": len(report.records),
        "status_counts": report.status_counts(),
        "peaks": report.peaks,
        "rows": [{**row_dict(r), "times_s": r.phase.times if r.phase else []} for r in report.rows],
    }
    return json.dumps(doc, indent=1)


def terminal(obj: Report | Listing, wide: bool = False, width: int | None = None) -> Group:
    """The Rich renderable of a report (compact, or every column with `wide`) or a listing (for a
    terminal: colours, no markup read; laid out to read within `width`, unless `wide`)."""
    return to_terminal(obj, wide) if isinstance(obj, Report) else lst.to_terminal(obj, None if wide else width)


def render(obj: Report | Listing, fmt: str) -> str:
    """A report or a listing as text in a format of `FORMATS` (terminal: plain text, no colour).

    HTML of a report is the page `farm report --format html` writes, with its history section when
    the report carries history (`select(..., history=True)`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if isinstance(obj, Listing):
        return {
            "terminal": lst.to_text,
            "markdown": lst.to_markdown,
            "csv": lst.to_csv,
            "json": lst.to_json,
            "html": lst.to_html,
        }[fmt](obj)
    if fmt == "terminal":
        return to_text(obj)
    if fmt == "markdown":
        return to_markdown(obj)
    if fmt == "csv":
        return to_csv(obj)
    if fmt == "json":
        return to_json(obj)
    # matplotlib (drawn by farm.reports.html) is imported only for HTML: it costs a second at start-up.
    from farm.reports.html import render_html

    return render_html(obj)
