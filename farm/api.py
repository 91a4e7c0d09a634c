"""The farm as a Python library: what the CLI does, for notebooks and scripts.

    import farm.api as fa

    results = fa.run(model="gpt2-tiny", phases=["forward"], devices=["cpu"], seq=64)  # here, now
    sub = fa.submit(model="gpt2-tiny", devices=["cpu"], seq=64)   # to the farm (FARM_REDIS_URL or `farm up`)
    results = fa.wait(sub.run_id)
    df = fa.to_dataframe(results)                                 # one row per job and phase (pandas)
    rep = fa.report(runs=[sub.run_id])                            # the `farm report` table, as objects

Spec fields are the spec file's (`farm.spec.BenchSpec`; `farm schema spec` prints its JSON Schema).
Errors are the library's typed errors (`farm.errors`): `SpecError` for bad input (with `.field`),
`BrokerError` when Redis cannot be reached, `NotFoundError` for an unknown run. Nothing here prints:
a selection that matches no stored result in stored runs returns [] with an `EmptySelectionWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from farm.cluster import controller
from farm.cluster.controller import Submission
from farm.dates import parse_when
from farm.errors import EmptySelectionWarning, NotFoundError, SpecError
from farm.nightly.sweep import Sweep, load_sweep, parse_sweep
from farm.reports.cells import row_dict
from farm.reports.compare import DEFAULT_BASELINE, parse_baseline
from farm.reports.report import Report, Selection, build_report, select
from farm.results.records import records_from_results
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.spec import BenchSpec, parse_spec

if TYPE_CHECKING:
    import pandas

__all__ = [
    "BenchSpec",
    "EmptySelectionWarning",
    "JobResult",
    "Report",
    "Submission",
    "report",
    "results",
    "run",
    "spec",
    "submit",
    "submit_sweep",
    "sweep",
    "to_dataframe",
    "to_rows",
    "wait",
]


def spec(base: BenchSpec | Mapping[str, Any] | None = None, **fields: Any) -> BenchSpec:
    """A validated spec from a mapping (or spec) and keyword fields, which win; SpecError if invalid."""
    doc: dict[str, Any] = {}
    if isinstance(base, BenchSpec):
        doc = base.model_dump(mode="json")
    elif base is not None:
        doc = dict(base)
    return parse_spec({**doc, **fields})


def run(base: BenchSpec | Mapping[str, Any] | None = None, **fields: Any) -> list[JobResult]:
    """Run a spec in this process, one job per device (like `farm run`); every job comes back as a result."""
    from farm.engine.runner import run_spec  # lazily: loads torch, which submitting and reporting never need

    return run_spec(spec(base, **fields))


def submit(
    base: BenchSpec | Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    **fields: Any,
) -> Submission:
    """Queue a spec on the farm (like `farm submit`); `Submission.run_id` names the run."""
    return controller.submit(spec(base, **fields), name=name, tags=dict(tags) if tags else None)


def sweep(source: str | Mapping[str, Any]) -> Sweep:
    """A validated sweep from a file path or a mapping (the sweep file's fields)."""
    return load_sweep(source) if isinstance(source, str) else parse_sweep(dict(source))


def submit_sweep(source: str | Mapping[str, Any] | Sweep, *, name: str | None = None) -> Submission:
    """Queue every valid point of a sweep as one run (like `farm sweep`)."""
    sw = source if isinstance(source, Sweep) else sweep(source)
    return controller.submit(list(sw.specs), name=name or sw.name, tags={"sweep": sw.name})


def wait(run_id: str, *, timeout: float | None = None) -> list[JobResult]:
    """Follow a run until every job it can have has a result; the stored results."""
    return controller.wait(run_id, timeout=timeout)


Names = str | Sequence[str]  # one name, or several: a single string is one item, never its characters


def _names(field: str, value: Names) -> tuple[str, ...]:
    """A selector as a tuple of names: `"RUN_ID"` is `("RUN_ID",)`; SpecError for a non-string item."""
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise SpecError(field, f"{type(item).__name__} in the list: give names as strings")
    return items


When = (
    str | datetime | None
)  # ISO 8601 ("2026-11-01", UTC unless a zone is given), relative ("7d", "12h"), or a datetime


def _when(value: When, field: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise SpecError(field, f"{type(value).__name__}: give an ISO 8601 date, '7d'/'12h', or a datetime")
    return parse_when(value, field)


def _selection(
    store: ResultStore, runs: Names | None, machines: Names, devices: Names, models: Names, since: When, until: When
) -> Selection:
    """The one rule of every read (`farm results`, `report`, `compare`, `regressions` and here):
    runs named: those runs, narrowed by the selectors; no run named but a selector: every run the
    selectors match; nothing at all: the latest run. `runs=[]` is every run."""
    sel = Selection(
        machines=_names("machines", machines),
        devices=_names("devices", devices),
        models=_names("models", models),
        since=_when(since, "since"),
        until=_when(until, "until"),
    )
    if runs is None:
        runs = () if sel.narrows_runs() else ("latest",)
    return replace(sel, runs=tuple(store.resolve_run(r) for r in _names("runs", runs)))


def _warn_if_empty(store: ResultStore, sel: Selection, found: int) -> None:
    """NotFoundError for a run that is not stored (the CLI's exit 4); EmptySelectionWarning when
    selectors matched nothing in runs that are."""
    if found:
        return
    missing = [r for r in sel.runs if not store.run_exists(r)]
    if missing:
        raise NotFoundError(f"no run {', '.join(map(repr, missing))} is stored (`farm runs` lists them)")
    warnings.warn(f"no stored result matches {sel.describe()}", EmptySelectionWarning, stacklevel=3)


def results(
    runs: Names | None = None,
    *,
    machines: Names = (),
    devices: Names = (),
    models: Names = (),
    since: When = None,
    until: When = None,
) -> list[JobResult]:
    """Stored results, oldest first, by the one selection rule (`_selection`): runs named ("latest"
    is the newest), else every run the selectors match, else the latest run.

    Each selector takes one name or a sequence of them (`results("RUN_ID")` is that run); `since` and
    `until` take what `--since`/`--until` do, or a datetime. A run that is not stored raises
    NotFoundError; selectors that match nothing return [] with an `EmptySelectionWarning` naming them.
    """
    store = controller.store_for()
    sel = _selection(store, runs, machines, devices, models, since, until)
    found = store.get_results(sel.query_ids(store))
    _warn_if_empty(store, sel, len(found))
    return found


def report(
    runs: Names | None = None,
    *,
    machines: Names = (),
    devices: Names = (),
    models: Names = (),
    since: When = None,
    until: When = None,
    baseline: str | None = None,
) -> Report:
    """The `farm report` of stored results: rows, speedups with CIs and flags (render with farm.reports).
    Selection as in `results`; NotFoundError when it matches nothing (a report of nothing, as in the CLI)."""
    store = controller.store_for()
    return select(store, _selection(store, runs, machines, devices, models, since, until), parse_baseline(baseline))


def to_rows(results: Iterable[JobResult], baseline: str | None = None) -> list[dict[str, Any]]:
    """One plain dict per job and phase: the columns of `farm report --format csv` (seconds, FLOP/s, bytes)."""
    recs = records_from_results(results)
    rep = build_report(recs, parse_baseline(baseline) if baseline else DEFAULT_BASELINE, pool=recs)
    return [row_dict(row) for row in rep.rows]


def to_dataframe(results: Iterable[JobResult], baseline: str | None = None) -> pandas.DataFrame:
    """`to_rows` as a pandas DataFrame (pandas is the optional extra `gpt2-farm[pandas]`)."""
    try:
        import pandas  # lazily: an optional extra, only notebooks need it
    except ImportError:
        raise ImportError(
            "to_dataframe needs pandas: pip install pandas (or, in a clone, pip install -e '.[pandas]'; "
            "from the package index, pip install 'gpt2-farm[pandas]')"
        ) from None
    rows = to_rows(results, baseline)
    frame = pandas.DataFrame(rows)
    for col in ("started_at", "finished_at"):
        if col in frame:
            frame[col] = pandas.to_datetime(frame[col], utc=True)
    return frame
