"""The one output layer: reports and listings in every format (`FORMATS`).

Reports: terminal (Rich), Markdown, CSV (one row per job and phase, `cells.row_dict`) and JSON
here, HTML in `farm.reports.html` (with the history section when the report carries it). Every
format carries the same flags: a short label in the table, the full text below it (CSV and JSON:
a `flags` field per row and `notes` for the report), the results counted per status (unverified
apart from ok) and the peak (and roofline) each MFU is relative to. Listings (`farm.reports.listing.Listing`):
the same formats. `render(obj, fmt)` is text; `terminal(obj)` the Rich renderable.
Data text goes through its format's escaping function (`farm.reports.cells`: `term`, `md`,
`csv_cell`, `html.escape`). This module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from farm.errors import SpecError
from farm.reports import listing as lst
from farm.reports.cells import (
    COLUMNS,
    HISTORY_COLUMN,
    ROW_FIELDS,
    STATUS_STYLE,
    cells,
    csv_cell,
    flag_lines,
    generation_lines,
    header_lines,
    history_text,
    md,
    plain_text,
    row_dict,
    scaling_lines,
    term,
)
from farm.reports.listing import Listing
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
# Columns (by `COLUMNS` index) never wrapped: run id, CI, MFU, speedup. Every column is as wide as its
# header and its longest cell, so on a narrow terminal the table is wider than it: no cell is cut (`…`).
_WHOLE = {COLUMNS.index("run"), COLUMNS.index("95% CI (cov.)"), COLUMNS.index("MFU"), COLUMNS.index("speedup [95% CI]")}


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


def to_terminal(report: Report) -> Group:
    """Rich renderables: one table per spec, then notes and flags.

    No cell is cut (`…`), and the run id, CI, MFU and speedup cells are never wrapped: where the
    console is narrower than the table, the table is wider than it; print it with `crop=False` to
    keep its right-hand columns."""
    parts: list[Any] = [
        Text(term(report.title), style="bold"),
        *(Text(term(line), style="dim") for line in header_lines(report)),
    ]
    for g in report.groups:
        t = Table(title=Text(term(g.title)), header_style="bold", title_justify="left")
        rows = [[Text(term(c)) for c in _cells(report, row)] for row in g.rows]
        for i, col in enumerate(_columns(report)):
            t.add_column(
                col,
                justify="right" if 4 <= i <= 11 else "left",
                no_wrap=i in _WHOLE,
                min_width=max([len(col), *(r[i].cell_len for r in rows)]),
            )
        for row, texts in zip(g.rows, rows, strict=True):
            style = next((STATUS_STYLE[f.kind] for f in row.flags if f.kind in _ROW_STYLED), None)
            t.add_row(*texts, style=style)
        parts.append(t)
    for line in report.peaks:
        parts.append(Text(term(line), style="dim"))
    for line in generation_lines(report):
        parts.append(Text(f"generation: {term(line)}"))
    for line in scaling_lines(report):
        parts.append(Text(f"scaling: {term(line)}"))
    for note in report.notes:
        parts.append(Text(f"note: {term(note)}", style="yellow"))
    for line in flag_lines(report):
        parts.append(Text(f"flag: {term(line)}"))
    return Group(*parts)


def to_text(report: Report, width: int = 240) -> str:
    """The terminal format as plain text (for `-o report.txt`)."""
    return plain_text(to_terminal(report), width)


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
        "results": len(report.records),
        "status_counts": report.status_counts(),
        "peaks": report.peaks,
        "rows": [{**row_dict(r), "times_s": r.phase.times if r.phase else []} for r in report.rows],
    }
    return json.dumps(doc, indent=1)


def terminal(obj: Report | Listing) -> Group:
    """The Rich renderable of a report or a listing (for a terminal: colours, no markup read)."""
    return to_terminal(obj) if isinstance(obj, Report) else lst.to_terminal(obj)


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
