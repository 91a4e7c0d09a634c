"""Listings: the generic table every command that lists things prints (jobs of a run, workers,
verdicts, schedules, sweep points, environment differences), in every format of
`farm.reports.formats.FORMATS`.

A `Listing` is a title, columns, rows of plain values (str, int, float, None), a status per row
(a key of `farm.reports.cells.STATUS_STYLE`: the row's colour in the terminal, its class in HTML)
and notes. JSON is `doc` when the command has a document shape of its own (kept for scripts),
else `{"title", "rows": [{column: value}], "notes"}`. Text from data is never read as Rich markup;
each format escapes it with its function of `farm.reports.cells` (`term`, `md`, `csv_cell`, `html.escape`).
Never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from farm.reports.cells import STATUS_STYLE, csv_cell, md, plain_text, term
from farm.reports.cells import html_text as escape

Value = str | int | float | bool | None


@dataclass
class Listing:
    title: str
    columns: list[str]
    rows: list[list[Value]] = field(default_factory=list)
    statuses: list[str | None] = field(default_factory=list)  # one per row (may be shorter: no status)
    notes: list[str] = field(default_factory=list)
    doc: Any = None  # the JSON document, when the command has its own shape

    def add(self, *values: Value, status: str | None = None) -> None:
        self.rows.append(list(values))
        self.statuses.append(status)

    def status_of(self, i: int) -> str | None:
        return self.statuses[i] if i < len(self.statuses) else None


def cell(value: Value) -> str:
    """A value as display text: None is `-`."""
    return "-" if value is None or value == "" else str(value)


def _table(title: str | None, columns: list[str], rows: list[list[Value]], styles: list[str | None]) -> Table:
    t = Table(title=None if title is None else Text(term(title)), header_style="bold")
    for col in columns:
        t.add_column(Text(term(col)))
    for row, style in zip(rows, styles, strict=True):
        t.add_row(*(Text(term(cell(v))) for v in row), style=STATUS_STYLE.get(style or ""))
    return t


def natural_width(renderable: Table) -> int:
    """The width a table takes when nothing folds."""
    console = Console(file=io.StringIO(), width=10_000)
    return Measurement.get(console, console.options, renderable).maximum


def to_terminal(listing: Listing, width: int | None = None) -> Group:
    """The listing as a Rich table; within `width` where it can be. A table wider than `width` (an
    80-column terminal) is laid out to read rather than be squeezed to an ellipsis a cell: one row
    becomes a column of `field  value`; several rows show the columns whose value every row shares
    once, above the table, and the rest as columns."""
    styles = [listing.status_of(i) for i in range(len(listing.rows))]
    table = _table(listing.title, listing.columns, listing.rows, styles)
    lines: list[Text] = []
    if width is not None and listing.rows and natural_width(table) > width:
        lines.append(Text(term(listing.title), style="italic"))  # a title over a narrow table: one line
        if len(listing.rows) == 1:
            pairs: list[list[Value]] = [[c, cell(v)] for c, v in zip(listing.columns, listing.rows[0], strict=False)]
            table = _table(None, ["field", "value"], pairs, [styles[0]] * len(pairs))
        else:
            cols = range(len(listing.columns))
            shared = [i for i in cols if len({cell(r[i]) for r in listing.rows}) == 1]
            if len(shared) == len(listing.columns):  # identical rows: nothing to lift out
                shared = []
            kept = [i for i in cols if i not in shared]
            rows = [[r[i] for i in kept] for r in listing.rows]
            table = _table(None, [listing.columns[i] for i in kept], rows, styles)
            if shared:
                common = " · ".join(f"{listing.columns[i]} {cell(listing.rows[0][i])}" for i in shared)
                lines.append(Text(term(f"every row: {common}")))
    return Group(*lines, table, *(Text(f"note: {term(n)}", style="yellow") for n in listing.notes))


def to_text(listing: Listing, width: int = 200) -> str:
    return plain_text(to_terminal(listing), width)


def to_markdown(listing: Listing) -> str:
    out = [f"# {md(listing.title)}", "", "| " + " | ".join(md(c) for c in listing.columns) + " |"]
    out.append("|" + "---|" * len(listing.columns))
    out += ["| " + " | ".join(md(cell(v)) for v in row) + " |" for row in listing.rows]
    if listing.notes:
        out += ["", *(f"- {md(n)}" for n in listing.notes)]
    return "\n".join(out) + "\n"


def to_csv(listing: Listing) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([csv_cell(c) for c in listing.columns])
    w.writerows([["" if v is None else csv_cell(v) for v in row] for row in listing.rows])
    return buf.getvalue()


def to_json(listing: Listing) -> str:
    doc = listing.doc
    if doc is None:
        rows = [dict(zip(listing.columns, row, strict=True)) for row in listing.rows]
        doc = {"title": listing.title, "rows": rows, "notes": listing.notes}
    return json.dumps(doc, indent=2)


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } table { border-collapse: collapse; font-size: 12px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; } .notes { color: #8a6d00; }
tr.status-failed td, tr.status-oom td, tr.status-regression td, tr.status-skipped td { background: #fdecea; }
tr.status-invalid td { background: #fbe9f5; } tr.status-timeout td, tr.status-unserved td { background: #fff6e0; }
tr.status-improvement td, tr.status-ok td, tr.status-done td { background: #eef8ee; }
tr.status-cancelled td, tr.status-no-verdict td { color: #888; }
tr.status-unverified td { background: #e6f4f7; font-style: italic; }
"""


def to_html(listing: Listing) -> str:
    """One self-contained HTML page (inline CSS, nothing fetched), every value escaped."""
    head = "".join(f"<th>{escape(c)}</th>" for c in listing.columns)
    body = []
    for i, row in enumerate(listing.rows):
        status = listing.status_of(i)
        cls = f' class="status-{escape(status)}"' if status else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(cell(v))}</td>" for v in row) + "</tr>")
    notes = "".join(f'<p class="notes">{escape(n)}</p>' for n in listing.notes)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(listing.title)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>{escape(listing.title)}</h1>\n<table><thead><tr>{head}</tr></thead><tbody>\n"
        + "\n".join(body)
        + f"\n</tbody></table>\n{notes}\n<p>Made by farm.</p></body></html>\n"
    )
