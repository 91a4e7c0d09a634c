"""Report formats: terminal (Rich), Markdown, CSV (one row per job and phase) and JSON.

Every format carries the same flags: a short label in the table, the full text below it (CSV and
JSON: a `flags` field per row and `notes` for the report). HTML is `farm.reports.html`.
This module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from farm.reports.cells import COLUMNS, cells, flag_lines, header_lines, row_dict
from farm.reports.report import Report

FORMATS = ("terminal", "markdown", "csv", "json", "html")
_STYLE = {"invalid": "bold magenta", "failed": "bold red", "oom": "bold red", "timeout": "bold yellow"}


def to_terminal(report: Report) -> Group:
    """Rich renderables: one table per spec, then notes and flags."""
    parts: list[Any] = [Text(report.title, style="bold"), *(Text(line, style="dim") for line in header_lines(report))]
    for g in report.groups:
        t = Table(title=g.title, header_style="bold", title_justify="left")
        for i, col in enumerate(COLUMNS):
            t.add_column(col, justify="right" if 4 <= i <= 11 else "left")
        for row in g.rows:
            style = next((_STYLE[f.kind] for f in row.flags if f.kind in _STYLE), None)
            t.add_row(*cells(row), style=style)
        parts.append(t)
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    for line in flag_lines(report):
        parts.append(Text(f"flag: {line}"))
    return Group(*parts)


def to_text(report: Report, width: int = 200) -> str:
    """The terminal format as plain text (for `-o report.txt`)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(to_terminal(report))
    return console.export_text()


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    out = [f"# {_md(report.title)}", "", *(f"{_md(line)}  " for line in header_lines(report)), ""]
    for g in report.groups:
        out += [f"## {_md(g.title)}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(_md(c) for c in cells(row)) + " |" for row in g.rows]
        out.append("")
    if report.notes:
        out += ["**Notes**", "", *(f"- {_md(n)}" for n in report.notes), ""]
    lines = flag_lines(report)
    if lines:
        out += ["**Flags**", "", *(f"- {_md(line)}" for line in lines), ""]
    return "\n".join(out)


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    w: csv.DictWriter[str] | None = None
    for row in report.rows:
        d = row_dict(row)
        d["flags"] = "; ".join(d["flags"])
        if w is None:
            w = csv.DictWriter(buf, fieldnames=list(d), lineterminator="\n")
            w.writeheader()
        w.writerow(d)
    return buf.getvalue()


def to_json(report: Report) -> str:
    doc = {
        "title": report.title,
        "generated_at": report.generated_at.isoformat(),
        "selection": report.selection.describe(),
        "baseline": report.baseline.describe(),
        "notes": report.notes,
        "results": len(report.records),
        "rows": [{**row_dict(r), "times_s": r.phase.times if r.phase else []} for r in report.rows],
    }
    return json.dumps(doc, indent=1)


def render(report: Report, fmt: str) -> str:
    """The report as text in a format of `FORMATS` (terminal: plain text, no colour)."""
    if fmt == "terminal":
        return to_text(report)
    if fmt == "markdown":
        return to_markdown(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "html":
        from farm.reports.html import render_html  # lazily: matplotlib is imported only for HTML

        return render_html(report)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
