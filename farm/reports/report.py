"""Reports: which results (a `Selection`), the table model (`Report`, one `Row` per job and phase,
with its speedup against a baseline and its flags), and `build_report`, which joins them.

Formats live in `farm.reports.formats` (terminal, Markdown, CSV, JSON) and `farm.reports.html` (HTML).
Flags that every format shows: `invalid` (faster than the device's peak), `unverified` (measured,
but no ceiling checks it), `above-peak` (an `ok` row whose MFU is above 100%: a bug elsewhere),
`noisy` (IQR/median above 10%), `outlier` and `drift` (`farm.results.stats`), `contended` (other
processes used the host during the phase), `throttled` (NVML reported a power cap, thermal or
hardware slowdown during the phase: `farm.results.telemetry`), `failed` / `oom` / `timeout` / `cancelled` with the
error, and `versions` when a result and its baseline (or the report's results) come from different
farm or torch versions.

A selection of more than `SERIES_THRESHOLD` results (and no run named) makes a series report:
one row per series (spec hash x machine x device x phase), its latest result's, with the series'
history over the selection (`Row.history`, `farm.reports.series`); `every_result` forces one row
per result. This module never imports torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from farm.errors import NotFoundError
from farm.reports.compare import DEFAULT_BASELINE, Baseline, BaselineMatcher, Ratio, ratio_cis
from farm.reports.series import SERIES_THRESHOLD, SeriesHistory, SeriesSummary, history_of
from farm.results.peaks import UPPER_BOUND, is_upper_bound
from farm.results.records import PhaseRecord, Record, paused_gc
from farm.results.result import MEASURED_STATUSES, JobResult
from farm.results.store import ResultStore, series_id
from farm.results.telemetry import throttle_text
from farm.spec import ALIASES, PHASES, SkippedDevice

PHASE_ORDER: dict[str, int] = {p: i for i, p in enumerate(PHASES)}


def phase_rank(name: str) -> int:
    """A phase's place in the order phases run (init, forward, train, generate; anything else last):
    the sort key of every view that lists phases (tables, plots, the published site)."""
    return PHASE_ORDER.get(name, len(PHASE_ORDER))


NOT_MEASURED = ("failed", "oom", "timeout", "cancelled")
MEASURED = MEASURED_STATUSES  # a time was taken (ok, unverified: no ceiling could check it)
MAX_PEAK_LINES = 12
STATUS_ORDER = ("ok", "unverified", "invalid", "failed", "oom", "timeout", "cancelled")
UNVERIFIED_TEXT = "no ceiling for this device: nothing checks the number"
# What the start of a peak's source names (`Peak.source`, e.g. "table: h100 bfloat16 dense").
PEAK_KINDS = {"table": "datasheet", "derived": "derived", "theoretical": "theoretical", "measured": "measured"}


def peak_kind(source: str | None) -> str:
    """The kind of peak an MFU is relative to, from its source: datasheet, derived, theoretical, measured."""
    if not source:
        return "unnamed peak"
    if is_upper_bound(source):
        return UPPER_BOUND  # "upper bound (microarchitecture not in the table): ...": an MFU against it is a floor
    head = source.split(":", 1)[0].strip().lower()
    return PEAK_KINDS.get(head, head)


@dataclass(frozen=True)
class Selection:
    """Which stored results a report covers; values of one selector are OR-ed, selectors AND-ed."""

    runs: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    spec_hashes: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def narrows_runs(self) -> bool:
        """True when results of the selected runs may be left out (their baselines among them)."""
        return bool(self.machines or self.devices or self.models or self.spec_hashes or self.since or self.until)

    def describe(self) -> str:
        parts = [
            f"{name}={','.join(vals)}"
            for name, vals in (
                ("run", self.runs),
                ("machine", self.machines),
                ("device", self.devices),
                ("model", self.models),
                ("spec", self.spec_hashes),
            )
            if vals
        ]
        if self.since:
            parts.append(f"since={self.since.isoformat(timespec='seconds')}")
        if self.until:
            parts.append(f"until={self.until.isoformat(timespec='seconds')}")
        return " ".join(parts) or "all results"

    def query_ids(self, store: ResultStore) -> list[str]:
        """Matching job ids, oldest first (`ResultStore.query_ids`; model aliases resolved)."""
        return store.query_ids(
            runs=self.runs,
            machines=self.machines,
            devices=self.devices,
            models=[ALIASES.get(m, m) for m in self.models],
            spec_hashes=self.spec_hashes,
            since=self.since,
            until=self.until,
        )


@dataclass(slots=True)
class Flag:
    kind: str  # invalid, unverified, above-peak, noisy, outlier, drift, contended, throttled, failed, oom, ...
    text: str


@dataclass(slots=True)
class Row:
    """One job and phase (phase None: a job that measured nothing), with its speedup."""

    record: Record
    phase: PhaseRecord | None
    baseline: Record | None = None
    is_baseline: bool = False
    speedup: Ratio | None = None
    flags: list[Flag] = field(default_factory=list)
    # The sides of the speedup that are unverified ("result", "baseline" or "both"), else None.
    speedup_unverified: str | None = None
    history: SeriesHistory | None = None  # a series report's row: its series over the selection

    @property
    def phase_name(self) -> str:
        return self.phase.name if self.phase else "-"

    @property
    def status(self) -> str:
        return self.phase.status if self.phase else self.record.status


@dataclass
class Group:
    """Rows of one spec hash: the same work, comparable across devices, machines and runs."""

    spec_hash: str
    title: str
    rows: list[Row]


@dataclass
class Report:
    title: str
    groups: list[Group]
    records: list[Record]
    baseline: Baseline
    selection: Selection
    notes: list[str]
    generated_at: datetime
    # Which peak (and roofline) each MFU is relative to: one line per source (the MFU footnotes).
    peaks: list[str] = field(default_factory=list)
    # The whole stored history of the report's (machine, device, spec) series, when asked for
    # (`select(..., history=True)`); the HTML format draws it. None: not loaded.
    history: list[JobResult] | None = None
    # A series report (one row per series): how many results and series it stands for; None: every result.
    series: SeriesSummary | None = None
    # The devices the report's runs asked for that the embedded farm skipped: (run id, device and
    # why), also one note each (`add_skipped`). Empty for a run that skipped none or predates them.
    skipped_devices: list[tuple[str, SkippedDevice]] = field(default_factory=list)

    @property
    def rows(self) -> list[Row]:
        return [r for g in self.groups for r in g.rows]

    def status_counts(self) -> dict[str, int]:
        """Results per status, in `STATUS_ORDER` (unverified counted apart from ok)."""
        counts = Counter(r.status for r in self.records)
        order = {s: i for i, s in enumerate(STATUS_ORDER)}
        return {s: counts[s] for s in sorted(counts, key=lambda s: (order.get(s, len(order)), s))}


def group_title(r: Record) -> str:
    extra = f" · matmul {r.matmul_precision}" if r.matmul_precision != "highest" else ""
    return f"{r.model_name} · batch {r.batch} × seq {r.seq} · {r.dtype}{extra} · spec {r.spec_hash}"


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _noise_flags(ph: PhaseRecord) -> list[Flag]:
    """noisy, outlier, drift, contended and throttled of one phase, with the numbers."""
    flags = []
    if ph.noisy and ph.iqr_ratio is not None:
        flags.append(Flag("noisy", f"IQR/median {ph.iqr_ratio:.1%} (above 10%)"))
    if ph.outlier:
        ratio = f"{max(ph.times) / ph.median_s:.3g}× the median" if ph.times and ph.median_s else "far above the median"
        flags.append(Flag("outlier", f"slowest repeat {ratio}"))
    if ph.drift:
        trend = f": {ph.times[0]:.3g} s first, {ph.times[-1]:.3g} s last" if len(ph.times) >= 2 else ""
        flags.append(Flag("drift", f"repeats trend across the run{trend}"))
    if ph.contended:
        flags.append(Flag("contended", ph.contended_reason or "other processes used the host's CPU"))
    throttled = throttle_text(ph.telemetry)  # stored telemetry is untrusted: read, not trusted
    if throttled:
        flags.append(Flag("throttled", throttled))
    return flags


def _baseline_flags(ph: PhaseRecord, series: str) -> list[Flag]:
    """The baseline's noise flags on a speedup row: `noisy` as before, the others as `baseline`."""
    out = []
    for f in _noise_flags(ph):
        if f.kind == "noisy":
            out.append(Flag("noisy", f"baseline noisy: IQR/median {ph.iqr_ratio or 0:.1%}"))
        else:
            out.append(Flag("baseline", f"baseline ({series}) {f.kind}: {f.text}"))
    return out


def _own_flags(rec: Record, ph: PhaseRecord | None) -> list[Flag]:
    flags: list[Flag] = []
    status = ph.status if ph else rec.status
    if status == "invalid":
        flags.append(Flag("invalid", (ph and ph.invalid_reason) or rec.error or "faster than the device's peak"))
    elif status == "unverified":
        why = (ph and (ph.invalid_reason or _first_line(ph.error))) or _first_line(rec.error) or UNVERIFIED_TEXT
        flags.append(Flag("unverified", why))
    elif status in NOT_MEASURED:
        err = (ph and ph.error) or rec.error or ""
        flags.append(Flag(status, _first_line(err) or status))
    if ph and status == "ok" and ph.mfu is not None and ph.mfu > 1.0:
        # judge() makes a phase above its ceiling invalid: an ok one above 100% is a bug there, shown as such.
        flags.append(
            Flag(
                "above-peak",
                f"MFU {ph.mfu:.1%} of its {peak_kind(ph.peak_source)} peak ({ph.peak_source or 'unnamed'}) "
                "on an ok result: the ceiling or the verdict is wrong",
            )
        )
    if ph:
        flags.extend(_noise_flags(ph))
    return flags


def _peak_lines(records: Sequence[Record]) -> list[str]:
    """One line per peak and roofline source the records' MFUs are relative to."""
    lines: dict[str, None] = {}
    # The distinct pairs first, in order of appearance: 100,000 results share a handful of sources.
    pairs = dict.fromkeys((ph.peak_source, ph.roofline_source) for rec in records for ph in rec.phases.values())
    for peak_source, roofline_source in pairs:
        if peak_source:
            floor = " (a lower bound: the peak may be above the true one)" if is_upper_bound(peak_source) else ""
            lines[f"MFU % of {peak_kind(peak_source)}{floor}: {peak_source}"] = None
        if roofline_source:
            lines[f"MFU roofline (measured, beside the peak): {roofline_source}"] = None
    out = list(lines)
    if len(out) > MAX_PEAK_LINES:
        out = [*out[:MAX_PEAK_LINES], f"... and {len(out) - MAX_PEAK_LINES} more peak sources (CSV/JSON: per row)"]
    return out


def _measured(rec: Record) -> bool:
    """The result measured something (ok, unverified, invalid, or a phase ran): its versions count."""
    return rec.status in (*MEASURED, "invalid") or bool(rec.phases)


def _version_flag(rec: Record, base: Record) -> Flag | None:
    diffs = []
    if rec.farm_version != base.farm_version:
        diffs.append(f"farm {rec.farm_version} vs {base.farm_version}")
    if rec.torch_version != base.torch_version:
        diffs.append(f"torch {rec.torch_version} vs {base.torch_version}")
    return Flag("versions", "differs from baseline: " + "; ".join(diffs)) if diffs else None


def _minority_flag(rec: Record, usual: tuple[str | None, str | None]) -> Flag | None:
    """A flag when the report mixes versions and this record is not on the most common ones."""
    diffs = []
    if usual[0] is not None and rec.farm_version != usual[0]:
        diffs.append(f"farm {rec.farm_version}")
    if usual[1] is not None and rec.torch_version != usual[1]:
        diffs.append(f"torch {rec.torch_version}")
    if not diffs:
        return None
    return Flag("versions", f"{', '.join(diffs)}, unlike most results here (farm {usual[0]}, torch {usual[1]})")


def _usual(counts: Counter[str | None]) -> str | None:
    """The most common version when the records mix several, else None."""
    return counts.most_common(1)[0][0] if len(counts) > 1 else None


def _mixed(counts: Counter[str | None], label: str) -> str | None:
    if len(counts) < 2:
        return None
    listed = ", ".join(f"{v or 'unknown'} ({n})" for v, n in counts.most_common())
    return f"mixed {label} versions in this report: {listed}; a difference may come from the software"


def build_report(
    records: Sequence[Record],
    baseline: Baseline = DEFAULT_BASELINE,
    pool: Iterable[Record] = (),
    selection: Selection | None = None,
    title: str | None = None,
) -> Report:
    """Rows, speedups (with bootstrap CIs) and flags for records; baselines come from records + pool."""
    with paused_gc():
        return _build(records, baseline, pool, selection, title)


def _build(
    records: Sequence[Record],
    baseline: Baseline,
    pool: Iterable[Record],
    selection: Selection | None,
    title: str | None,
) -> Report:
    seen = {r.job_id for r in records}
    matcher = BaselineMatcher([*records, *(p for p in pool if p.job_id not in seen)], baseline)
    bases = [matcher.find(rec) for rec in records]
    # Sort the records once (not the rows): specs by size, the baseline first, then by place.
    order = sorted(
        range(len(records)),
        key=lambda i: (
            records[i].params,
            records[i].tokens,
            records[i].spec_hash,
            bases[i] is not records[i],
            records[i].device,
            records[i].machine_tag or "",
            records[i].run_id,
        ),
    )
    # Versions are compared among results that measured something: a job cancelled or failed
    # before it ran has no torch version, and is no sign of mixed software.
    measured = [r for r in records if _measured(r)]
    farm_counts: Counter[str | None] = Counter(r.farm_version for r in measured)
    torch_counts: Counter[str | None] = Counter(r.torch_version for r in measured)
    usual = (_usual(farm_counts), _usual(torch_counts))
    if usual[0] is not None or usual[1] is not None:
        usual = (usual[0] or measured[0].farm_version, usual[1] or measured[0].torch_version)
    mixed = usual != (None, None)
    buckets: dict[str, dict[str, list[Row]]] = {}  # spec hash -> phase -> rows
    titles: dict[str, str] = {}
    rows: list[Row] = []
    pairs: list[tuple[list[float], list[float]]] = []
    pair_rows: list[Row] = []
    for i in order:
        rec, base = records[i], bases[i]
        by_phase = buckets.get(rec.spec_hash)
        if by_phase is None:
            by_phase = buckets[rec.spec_hash] = {}
            titles[rec.spec_hash] = group_title(rec)
        vflag = None
        if _measured(rec) and base is not None and base is not rec and _measured(base):
            vflag = _version_flag(rec, base)
        if vflag is None and mixed and _measured(rec):
            vflag = _minority_flag(rec, usual)
        if not rec.phases:
            row = Row(rec, None, base, flags=_own_flags(rec, None) + ([vflag] if vflag else []))
            rows.append(row)
            by_phase.setdefault("-", []).append(row)
            continue
        for name, ph in rec.phases.items():
            row = Row(rec, ph, base, is_baseline=base is rec, flags=_own_flags(rec, ph))
            if vflag:
                row.flags.append(vflag)
            rows.append(row)
            by_phase.setdefault(name, []).append(row)
            if base is None or row.is_baseline:
                continue
            bph = base.phases.get(name)
            if bph is None or bph.status not in MEASURED or ph.status not in MEASURED:
                if bph is not None and bph.status not in MEASURED and ph.status in MEASURED:
                    row.flags.append(Flag("baseline", f"baseline ({base.series}) is {bph.status}: no speedup"))
                continue
            sides = [side for side, p in (("result", ph), ("baseline", bph)) if p.status == "unverified"]
            if sides:
                row.speedup_unverified = "both" if len(sides) == 2 else sides[0]
                if "baseline" in sides:
                    row.flags.append(
                        Flag("baseline", f"baseline ({base.series}) is unverified: the speedup is not checked")
                    )
            row.flags.extend(_baseline_flags(bph, base.series))
            pairs.append((bph.times, ph.times))
            pair_rows.append(row)
    for row, ratio in zip(pair_rows, ratio_cis(pairs), strict=True):
        row.speedup = ratio
    groups = []
    for spec_hash, by_phase in buckets.items():
        names = sorted(by_phase, key=phase_rank)
        groups.append(Group(spec_hash, titles[spec_hash], [r for n in names for r in by_phase[n]]))
    notes = [n for n in (_mixed(farm_counts, "farm"), _mixed(torch_counts, "torch")) if n]
    waits = sorted(((r.phase.lock_wait_s, r) for r in rows if r.phase and r.phase.lock_wait_s), key=lambda w: -w[0])
    if waits:
        listed = "; ".join(f"{r.record.series} run {r.record.run_id} {r.phase_name} {w:.3g} s" for w, r in waits[:5])
        more = f" and {len(waits) - 5} more" if len(waits) > 5 else ""
        notes.append(f"waited for the host lock before timing (not in the times): {listed}{more}")
    missing = sum(1 for r in rows if r.baseline is None)
    if missing:
        notes.append(f"{missing} of {len(rows)} rows have no baseline ({baseline.describe()})")
    sel = selection or Selection()
    return Report(
        title=title or f"farm report: {sel.describe()}",
        groups=groups,
        records=list(records),
        baseline=baseline,
        selection=sel,
        notes=notes,
        generated_at=datetime.now(UTC),
        peaks=_peak_lines(records),
    )


def select(
    store: ResultStore,
    selection: Selection,
    baseline: Baseline = DEFAULT_BASELINE,
    *,
    history: bool = False,
    every_result: bool = False,
    threshold: int | None = None,
) -> Report:
    """Query the store, fetch the baselines the selection left out, and build the report.

    A selection of more than `threshold` results (default `SERIES_THRESHOLD`; no run named,
    `every_result` not set) gives the series report (`series_report`). With `history`, also load
    every stored result of the report's (machine, device, spec) series into `Report.history` (the
    HTML format draws a phase's time per night from it); a series report carries its history per
    row instead."""
    with paused_gc():
        if not every_result and not selection.runs:
            total = store.count_ids(**_selectors(selection))
            if total > (SERIES_THRESHOLD if threshold is None else threshold):
                return series_report(store, selection, baseline, total)
        report = _select(store, selection, baseline)
    if selection.runs:
        add_skipped(report, skipped_of_runs(store, selection.runs))
    if history:
        report.history = history_results(store, report.records)
    return report


def skipped_of_runs(store: ResultStore, run_ids: Iterable[str]) -> list[tuple[str, SkippedDevice]]:
    """The devices each run asked for that the embedded farm skipped (a run not stored: none)."""
    out: list[tuple[str, SkippedDevice]] = []
    for run_id in run_ids:
        try:
            out += [(run_id, d) for d in store.skipped_devices(run_id)]
        except NotFoundError:
            continue
    return out


def add_skipped(report: Report, skipped: Sequence[tuple[str, SkippedDevice]]) -> Report:
    """Record the runs' skipped devices in the report (`Report.skipped_devices`, the JSON field) and
    as one note each (every format shows its notes): `cuda: asked for, skipped: no CUDA device on
    this machine`, the run named when the report spans several."""
    report.skipped_devices = [*report.skipped_devices, *skipped]
    several = len({r for r, _ in report.skipped_devices}) > 1 or len(report.selection.runs) > 1
    report.notes = [*report.notes, *((f"run {r}: " if several else "") + d.line() for r, d in skipped)]
    return report


def _selectors(selection: Selection) -> dict[str, Any]:
    return {
        "machines": selection.machines,
        "devices": selection.devices,
        "models": [ALIASES.get(m, m) for m in selection.models],
        "spec_hashes": selection.spec_hashes,
        "since": selection.since,
        "until": selection.until,
    }


def series_report(store: ResultStore, selection: Selection, baseline: Baseline, total: int | None = None) -> Report:
    """One row per series: the report over each (spec, machine, device)'s latest result in the
    selection, each row with its series' history (`ResultStore.series_points`). Runs are not a
    series selector: a selection naming runs is reported result by result (`select`)."""
    series = store.series_points(**_selectors(selection))
    if not series:
        raise NotFoundError(f"no stored results match {selection.describe()}")
    latest: dict[tuple[str, str | None, str], tuple[float, str]] = {}
    for s in series:
        key = (s.spec_hash, s.machine, s.device)
        if key not in latest or latest[key][0] <= s.latest_at:
            latest[key] = (s.latest_at, s.latest_job)
    records = store.load_records(sorted({job for _, job in latest.values()}))
    if not records:
        raise NotFoundError(f"no readable stored results match {selection.describe()}")
    # Baselines: the results of the same runs (and of `run=`), and for `machine=` that machine's
    # latest of each spec. Read by run (small indexes), never by spec: a spec's index holds a year.
    runs = {r.run_id for r in records} | ({baseline.run} if baseline.run else set())
    extra = store.query_ids(runs=sorted(runs))
    if baseline.machine:
        hashes = sorted({r.spec_hash for r in records})
        extra += [s.latest_job for s in store.series_points(machines=[baseline.machine], spec_hashes=hashes)]
    have = {r.job_id for r in records}
    extra = list(dict.fromkeys(extra))
    report = build_report(records, baseline, store.load_records([j for j in extra if j not in have]), selection)
    histories = {s.sid: history_of(s) for s in series}
    for row in report.rows:
        rec = row.record
        row.history = histories.get(series_id(rec.spec_hash, rec.machine_tag, rec.device, row.phase_name))
    counted = total if total is not None else int(sum(h.n for h in histories.values()))
    report.series = SeriesSummary(results=counted, series=len(series))
    report.title = f"farm report: {selection.describe()} · one row per series"
    return report


def history_results(store: ResultStore, records: Sequence[Record]) -> list[JobResult]:
    """Every stored result of the (machine, device, spec hash) series of `records`, oldest first."""
    keys = {(r.machine_tag or "unknown", r.device, r.spec_hash) for r in records}
    if not keys:
        return []
    found = store.query(spec_hashes=sorted({k[2] for k in keys}), devices=sorted({k[1] for k in keys}))
    return [
        r for r in found if (r.machine.machine_tag if r.machine else "unknown", r.series_device(), r.spec_hash) in keys
    ]


def selected_records(store: ResultStore, selection: Selection, baseline: Baseline) -> tuple[list[Record], list[Record]]:
    """The records a selection matches, and the baselines it left out (the report's and the pool's)."""
    records = store.load_records(selection.query_ids(store))
    if not records:
        raise NotFoundError(f"no stored results match {selection.describe()}")
    hashes = sorted({r.spec_hash for r in records})
    extra: list[str] = []
    if baseline.run:
        extra = store.query_ids(runs=[baseline.run], spec_hashes=hashes)
    elif baseline.machine:
        extra = store.query_ids(machines=[baseline.machine], spec_hashes=hashes)
    elif selection.narrows_runs():
        extra = store.query_ids(runs=sorted({r.run_id for r in records}), spec_hashes=hashes)
    have = {r.job_id for r in records}
    return records, store.load_records([j for j in extra if j not in have])


def _select(store: ResultStore, selection: Selection, baseline: Baseline) -> Report:
    records, pool = selected_records(store, selection, baseline)
    return build_report(records, baseline, pool, selection)
