"""`farm publish DIR`: the whole farm as a static site people open every morning (like `asv publish`).

Plain files, servable by any web server or opened from disk; nothing is fetched from a network
(CSS inline, plots as inline PNG). Pages, all linked from `index.html`:

- `index.html`: first the seed's question, the newest comparison of every spec against the CPU
  (each device's median and its speedup over the CPU of the same run, with the 95% CI); then the
  regressions of the last night per series, the machines, the recent runs and the spec pages.
- `specs/<spec hash>-<phase>.html`: that phase's history over nights, one plot per machine and
  device (medians with their CIs, regressions and improvements marked), and every point in a table.
- `runs/<run id>.html`: the `farm report` tables of each of the newest `max_run_pages` runs, each
  phase linked to its history page (plots are drawn once, on the spec pages).
- `regressions.html`: every regression and improvement found, newest first, linked to its series.

With FARM_PUBLISH_DIR set, every schedule firing republishes the site there (`install_publish_hook`,
registered by the CLI, so by every `farm worker` that serves the `control` queue and by
`farm schedule run`).

Every data string is escaped for HTML (`cells.html_text`, imported as `escape`). File names are
built from run ids, spec hashes and phase names, which the farm validates as `[A-Za-z0-9_.-]`.
This module never imports torch.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from farm.cluster.controller import store_for
from farm.nightly.regress import Point, Verdict, build_series, detect
from farm.nightly.schedule import AFTER_FIRE, Firing
from farm.reports import plots
from farm.reports.cells import COLUMNS, cells, fmt_seconds, header_lines, speedup_text
from farm.reports.cells import html_text as escape
from farm.reports.compare import DEFAULT_BASELINE
from farm.reports.history import MAX_SERIES, plotted
from farm.reports.html import CSS, figure, flag_badges
from farm.reports.report import Report, Row, build_report, phase_rank
from farm.results.records import Record
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import Settings

log = logging.getLogger(__name__)

MAX_RUN_PAGES = 30
RECENT_RUNS = 50
HISTORY_TITLE = "History: time per night (disturbed nights drawn apart), verdicts marked"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,159}$")

ProgressFn = Callable[[str, int, int], None]  # (page, done, total)


@dataclass
class Site:
    """What `publish` wrote."""

    root: Path
    pages: list[Path] = field(default_factory=list)
    results: int = 0
    runs: int = 0
    specs: int = 0
    regressions: int = 0


def _safe(name: str) -> str:
    if not SAFE_NAME.match(name):
        raise ValueError(f"unsafe page name {name[:40]!r}")  # the store's ids are validated: not reached
    return name


def spec_page(spec_hash: str, phase: str) -> str:
    return f"specs/{_safe(spec_hash)}-{_safe(phase)}.html"


def run_page(run_id: str) -> str:
    return f"runs/{_safe(run_id)}.html"


def _page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    nav = f'<p class="meta"><a href="{up}index.html">farm</a> · <a href="{up}regressions.html">regressions</a></p>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}"
        "a { color: #2050a0; } td.bad { color: #c62828; font-weight: 600; } td.good { color: #2e7d32; }"
        f"</style></head><body>{nav}<h1>{escape(title)}</h1>\n{body}\n"
        '<p class="meta">Static page made by farm publish: no network needed.</p></body></html>\n'
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "results") -> str:
    """A table whose cells are already-escaped HTML."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def _when(iso: str) -> str:
    return escape(iso[:16].replace("T", " "))


def _speedup(row: Row) -> str:
    return escape(speedup_text(row))


def _status(row: Row) -> str:
    """A row's status with its flags beside it as badges (`farm.reports.html.flag_badges`): an `ok`
    measured while the host was busy reads `ok contended`, not `ok`."""
    return f'<span class="status">{escape(row.status)}</span> {flag_badges(row, skip=row.status)}'.rstrip()


CHART_CAPTION = (
    "Median time per phase (log scale) on each device, the CPU (the baseline) first; bars: the median's 95% CI; "
    "above each bar its speedup over the CPU; hatched: a flagged result (named above it, explained in the run's page)."
)


def _spec_label(rec: Record) -> str:
    return f"{rec.model_name} · batch {rec.batch} x seq {rec.seq} · {rec.dtype} ({rec.spec_hash})"


def _comparisons(records: Sequence[Record], linked_runs: set[str]) -> str:
    """Per spec, its newest run: every device against the CPU of that run."""
    by_spec: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_spec[r.spec_hash].append(r)
    order = sorted(by_spec, key=lambda h: max(r.finished_at for r in by_spec[h]), reverse=True)
    parts = []
    for h in order:
        newest_run = max(by_spec[h], key=lambda r: r.finished_at).run_id
        recs = [r for r in by_spec[h] if r.run_id == newest_run]
        rep = build_report(recs, DEFAULT_BASELINE, pool=recs)
        rows, shown = [], []
        ordered = sorted(rep.rows, key=lambda x: (phase_rank(x.phase_name), not x.is_baseline, x.record.device))
        for row in ordered:
            if row.phase is None or (row.phase_name == "init" and not row.phase.median_s):
                continue
            shown.append(row)
            page = spec_page(h, row.phase_name)
            rows.append([
                f'<a href="{page}">{escape(row.phase_name)}</a>',
                escape(row.record.device),
                escape(row.record.machine_tag or "?"),
                escape(fmt_seconds(row.phase.median_s)),
                _speedup(row),
                _status(row),
            ])  # fmt: skip
        run = escape(newest_run)
        run_link = f'<a href="{run_page(newest_run)}">{run}</a>' if newest_run in linked_runs else run
        chart = plots.devices_png(shown, _spec_label(recs[0]))
        alt = f"median time per phase and device, {_spec_label(recs[0])}, run {newest_run}"
        parts.append(
            f'<section class="spec"><h2>{escape(_spec_label(recs[0]))}</h2>'
            f'<p class="meta">newest run {run_link}, {_when(max(r.finished_at for r in recs))} UTC; '
            "speedup = CPU median / device median, 95% bootstrap CI</p>"
            + (figure(chart, alt, CHART_CAPTION) if chart else "")
            + _table(["phase", "device", "machine", "median", "speedup vs cpu", "status and flags"], rows)
            + "</section>"
        )
    return "".join(parts) or "<p>No results stored yet.</p>"


def _verdict_rows(verdicts: Sequence[Verdict]) -> list[list[str]]:
    rows = []
    for v in sorted(verdicts, key=lambda v: v.finished_at, reverse=True):
        change = f"{v.change:+.1%}" if v.change is not None else "-"
        cls = "bad" if v.kind == "regression" else "good"
        rows.append([
            escape(v.finished_at.strftime("%Y-%m-%d %H:%M")),
            f'<a href="{spec_page(v.spec_hash, v.phase)}">{escape(f"{v.model} {v.phase}")}</a>',
            escape(v.machine),
            escape(v.device),
            f'<span class="{cls}">{escape(v.kind)}</span>',
            escape(change),
            escape(v.run_id),
        ])  # fmt: skip
    return rows


VERDICT_HEAD = ["when (UTC)", "series", "machine", "device", "verdict", "change", "run"]


def _index(
    records: Sequence[Record], verdicts: Sequence[Verdict], runs: list[tuple[str, dict[str, str]]], linked: set[str]
) -> str:
    parts = [
        '<p class="meta">Generated ' + escape(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
        + f" from {len(records):,} stored results.</p>"
    ]  # fmt: skip
    parts.append('<section id="compare"><h2>CPU against each device, newest run per spec</h2>')
    parts.append(_comparisons(records, linked) + "</section>")
    newest: dict[tuple[str, str, str, str], Verdict] = {}
    for v in verdicts:  # the newest verdict per series: what last night said
        if v.series not in newest or v.finished_at > newest[v.series].finished_at:
            newest[v.series] = v
    flagged = [v for v in newest.values() if v.kind in ("regression", "improvement")]
    parts.append('<section id="regressions"><h2>Last verdict per series: changes</h2>')
    if flagged:
        parts.append(_table(VERDICT_HEAD, _verdict_rows(flagged)))
    else:
        parts.append("<p>No series changed at its newest point.</p>")
    parts.append('<p><a href="regressions.html">every regression and improvement found</a></p></section>')
    machines: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        machines[r.machine_tag or "?"].append(r)
    mrows = []
    for tag, recs in sorted(machines.items()):
        last = max(recs, key=lambda r: r.finished_at)
        mrows.append([
            escape(tag),
            escape(last.cpu_model or "?"),
            escape(", ".join(sorted({g for r in recs for g in r.gpu_names})) or "-"),
            escape(", ".join(sorted({r.device for r in recs}))),
            f"{len(recs):,}",
            _when(last.finished_at),
        ])  # fmt: skip
    parts.append('<section id="machines"><h2>Machines</h2>')
    parts.append(_table(["machine", "CPU", "GPUs", "devices", "results", "last result (UTC)"], mrows) + "</section>")
    rrows = []
    for run_id, doc in runs:
        label = f'<a href="{run_page(run_id)}">{escape(run_id)}</a>' if run_id in linked else escape(run_id)
        rrows.append([label, escape(doc.get("name") or ""), doc.get("when", ""), doc.get("results", "0")])
    parts.append('<section id="runs"><h2>Recent runs</h2>')
    parts.append(_table(["run", "name", "created (UTC)", "results"], rrows) + "</section>")
    specs = sorted({(r.spec_hash, p, _spec_label(r)) for r in records for p in r.phases},
                   key=lambda s: (s[2], s[0], phase_rank(s[1])))  # fmt: skip
    items = "".join(f'<li><a href="{spec_page(h, p)}">{escape(label)} · {escape(p)}</a></li>' for h, p, label in specs)
    parts.append(f'<section id="specs"><h2>History per spec and phase</h2><ul>{items}</ul></section>')
    return "".join(parts)


def disturbed_flags(res: JobResult, phase: str) -> tuple[str, ...]:
    """The flags of one phase that mark it measured in a disturbed state (`plots.DISTURBED`, in that
    order): contended, noisy, outlier, drift, throttled."""
    ph = res.phases[phase]
    st = ph.stats
    on = {
        "contended": ph.host is not None and ph.host.contended,
        "noisy": st is not None and st.noisy,
        "outlier": st is not None and st.outlier,
        "drift": st is not None and st.drift,
        "throttled": ph.telemetry is not None and ph.telemetry.throttled,
    }
    return tuple(k for k in plots.DISTURBED if on[k])


def _history_point(p: Point, phase: str, marks: dict[tuple[str, str], str]) -> plots.HistoryPoint:
    ph = p.result.phases[phase]
    st, med = ph.stats, ph.median_s or 0.0
    mark = marks.get((p.result.job_id, phase))
    return plots.HistoryPoint(
        p.when, med, st.ci_low_s if st else None, st.ci_high_s if st else None,
        disturbed_flags(p.result, phase), mark if mark in ("regression", "improvement", "suspect") else None,
    )  # fmt: skip


def _history(phase: str, results: Sequence[JobResult], marks: dict[tuple[str, str], str]) -> str:
    """One plot per machine and device of a spec's phase: the clean nights joined by a line, the
    disturbed ones drawn apart (`plots.history_png`), verdicts marked; a caption counts them. The
    plots share one y axis, unit and x range (`plots.history_scale`): machines compare by eye."""
    series = {k: pts for k, pts in build_series(results).items() if k[3] == phase}
    parts = []
    shown = sorted(series, key=lambda k: (k[0], k[1]))[:MAX_SERIES]
    plotted_pts = {key: [p for p in series[key] if plotted(p)] for key in shown}
    all_drawn = {key: [_history_point(p, phase, marks) for p in pts] for key, pts in plotted_pts.items()}
    scale = plots.history_scale(all_drawn.values())  # one y axis and x range for every machine and device
    for key in shown:
        machine, device = key[0], key[1]
        pts, drawn = plotted_pts[key], all_drawn[key]
        counts = Counter(k for d in drawn for k in d.disturbed)
        n_disturbed = sum(1 for d in drawn if d.disturbed)
        kinds = Counter(d.mark for d in drawn if d.mark)
        caption = f"{machine} · {device}: {len(drawn)} results"
        caption += "".join(f", {n} {kind}" for kind, n in sorted(kinds.items()))
        if n_disturbed:
            listed = ", ".join(
                f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: plots.DISTURBED.index(kv[0]))
            )
            caption += f"; {n_disturbed} disturbed ({listed}), drawn apart from the line"
        if len(pts) < len(series[key]):
            caption += f"; {len(series[key]) - len(pts)} left out of the plot (date out of range)"
        png = plots.history_png(f"{machine} · {device} · {phase}", drawn, scale)
        parts.append(figure(png, caption, caption) if png else f"<p>{escape(caption)}</p>")
    if not parts:
        return "<p>No history yet: a series needs stored results with raw times.</p>"
    if len(series) > MAX_SERIES:
        parts.append(f"<p>{len(series) - MAX_SERIES} more series not shown.</p>")
    return "\n".join(parts)


def _spec_body(
    spec_hash: str, phase: str, results: Sequence[JobResult], verdicts: Sequence[Verdict], linked: set[str]
) -> str:
    kinds = {(v.job_id, v.phase): v for v in verdicts}
    plotted_html = _history(phase, results, {k: v.kind for k, v in kinds.items()})
    rows = []
    for res in sorted(results, key=lambda r: r.finished_at or r.started_at, reverse=True):
        ph = res.phases.get(phase)
        if ph is None:
            continue
        st = ph.stats
        v = kinds.get((res.job_id, phase))
        verdict = escape(v.kind) if v else "-"
        if v and v.kind in ("regression", "improvement"):
            verdict = f'<span class="{"bad" if v.kind == "regression" else "good"}">{verdict}</span>'
        run = escape(res.run_id)
        flags = "".join(f'<span class="flag flag-{k}">{k}</span>' for k in disturbed_flags(res, phase))
        rows.append([
            escape((res.finished_at or res.started_at).strftime("%Y-%m-%d %H:%M")),
            f'<a href="../{run_page(res.run_id)}">{run}</a>' if res.run_id in linked else run,
            escape(res.machine.machine_tag if res.machine else "?"),
            escape(res.device),
            escape(fmt_seconds(ph.median_s)),
            escape(f"[{fmt_seconds(st.ci_low_s)}, {fmt_seconds(st.ci_high_s)}]") if st else "-",
            str(st.n if st else 0),
            escape(ph.status),
            flags or "-",
            verdict,
        ])  # fmt: skip
    head = ["finished (UTC)", "run", "machine", "device", "median", "CI of the median", "n", "status", "flags",
            "verdict"]  # fmt: skip
    return (
        f'<section class="history"><h2>{escape(HISTORY_TITLE)}</h2>{plotted_html}</section>'
        "<h2>Every result</h2>" + _table(head, rows)
    )


def _run_body(report: Report) -> str:
    """A run's `farm report` tables (one per spec) and flags; its plots are on the spec pages."""
    parts = [f'<p class="meta">{escape(line)}</p>' for line in header_lines(report)]
    for g in report.groups:
        rows = []
        for row in g.rows:
            texts = cells(row)
            if row.phase is not None:
                texts[COLUMNS.index("phase")] = (
                    f'<a href="../{spec_page(row.record.spec_hash, row.phase_name)}">{escape(row.phase_name)}</a>'
                )
            rows.append([t if t.startswith("<a ") else escape(t) for t in texts])
        parts.append(f"<h2>{escape(g.title)}</h2>" + _table(list(COLUMNS), rows))
    flags = [f"{escape(r.record.series)} {escape(r.phase_name)}: {escape(f.kind)}: {escape(f.text)}"
             for r in report.rows for f in r.flags]  # fmt: skip
    if flags:
        parts.append("<h2>Flags</h2><ul>" + "".join(f"<li>{f}</li>" for f in flags) + "</ul>")
    return "".join(parts)


def _write(root: Path, rel: str, text: str, site: Site) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # a reader (a web server) never sees half a page
    site.pages.append(path)


def publish(
    store: ResultStore,
    root: str | Path,
    *,
    max_run_pages: int = MAX_RUN_PAGES,
    on_progress: ProgressFn | None = None,
) -> Site:
    """Write the site for every stored result into `root` (created if needed); pages are replaced whole."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    site = Site(root=root)
    ids = store.query_ids()
    records = store.load_records(ids)
    results = store.get_results(ids)
    site.results = len(records)
    first = min((r.finished_at or r.started_at for r in results), default=None)
    verdicts = detect(results, since=first) if first else []
    run_ids = store.list_runs(RECENT_RUNS)[::-1]  # newest first
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[r.run_id] += 1
    with_results = [r for r in run_ids if counts.get(r)]
    linked = set(with_results[:max_run_pages])
    runs_doc = []
    for run_id in run_ids:
        doc = store.get_run(run_id)
        when = datetime.fromtimestamp(float(doc["created_at"]), UTC).strftime("%Y-%m-%d %H:%M")
        runs_doc.append((run_id, {"name": doc.get("name") or "", "when": when, "results": str(counts.get(run_id, 0))}))
    by_spec_phase: dict[tuple[str, str], list[JobResult]] = defaultdict(list)
    for res in results:
        for phase in res.phases:
            by_spec_phase[(res.spec_hash, phase)].append(res)
    total = 2 + len(linked) + len(by_spec_phase)
    done = 0

    def tick(page: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(page, done, total)

    for (h, phase), res_list in sorted(by_spec_phase.items(), key=lambda kv: (kv[0][0], phase_rank(kv[0][1]))):
        label = _spec_label(next(r for r in records if r.spec_hash == h))
        body = _spec_body(h, phase, res_list, [v for v in verdicts if v.spec_hash == h and v.phase == phase], linked)
        _write(root, spec_page(h, phase), _page(f"{label} · {phase}", body, depth=1), site)
        tick(spec_page(h, phase))
    by_run: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_run[r.run_id].append(r)
    for run_id in sorted(linked):
        recs = by_run[run_id]
        report = build_report(recs, DEFAULT_BASELINE, pool=recs, title=f"run {run_id}")
        _write(root, run_page(run_id), _page(report.title, _run_body(report), depth=1), site)
        tick(run_page(run_id))
    changes = [v for v in verdicts if v.kind in ("regression", "improvement")]
    site.regressions = sum(v.kind == "regression" for v in changes)
    body = _table(VERDICT_HEAD, _verdict_rows(changes)) if changes else "<p>None found.</p>"
    _write(root, "regressions.html", _page("Regressions and improvements", body, depth=0), site)
    tick("regressions.html")
    _write(root, "index.html", _page("farm", _index(records, verdicts, runs_doc, linked), depth=0), site)
    tick("index.html")
    site.runs, site.specs = len(linked), len({h for h, _ in by_spec_phase})
    return site


def publish_after_fire(firing: Firing, settings: Settings) -> None:
    """The after-firing hook: republish FARM_PUBLISH_DIR with every result stored so far (the night
    that just fired is queued; the site shows the nights that have finished)."""
    if settings.publish_dir is not None:
        site = publish(store_for(settings), settings.publish_dir)
        log.info("schedule %s: published %d pages to %s", firing.schedule, len(site.pages), site.root)


def install_publish_hook() -> None:
    """Register `publish_after_fire` with the schedules (once per process; the CLI calls it)."""
    if publish_after_fire not in AFTER_FIRE:
        AFTER_FIRE.append(publish_after_fire)
