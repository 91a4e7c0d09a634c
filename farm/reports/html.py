"""One self-contained HTML report: inline CSS, plots as base64 PNG, nothing fetched from a network.

`render_html(report, extra_sections=())` draws the history section itself when the report carries
its history (`Report.history`, loaded by `select(..., history=True)`); `extra_sections` is the
hook other features use to add sections: each is `(title, html_fragment)`, appended after the
report's own sections. The fragment is inserted as given (it is trusted HTML from farm code);
the title is escaped. Plots are drawn for the first `MAX_PLOTTED_GROUPS` specs; every spec gets
its table. Data text is escaped with `cells.html_text` (imported as `escape`); plots draw it as
plain text (`farm.reports.plots`). This module never imports torch.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from farm.reports import plots
from farm.reports.cells import (
    COLUMNS,
    HISTORY_COLUMN,
    SEVERE,
    cells,
    generation_lines,
    header_lines,
    history_text,
    scaling_lines,
)
from farm.reports.cells import html_text as escape
from farm.reports.history import results_section
from farm.reports.report import Report, Row

MAX_PLOTTED_GROUPS = 8

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #666; margin: 2px 0; font-size: 12px; }
table.results { border-collapse: collapse; font-size: 12px; margin: 6px 0 12px; }
table.results th, table.results td { border-bottom: 1px solid #ddd; padding: 3px 8px; white-space: nowrap; }
table.results th { background: #f3f3f3; text-align: left; }
table.results td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.status-invalid td { background: #fbe9f5; } tr.status-failed td, tr.status-oom td { background: #fdecea; }
tr.status-timeout td { background: #fff6e0; } tr.baseline td { font-weight: 600; }
tr.status-unverified td { background: #e6f4f7; font-style: italic; } tr.above-peak td { background: #fbe9f5; }
.flag { display: inline-block; border-radius: 3px; padding: 0 5px; margin-right: 3px; font-size: 11px; }
.flag-invalid { background: #C44E9B; color: white; } .flag-failed, .flag-oom { background: #c62828; color: white; }
.flag-timeout { background: #f9a825; } .flag-cancelled { background: #999; color: white; }
.flag-noisy { background: #ffe082; } .flag-versions { background: #90caf9; } .flag-baseline { background: #ddd; }
.flag-unverified { background: #fff; color: #00838f; border: 1px dashed #00838f; }
.flag-above-peak { background: #C44E9B; color: white; outline: 2px solid #6a1b4d; }
.flag-outlier { background: #ffcc80; } .flag-drift { background: #ce93d8; } .flag-contended { background: #bcaaa4; }
.flag-throttled { background: #ef9a9a; }
.notes { border-left: 4px solid #f9a825; background: #fffbea; padding: 6px 12px; margin: 12px 0; }
ul.flags li { margin: 2px 0; font-size: 12px; }
figure { margin: 8px 0 20px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
"""


def figure(png: bytes, alt: str, caption: str) -> str:
    """An inline PNG in a `<figure>` (class `plot`) with its alt text and caption, both escaped."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img class="plot" alt="{escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def flag_badges(row: Row, skip: str | None = None) -> str:
    """The row's flags as badges (`span.flag.flag-<kind>`), one per kind, every text in its tooltip;
    the kind `skip` left out (a status cell that already names it). Empty without flags."""
    texts: dict[str, list[str]] = {}
    for f in row.flags:
        if f.kind != skip:
            texts.setdefault(f.kind, []).append(f.text)
    return "".join(
        f'<span class="flag flag-{escape(k)}" title="{escape("; ".join(v))}">'
        f"{escape(k.upper() if k in SEVERE else k)}</span>"
        for k, v in texts.items()
    )


def _row_html(row: Row, series: bool = False) -> str:
    classes = [f"status-{row.status}"] + (["baseline"] if row.is_baseline else [])
    if any(f.kind == "above-peak" for f in row.flags):
        classes.append("above-peak")
    tds = []
    for i, (col, text) in enumerate(zip(COLUMNS, cells(row), strict=True)):
        if col == "flags":
            tds.append(f"<td>{flag_badges(row) or 'ok'}</td>")
        else:
            tds.append(f'<td class="num">{escape(text)}</td>' if 4 <= i <= 11 else f"<td>{escape(text)}</td>")
    if series:  # a series report: the row's history over the selection
        tds.append(f'<td class="history">{escape(history_text(row))}</td>')
    return f'<tr class="{" ".join(classes)}">{"".join(tds)}</tr>'


def _flags_html(report: Report) -> str:
    items = [
        f'<li class="flag-line"><span class="flag flag-{escape(f.kind)}">{escape(f.kind)}</span>'
        f"{escape(row.record.series)}, run {escape(row.record.run_id)}, {escape(row.phase_name)}: {escape(f.text)}</li>"
        for row in report.rows
        for f in row.flags
    ]
    return f'<h2>Flags</h2><ul class="flags">{"".join(items)}</ul>' if items else ""


def render_html(report: Report, extra_sections: Sequence[tuple[str, str]] = ()) -> str:
    """The report as one HTML document (tables, plots, flags, the history when the report carries
    it (`Report.history`), then `extra_sections`)."""
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(report.title)}</h1>",
        *(f'<p class="meta">{escape(line)}</p>' for line in header_lines(report)),
        *(f'<p class="meta peak">{escape(line)}</p>' for line in report.peaks),
    ]
    if report.notes:
        parts.append('<div class="notes">' + "".join(f"<p>{escape(n)}</p>" for n in report.notes) + "</div>")
    head = "".join(f"<th>{escape(c)}</th>" for c in [*COLUMNS, *([HISTORY_COLUMN] if report.series else [])])
    for i, g in enumerate(report.groups):
        parts.append(f'<section class="group"><h2>{escape(g.title)}</h2>')
        parts.append(f'<table class="results"><thead><tr>{head}</tr></thead><tbody>')
        parts.extend(_row_html(r, report.series is not None) for r in g.rows)
        parts.append("</tbody></table>")
        if i < MAX_PLOTTED_GROUPS:
            bars = plots.time_bars_png(g)
            if bars:
                parts.append(
                    figure(bars, f"median time by device, {g.title}", "Median time per phase (log scale), 95% CI.")
                )
            sp = plots.speedup_png(g)
            if sp:
                parts.append(figure(sp, f"speedup, {g.title}", f"Speedup vs baseline ({report.baseline.describe()})."))
        parts.append("</section>")
    if len(report.groups) > MAX_PLOTTED_GROUPS:
        parts.append(
            f'<p class="meta">Plots drawn for the first {MAX_PLOTTED_GROUPS} of {len(report.groups)} specs.</p>'
        )
    scaling = plots.scaling_png(report)
    if scaling:
        axis = plots.scaling_axis(report)
        parts.append('<section class="scaling"><h2>Scaling</h2>')
        parts.append(figure(scaling, "scaling plot", f"Median time against {axis} (log-log), 95% CI."))
        parts.append("</section>")
    generation = generation_lines(report)
    if generation:
        items = "".join(f"<li>{escape(line)}</li>" for line in generation)
        parts.append(f'<section class="generation"><h2>Generation</h2><ul>{items}</ul></section>')
    ddp = scaling_lines(report)
    if ddp:
        items = "".join(f"<li>{escape(line)}</li>" for line in ddp)
        parts.append(f'<section class="ddp"><h2>Scaling over devices (DDP)</h2><ul>{items}</ul></section>')
    parts.append(_flags_html(report))
    history = results_section(report.history) if report.history else None
    for title, fragment in [*([history] if history else []), *extra_sections]:
        parts.append(f'<section class="extra"><h2>{escape(title)}</h2>{fragment}</section>')
    parts.append('<p class="meta">Self-contained: no network needed. Made by farm.</p></body></html>')
    return "\n".join(parts)
