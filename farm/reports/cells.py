"""The cells of a report row, shared by every format: display text per column, the flag labels,
the header lines, and the same row as plain values (CSV and JSON); and the one escaping function
of each format, through which every data string (machine, host, model, tag, error, run name) is shown:

- terminal, `term`: control characters (C0, DEL, C1: ESC, CR, BEL, newline) and bidi controls
  shown escaped (`\\x1b`, `\\u202e`); shown as `rich.text.Text`, so never read as markup.
- Markdown, `md`: backslash, pipe and backtick escaped, `](` as `]\\(` (no link or image), `& < >`
  as entities (no raw HTML or autolink), CR/LF as spaces, other control characters as by `term`.
- CSV, `csv_cell`: a text cell beginning with `=`, `+`, `-`, `@`, tab or CR gets a `'` prefix
  (OWASP's CSV-injection advice); numbers stay numbers; control and bidi characters other than
  tab, CR and LF shown escaped (CSV is printed to terminals too).
- HTML, `html_text`: `html.escape`, control and bidi characters other than tab, CR and LF shown
  escaped (the HTML modules import it as `escape`).
- matplotlib labels, `plot_label`: control characters dropped, length capped; every plot is drawn
  with mathtext off (`MATH_OFF`), so `$...$` is text.
- webhook text: `farm.nightly.webhook.webhook_text` (a layer below this one).

JSON needs none (`json.dumps` escapes control characters). `write_text_atomic` writes an output
file whole or not at all. Never imports torch.
"""

from __future__ import annotations

import errno
import html
import io
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType

from farm.reports.compare import Ratio
from farm.reports.report import Report, Row, peak_kind
from farm.results.peaks import is_upper_bound
from farm.results.records import PhaseRecord
from farm.results.telemetry import throttle_text

SEVERE = {"invalid", "above-peak", "failed", "oom", "timeout", "cancelled"}

# The one status-colour map (Rich styles) of every format and listing: job and phase statuses,
# job states and regression verdicts.
STATUS_STYLE = {
    "ok": "green",
    "done": "green",
    "unverified": "bold cyan",  # measured, unchecked: neither ok's green nor invalid's magenta
    "invalid": "bold magenta",
    "above-peak": "bold magenta",
    "failed": "bold red",
    "oom": "bold red",
    "timeout": "bold yellow",
    "cancelled": "dim",
    "unserved": "yellow",
    "skipped": "red",
    "regression": "bold red",
    "improvement": "green",
    "no-verdict": "dim",
}
COLUMNS = [
    "run",
    "machine",
    "device",
    "phase",
    "median",
    "95% CI (cov.)",
    "n",
    "tokens/s",
    "FLOP/s",
    "MFU",
    "peak mem",
    "speedup [95% CI]",
    "flags",
]


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    # Three significant digits; the unit is chosen after rounding, so 0.9996 s is "1 s", not "1e+03 ms".
    r = float(f"{s:.3g}")
    if r >= 100:
        return f"{s:.0f} s"
    if r >= 1:
        return f"{r:g} s"
    if r >= 1e-3:
        return f"{r * 1e3:.3g} ms"
    return f"{r * 1e6:.3g} µs"


_SI = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def fmt_flops(f: float | None) -> str:
    """FLOP/s with an SI prefix chosen per value, three significant digits: `86.2 G`, `45.2 T`,
    `512 M`; the prefix is chosen after rounding (999.96e9 is `1 T`). `-` for none or zero."""
    if not f:
        return "-"
    r = float(f"{f:.3g}")
    for size, prefix in _SI:
        if abs(r) >= size:
            return f"{r / size:.3g} {prefix}"
    return f"{r:.3g}"


def fmt_bytes(b: int | None) -> str:
    if not b:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b} B"


def ratio_text(s: Ratio | None, is_baseline: bool = False) -> str:
    """A speedup and its interval as every format shows it: `1.44× [1.39, 1.62]`, with the interval's
    note and real coverage where it has them, `1.3× (no CI: n<5)` without one, `baseline`, or `-`."""
    if is_baseline:
        return "baseline"
    if s is None:
        return "-"
    if s.low is None or s.high is None:
        return f"{s.value:.3g}× ({s.note or 'no CI'})"
    text = f"{s.value:.3g}× [{s.low:.3g}, {s.high:.3g}]"
    extra = s.note or (f"coverage {s.coverage:.0%}" if s.coverage is not None else None)  # a note names it
    return f"{text} ({extra})" if extra else text


def speedup_text(row: Row) -> str:
    text = ratio_text(row.speedup, row.is_baseline)
    if row.is_baseline or row.speedup is None:
        return text
    side = row.speedup_unverified
    if side:
        text += " (unverified)" if side == "result" else f" ({side} unverified)"
    return text


def roofline_fraction(row: Row) -> float | None:
    """Achieved FLOP/s over the measured roofline, when the phase has both."""
    p = row.phase
    if p is None or not p.achieved_flops or not p.roofline_flops:
        return None
    return p.achieved_flops / p.roofline_flops


def mfu_text(row: Row) -> str:
    """The MFU naming its peak's kind, the roofline fraction beside it: `31.0% of theoretical (roofline 58.0%)`;
    `≥ 31.0% of upper bound` where the peak is only an upper bound (the MFU a lower bound).

    An `ok` row above 100% is marked (judge() makes such a phase invalid: it is a bug elsewhere).
    """
    p = row.phase
    if p is None:
        return "-"
    text = "-"
    if p.mfu is not None:
        # Against an upper bound (a CPU core not in the table) the true MFU is at least this.
        floor = "≥ " if is_upper_bound(p.peak_source) else ""
        text = f"{floor}{p.mfu:.1%} of {peak_kind(p.peak_source)}"
        if p.mfu > 1.0 and row.status == "ok":
            text += " (ABOVE PEAK)"
    roof = roofline_fraction(row)
    if roof is not None:
        text = f"{text} (roofline {roof:.1%})" if p.mfu is not None else f"- (roofline {roof:.1%})"
    return text


def repeats_text(row: Row) -> str:
    p = row.phase
    if p is None:
        return "0"
    return f"{p.n} (auto: {p.repeats_stop})" if p.repeats_stop else str(p.n)


HISTORY_COLUMN = "history"  # the extra column of a series report's tables (`history_text`)


def history_text(row: Row) -> str:
    """A series report row's history: `365 results, median 1.02 s (0.98 s–1.10 s), +3.1% first→last week`."""
    h = row.history
    if h is None:
        return "-"
    text = f"{h.n} result{'' if h.n == 1 else 's'}"
    if h.median_s is not None:
        text += f", median {fmt_seconds(h.median_s)} ({fmt_seconds(h.min_s)}–{fmt_seconds(h.max_s)})"
    if h.change is not None:
        text += f", {h.change:+.1%} first→last {h.window}"
    return text + f", latest {h.last.isoformat(timespec='minutes')}"


def history_values(row: Row) -> dict[str, Any]:
    """The `history_*` fields of a row (None outside a series report)."""
    h = row.history
    return {
        "history_n": h.n if h else None,
        "history_median_s": h.median_s if h else None,
        "history_min_s": h.min_s if h else None,
        "history_max_s": h.max_s if h else None,
        "history_change": h.change if h else None,
        "history_window": h.window if h else None,
        "history_first": h.first.isoformat() if h else None,
        "history_last": h.last.isoformat() if h else None,
    }


def flag_labels(row: Row) -> str:
    kinds = dict.fromkeys(f.kind for f in row.flags)  # one label per kind; the full texts are listed apart
    return ", ".join(k.upper() if k in SEVERE else k for k in kinds)


def cells(row: Row) -> list[str]:
    """The display cells of a row, in `COLUMNS` order."""
    rec, p = row.record, row.phase
    ci = "-"
    if p and p.n > 1 and p.ci_low_s is not None and p.ci_high_s is not None:
        ci = f"{fmt_seconds(p.ci_low_s)} – {fmt_seconds(p.ci_high_s)} ({p.ci_coverage or 0:.0%})"
    return [
        rec.run_id,
        rec.machine_tag or "-",
        rec.device + (f" x{int(w)}" if (w := scaling_values(p)["world_size"]) else ""),  # DDP: devices of the job
        row.phase_name,
        fmt_seconds(p.median_s) if p else "-",
        ci,
        repeats_text(row),
        f"{p.tokens_per_s:,.0f}" if p and p.tokens_per_s else "-",
        fmt_flops(p.achieved_flops if p else None),
        mfu_text(row),
        fmt_bytes(p.peak_memory_bytes) if p else "-",
        speedup_text(row),
        flag_labels(row) or "ok",
    ]


# The compact terminal table's columns (`compact_cells`): what a person reads first, short enough for an
# 80-column terminal; the run id and the spec are in the table's title. `--wide` shows `COLUMNS`.
COMPACT_COLUMNS = ["phase", "device", "machine", "median", "95% CI", "speedup", "MFU", "flags"]


def _unit(text: str) -> tuple[str, str]:
    number, _, unit = text.partition(" ")
    return number, unit


def short_ci(row: Row) -> str:
    """The median's 95% CI in short, beside the median: `490–520` in the median's unit (`500 ms`), with
    units where an end's differs from it: `998 µs–1.01 ms` beside `1 ms`."""
    p = row.phase
    if not p or p.n <= 1 or p.ci_low_s is None or p.ci_high_s is None:
        return "-"
    (lo, lo_unit), (hi, hi_unit) = _unit(fmt_seconds(p.ci_low_s)), _unit(fmt_seconds(p.ci_high_s))
    unit = _unit(fmt_seconds(p.median_s))[1]
    if lo_unit == hi_unit == unit:
        return f"{lo}–{hi}"
    return f"{lo}–{hi} {hi_unit}" if lo_unit == hi_unit else f"{lo} {lo_unit}–{hi} {hi_unit}"


def short_speedup(row: Row) -> str:
    """The speedup in short: `100× [98–104]`, `0.8×` without an interval, `baseline` or `-` (why there
    is no interval, its coverage, an unverified side: `--wide`, and the flags)."""
    s = row.speedup
    if row.is_baseline:
        return "baseline"
    if s is None:
        return "-"
    if s.low is None or s.high is None:
        return f"{s.value:.3g}×"
    return f"{s.value:.3g}× [{s.low:.3g}–{s.high:.3g}]"


def short_mfu(row: Row) -> str:
    """The MFU as a short percentage: `28.5%`; `≥ 28.5%` against an upper-bound peak (the MFU is a
    lower bound, `is_upper_bound`); `-` without one. The peak it is relative to is named below the table."""
    p = row.phase
    if p is None or p.mfu is None:
        return "-"
    return f"{'≥ ' if is_upper_bound(p.peak_source) else ''}{p.mfu:.1%}"


def compact_cells(row: Row) -> list[str]:
    """The display cells of a row in the compact table, in `COMPACT_COLUMNS` order."""
    rec, p = row.record, row.phase
    return [
        row.phase_name,
        rec.device + (f" x{int(w)}" if (w := scaling_values(p)["world_size"]) else ""),
        rec.machine_tag or "-",
        fmt_seconds(p.median_s) if p else "-",
        short_ci(row),
        short_speedup(row),
        short_mfu(row),
        flag_labels(row) or "ok",
    ]


def mfu_lines(report: Report) -> list[str]:
    """`device @ machine, run R, phase: <mfu_text>` for every row with a measured roofline: below the
    compact table, whose MFU cell is the bare percentage, the peak's kind and the roofline fraction."""
    return [
        f"{row.record.series}, run {row.record.run_id}, {row.phase_name}: {mfu_text(row)}"
        for row in report.rows
        if roofline_fraction(row) is not None
    ]


def history_lines(report: Report) -> list[str]:
    """`device @ machine, phase: <history_text>` for every row of a series report."""
    return [f"{row.record.series}, {row.phase_name}: {history_text(row)}" for row in report.rows if row.history]


# The generate phase's figures (`farm.results.decode.Generation`) a row carries, as `gen_<field>` in CSV and JSON.
GENERATION_FIELDS = (
    "prefill_s", "decode_tokens_per_s", "token_p50_s", "token_p90_s", "token_p99_s", "bytes_per_token", "mbu",
    "achieved_bandwidth", "bandwidth_peak", "bandwidth_source", "bandwidth_check", "kv_cache_bytes_predicted",
    "kv_cache_bytes_observed",
)  # fmt: skip
_GEN_TEXT = ("bandwidth_source", "bandwidth_check")


def generation_values(p: PhaseRecord | None) -> dict[str, Any]:
    """A generate phase's figures (GENERATION_FIELDS), None each for another phase; a stored value of
    the wrong type (the summary is read without validation) is None too."""
    g = p.generate if p is not None and isinstance(p.generate, dict) else {}
    out: dict[str, Any] = {}
    for k in GENERATION_FIELDS:
        v = g.get(k)
        if k in _GEN_TEXT:
            out[k] = v if isinstance(v, str) else None
        else:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            out[k] = v if ok else None
    return out


def generation_text(row: Row) -> str | None:
    """One line of a generate row's figures: time to first token, decode tokens/s, per-token
    percentiles, bytes per token, MBU against its ceiling, KV cache; None for another phase."""
    g = generation_values(row.phase)
    if row.phase_name != "generate" or all(v is None for v in g.values()):
        return None
    parts = [f"time to first token {fmt_seconds(g['prefill_s'])}"]
    if g["decode_tokens_per_s"] is not None:
        parts.append(f"decode {g['decode_tokens_per_s']:,.1f} tokens/s")
        pct = " / ".join(f"p{q} {fmt_seconds(g[f'token_p{q}_s'])}" for q in (50, 90, 99))
        parts.append(f"per token {pct}")
    if g["bytes_per_token"] is not None:
        parts.append(f"{fmt_bytes(int(g['bytes_per_token']))} per token")
    if g["mbu"] is not None and g["bandwidth_peak"] is not None:
        check = f", bandwidth check: {g['bandwidth_check']}" if g["bandwidth_check"] else ""
        parts.append(f"MBU {g['mbu']:.1%} of {g['bandwidth_peak'] / 1e9:,.4g} GB/s ({g['bandwidth_source']}{check})")
    elif g["bandwidth_check"]:
        parts.append(f"MBU -: bandwidth check: {g['bandwidth_check']}")
    if g["kv_cache_bytes_predicted"] is not None:
        seen = g["kv_cache_bytes_observed"]
        observed = fmt_bytes(int(seen)) if seen is not None else "-"
        parts.append(f"KV cache {fmt_bytes(int(g['kv_cache_bytes_predicted']))} predicted, {observed} observed")
    return ", ".join(parts)


def generation_lines(report: Report) -> list[str]:
    """`device @ machine, run R, generate: <generation_text>` for every generate row."""
    lines = []
    for row in report.rows:
        text = generation_text(row)
        if text is not None:
            lines.append(f"{row.record.series}, run {row.record.run_id}, generate: {text}")
    return lines


# A DDP train phase's figures (`farm.results.scaling.Scaling`), as `ddp_<field>` in CSV and JSON.
SCALING_FIELDS = (
    "world_size", "backend", "threads_per_process", "step_s", "tokens_per_s", "single_device_step_s",
    "single_device_tokens_per_s", "efficiency", "throughput_speedup", "allreduce_share", "no_sync_step_s",
)  # fmt: skip
_SCALING_TEXT = ("backend",)


def scaling_values(p: PhaseRecord | None) -> dict[str, Any]:
    """A DDP phase's figures (SCALING_FIELDS), None each for another phase; a stored value of the
    wrong type (the summary is read without validation) is None too."""
    g = p.scaling if p is not None and isinstance(p.scaling, dict) else {}
    out: dict[str, Any] = {}
    for k in SCALING_FIELDS:
        v = g.get(k)
        if k in _SCALING_TEXT:
            out[k] = v if isinstance(v, str) else None
        else:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            out[k] = v if ok else None
    return out


def scaling_text(row: Row) -> str | None:
    """One line of a DDP row's scaling: world size and backend, step, total tokens/s, the one-device
    step of the same job, efficiency and the all-reduce's exposed share; None for another phase."""
    g = scaling_values(row.phase)
    if g["world_size"] is None or g["efficiency"] is None:
        return None
    threads = f", {int(g['threads_per_process'])} thread(s) per process" if g["threads_per_process"] else ""
    parts = [
        f"world size {int(g['world_size'])} ({g['backend'] or '?'}{threads})",
        f"step {fmt_seconds(g['step_s'])}",
        f"{g['tokens_per_s']:,.0f} tokens/s" if g["tokens_per_s"] is not None else "- tokens/s",
        f"one device {fmt_seconds(g['single_device_step_s'])}",
        f"efficiency {g['efficiency']:.0%} (t1 / tN)",
    ]
    if g["allreduce_share"] is not None:
        parts.append(f"all-reduce {g['allreduce_share']:.0%} of a step (no_sync {fmt_seconds(g['no_sync_step_s'])})")
    return ", ".join(parts)


def scaling_lines(report: Report) -> list[str]:
    """`device @ machine, run R, train: <scaling_text>` for every DDP row."""
    lines = []
    for row in report.rows:
        text = scaling_text(row)
        if text is not None:
            lines.append(f"{row.record.series}, run {row.record.run_id}, {row.phase_name}: {text}")
    return lines


def flag_lines(report: Report) -> list[str]:
    """Every flag in full: `device @ machine, run R, phase: kind: text`."""
    lines = []
    for row in report.rows:
        for f in row.flags:
            lines.append(f"{row.record.series}, run {row.record.run_id}, {row.phase_name}: {f.kind}: {f.text}")
    return lines


def status_summary(report: Report) -> str:
    """Results per status, unverified apart from ok: `3 ok, 1 unverified, 1 invalid`."""
    return ", ".join(f"{n} {status}" for status, n in report.status_counts().items()) or "none"


def header_lines(report: Report) -> list[str]:
    series = [report.series.text()] if report.series else []
    return [
        *series,
        f"{len(report.records)}{' latest' if report.series else ''} result{'' if len(report.records) == 1 else 's'} "
        f"({status_summary(report)}) · "
        f"baseline: {report.baseline.describe()} · "
        f"generated {report.generated_at.isoformat(timespec='seconds')}",
        "speedup = baseline median / result median (above 1: faster); CI: bootstrap of the ratio of medians",
    ]


# The columns of `row_dict`, in order: the CSV header, written even when a report has no rows.
ROW_FIELDS = (
    "run_id", "job_id", "machine", "device", "torch_device", "model", "params", "batch", "seq", "dtype",
    "spec_hash", "phase", "status", "n", "median_s", "ci_low_s", "ci_high_s", "ci_coverage", "iqr_over_median",
    "tokens_per_s", "achieved_flops", "mfu", "peak_flops", "peak_source", "peak_memory_bytes", "baseline_job_id",
    "is_baseline", "speedup", "speedup_ci_low", "speedup_ci_high", "farm_version", "torch_version", "flags", "error",
    "peak_kind", "roofline_flops", "roofline_source", "mfu_roofline", "speedup_unverified", "outlier", "drift",
    "contended", "contended_reason", "lock_wait_s", "load_avg_1m", "repeats_stop", "fresh_process",
    "speedup_note", "speedup_ci_coverage", "throttled", "throttled_reason",
    *(f"gen_{k}" for k in GENERATION_FIELDS),
    *(f"ddp_{k}" for k in SCALING_FIELDS),
    "history_n", "history_median_s", "history_min_s", "history_max_s", "history_change", "history_window",
    "history_first", "history_last",
)  # fmt: skip


def row_dict(row: Row) -> dict[str, Any]:
    """One job and phase as plain values (seconds, FLOP/s, bytes): the CSV and JSON row."""
    rec, p, s = row.record, row.phase, row.speedup
    return {
        "run_id": rec.run_id,
        "job_id": rec.job_id,
        "machine": rec.machine_tag,
        "device": rec.device,
        "torch_device": rec.torch_device,
        "model": rec.model_name,
        "params": rec.params,
        "batch": rec.batch,
        "seq": rec.seq,
        "dtype": rec.dtype,
        "spec_hash": rec.spec_hash,
        "phase": row.phase_name,
        "status": row.status,
        "n": p.n if p else 0,
        "median_s": p.median_s if p else None,
        "ci_low_s": p.ci_low_s if p else None,
        "ci_high_s": p.ci_high_s if p else None,
        "ci_coverage": p.ci_coverage if p else None,
        "iqr_over_median": p.iqr_ratio if p else None,
        "tokens_per_s": p.tokens_per_s if p else None,
        "achieved_flops": p.achieved_flops if p else None,
        "mfu": p.mfu if p else None,
        "peak_flops": p.peak_flops if p else None,
        "peak_source": p.peak_source if p else None,
        "peak_memory_bytes": p.peak_memory_bytes if p else None,
        "baseline_job_id": row.baseline.job_id if row.baseline else None,
        "is_baseline": row.is_baseline,
        "speedup": s.value if s else (1.0 if row.is_baseline else None),
        "speedup_ci_low": s.low if s else None,
        "speedup_ci_high": s.high if s else None,
        "farm_version": rec.farm_version,
        "torch_version": rec.torch_version,
        "flags": [f"{f.kind}: {f.text}" for f in row.flags],
        "error": rec.error,
        "peak_kind": peak_kind(p.peak_source) if p and p.peak_source else None,
        "roofline_flops": p.roofline_flops if p else None,
        "roofline_source": p.roofline_source if p else None,
        "mfu_roofline": roofline_fraction(row),
        "speedup_unverified": row.speedup_unverified,
        "outlier": p.outlier if p else False,
        "drift": p.drift if p else False,
        "contended": p.contended if p else False,
        "contended_reason": p.contended_reason if p else None,
        "lock_wait_s": p.lock_wait_s if p else None,
        "load_avg_1m": p.load_avg_1m if p else None,
        "repeats_stop": p.repeats_stop if p else None,
        "fresh_process": rec.fresh_process,
        "speedup_note": s.note if s else None,
        "speedup_ci_coverage": s.coverage if s else None,
        "throttled": bool(p and throttle_text(p.telemetry)),
        "throttled_reason": throttle_text(p.telemetry) if p else None,
        **{f"gen_{k}": v for k, v in generation_values(p).items()},
        **{f"ddp_{k}": v for k, v in scaling_values(p).items()},
        **history_values(row),
    }


# Control characters (C0, DEL, C1), bidi embeddings/overrides/isolates and marks, line and
# paragraph separators: what can move a terminal's cursor, retitle it, or reorder what is read.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_LABEL = 48  # characters of data text in a plot label (longer ones squash the axes)
# matplotlib settings for every plot: text is text (`$...$` is not mathtext, no LaTeX).
MATH_OFF: dict[Any, Any] = {"text.parse_math": False, "text.usetex": False}  # keys: matplotlib rcParams
INLINE_UNSAFE = re.compile(UNSAFE.pattern.replace(r"\x00-\x1f", r"\x00-\x08\x0b\x0c\x0e-\x1f"))  # not \t \n \r
_MD_SPECIAL = re.compile(r"[\\|`]")
_MD_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _shown(m: re.Match[str]) -> str:
    return repr(m[0])[1:-1]  # \x1b, \r, \n, \t, \u202e


def term(text: str) -> str:
    """Data text for a terminal: control and bidi characters shown escaped (`\\x1b`), one line.

    Show the result as `rich.text.Text` (never as markup): `[/x]` then prints as typed.
    """
    return UNSAFE.sub(_shown, text)


def md(text: str) -> str:
    """Data text for a Markdown line or table cell: backslash, pipe and backtick escaped, `](` as
    `]\\(` (no inline link or image), `& < >` as entities (no raw HTML, no autolink), CR and LF as
    spaces (one line), other control characters shown escaped as by `term`."""
    text = _MD_SPECIAL.sub(lambda m: "\\" + m[0], text).replace("](", "]\\(")
    text = re.sub(r"[&<>]", lambda m: _MD_ENTITY[m[0]], text)
    return term(re.sub(r"\r\n|[\r\n]", " ", text))


def csv_cell(value: Any) -> Any:
    """A CSV value: a text cell that a spreadsheet would run as a formula (it begins with `=`, `+`,
    `-`, `@`, tab or CR) gets a `'` prefix (OWASP's CSV-injection advice). Numbers (int, float,
    and text that is exactly a number such as `-1.5`) are left as they are. Control and bidi
    characters other than tab, CR and LF are shown escaped (`\\x1b`), as by `term`."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_START) and not _NUMBER.match(value):
        value = "'" + value
    return INLINE_UNSAFE.sub(_shown, value)


def html_text(text: str) -> str:
    """Data text for HTML (text or a quoted attribute): `html.escape`, and control and bidi
    characters other than tab, CR and LF shown escaped (`\\x1b`)."""
    return html.escape(INLINE_UNSAFE.sub(_shown, text))


def plot_label(text: str, limit: int = MAX_LABEL) -> str:
    """Data text for a matplotlib label: control and bidi characters dropped (newlines as spaces),
    at most `limit` characters. Draw it under `MATH_OFF` so that `$` is a dollar sign."""
    text = UNSAFE.sub("", re.sub(r"[\r\n\t]+", " ", text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` whole or not at all: a temporary file in the same directory, then a
    rename (a reader never sees half a file; a failure leaves what was there). A path that is not a
    regular file (`/dev/null`, a FIFO, `/dev/full`) is written directly. OSError on failure, with
    no temporary file left behind; its message names `path` (`cannot write PATH: why`), never the
    temporary file."""
    try:
        _write_atomic(Path(path), text)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None


def _write_atomic(path: Path, text: str) -> None:
    target = Path(os.path.realpath(path))  # through a symlink, to the file it names
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # new (or a parent is missing or a file: the temporary file below fails so)
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    if mode is not None and not stat.S_ISREG(mode):
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, stat.S_IMODE(mode))  # a replaced file keeps its permissions
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600: a new file gets open()'s usual mode
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def plain_text(renderable: RenderableType, width: int = 200) -> str:
    """A Rich renderable as plain text without colour codes (the terminal format written to a file)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(renderable, crop=False)  # a table wider than `width` keeps its right-hand columns
    return console.export_text()
