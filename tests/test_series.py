"""Series against a real redis-server: points appended with every write and import, the series
report (one row per series, its history computed here independently from the results), the
threshold and `--every-result` through the CLI, deletes and replacements, the backfill of data
stored before series existed, and a corrupt series blob skipped with one warning. No time asserted.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import farm.reports.report as report_mod
from farm.cli.main import app
from farm.reports.compare import parse_baseline
from farm.reports.formats import to_csv, to_markdown
from farm.reports.importer import import_results
from farm.reports.report import Selection, select
from farm.results import synthetic as syn
from farm.results.result import JobResult
from farm.results.store import POINT_BYTES, SERIES_VERSION, ResultStore, pack_result, series_id
from farm.settings import get_settings
from farm.spec import BenchSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NIGHTS = 20
MACHINES = ("m0", "m1")
SPECS = (BenchSpec(model="gpt2", batch=1, seq=128), BenchSpec(model="gpt2", batch=2, seq=128))
PHASE_NAMES = ("init", "forward", "train")


def _times(night: int, m: int, s: int) -> dict[str, list[float]]:
    """Times that drift up over the nights (so the first and last week differ), per machine and spec."""
    base = (1 + m) * (1 + s) * (1 + 0.01 * night + 0.003 * ((night * 7) % 5))
    return {
        "init": [0.5 * base],
        "forward": [0.40 * base * f for f in (1.0, 1.01, 0.99, 1.02, 0.98)],
        "train": [1.20 * base * f for f in (1.0, 1.01, 0.99, 1.02, 0.98)],
    }


def lab() -> list[JobResult]:
    """2 machines x 2 specs x 20 nights of CPU results (one run per machine and night): 80 results, 12 series."""
    out = []
    for night in range(NIGHTS):
        for m, tag in enumerate(MACHINES):
            fp = syn.machine(tag)
            for s, spec in enumerate(SPECS):
                out.append(
                    syn.result(
                        f"n{night:02d}{tag}", s, "cpu", _times(night, m, s), spec=spec, fingerprint=fp,
                        finished_at=T0 + timedelta(days=night, minutes=m * 10 + s),
                    )
                )  # fmt: skip
    return out


@pytest.fixture()
def store(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultStore]:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    s = ResultStore.from_url(redis_url)
    for r in lab():
        assert s.put_result(r)
    yield s


def sid_of(r: JobResult, phase: str) -> str:
    return series_id(r.spec_hash, r.machine.machine_tag if r.machine else None, r.device, phase)


def raw_points(store: ResultStore, sid: str) -> list[tuple[float, ...]]:
    """A series blob decoded with struct (not numpy): (at, median_s, mfu, tokens_per_s, status)."""
    blob = store.rb.get(store.series_key(sid)) or b""
    assert len(blob) % POINT_BYTES == 0
    return [struct.unpack_from("<5d", blob, i) for i in range(0, len(blob), POINT_BYTES)]


def expected_history(results: list[JobResult], phase: str) -> dict[str, float]:
    """A series' history from its results, computed here: medians ordered by finish time."""
    done = sorted(results, key=lambda r: r.finished_at or T0)
    meds = [r.phases[phase].median_s for r in done]
    ats = [(r.finished_at or T0).timestamp() for r in done]
    week = 7 * 86400
    first = [m for m, a in zip(meds, ats, strict=True) if a < ats[0] + week]
    last = [m for m, a in zip(meds, ats, strict=True) if a > ats[-1] - week]
    return {
        "n": len(meds),
        "median_s": statistics.median(meds),
        "min_s": min(meds),
        "max_s": max(meds),
        "change": statistics.median(last) / statistics.median(first) - 1,
    }


def test_every_write_appends_one_point_per_phase(store: ResultStore) -> None:
    results = lab()
    one = [r for r in results if r.machine and r.machine.machine_tag == "m1" and r.spec_hash == SPECS[1].spec_hash()]
    pts = raw_points(store, sid_of(one[0], "forward"))
    assert len(pts) == NIGHTS
    for (at, med, mfu, tps, status), r in zip(pts, one, strict=True):
        ph = r.phases["forward"]
        assert at == (r.finished_at or T0).timestamp()
        assert med == ph.median_s and status == 0.0  # ok
        assert mfu == ph.mfu and tps == ph.tokens_per_s
    assert math.isnan(raw_points(store, sid_of(one[0], "init"))[0][2])  # init has no MFU: NaN
    meta = json.loads(store.r.hget(store.key("series-meta"), sid_of(one[0], "train")))
    assert meta[1] == one[-1].job_id and meta[2] == "gpt2"
    assert store.r.hget(store.key("meta"), "series_version") == str(SERIES_VERSION)  # a fresh farm: no backfill


def test_an_import_appends_points_and_a_replacement_rebuilds_the_series(store: ResultStore) -> None:
    fp = syn.machine("m0")
    new = syn.result(
        "imp", 0, "cpu", _times(30, 0, 0), spec=SPECS[0], fingerprint=fp, finished_at=T0 + timedelta(days=30)
    )
    import_results(store, [new], "file.json")
    sid = sid_of(new, "forward")
    pts = raw_points(store, sid)
    assert len(pts) == NIGHTS + 1 and pts[-1][1] == new.phases["forward"].median_s
    assert json.loads(store.r.hget(store.key("series-meta"), sid))[1] == new.job_id
    # Replace it with other times: the series holds the new point only, once.
    slower = syn.result(
        "imp", 0, "cpu", _times(60, 0, 0), spec=SPECS[0], fingerprint=fp, finished_at=T0 + timedelta(days=30)
    )
    import_results(store, [slower], "file.json", replace=[slower.job_id])
    pts = raw_points(store, sid)
    assert len(pts) == NIGHTS + 1
    assert [p[1] for p in pts].count(slower.phases["forward"].median_s) == 1
    assert new.phases["forward"].median_s not in [p[1] for p in pts]


def test_overwriting_put_keeps_one_point_per_result(store: ResultStore) -> None:
    r = lab()[0]
    changed = syn.result(
        r.run_id, 0, "cpu", _times(90, 0, 0), spec=SPECS[0], fingerprint=r.machine, finished_at=r.finished_at
    )
    assert store.put_result(changed, overwrite=True)
    pts = raw_points(store, sid_of(r, "train"))
    assert len(pts) == NIGHTS and pts[0][1] == changed.phases["train"].median_s


def test_the_series_report_has_one_row_per_series_with_its_history(store: ResultStore) -> None:
    results = lab()
    rep = select(store, Selection(), threshold=10)
    assert rep.series is not None and rep.series.results == len(results) and rep.series.series == 12
    assert len(rep.rows) == 12
    latest = {(r.spec_hash, r.machine.machine_tag if r.machine else None): r for r in results}  # last wins
    for row in rep.rows:
        assert row.phase is not None and row.history is not None
        mine = [
            r
            for r in results
            if r.spec_hash == row.record.spec_hash and r.machine and r.machine.machine_tag == row.record.machine_tag
        ]
        assert row.record.job_id == latest[(row.record.spec_hash, row.record.machine_tag)].job_id
        want = expected_history(mine, row.phase.name)
        h = row.history
        assert h.n == want["n"] and h.window == "week"
        assert h.median_s == pytest.approx(want["median_s"]) and h.min_s == pytest.approx(want["min_s"])
        assert h.max_s == pytest.approx(want["max_s"]) and h.change == pytest.approx(want["change"])
        assert h.change > 0  # the times drift up
        assert h.last == mine[-1].finished_at
    assert "80 results in 12 series: one row per series (latest result)" in to_markdown(rep)
    header, *rows = to_csv(rep).splitlines()
    assert "history_median_s" in header and len(rows) == 12
    # Below the threshold (the default 2,000), and with every_result: one row per result and phase.
    assert select(store, Selection()).series is None
    assert len(select(store, Selection(), threshold=10, every_result=True).rows) == 3 * len(results)


def test_a_narrowed_window_takes_the_latest_result_in_it(store: ResultStore) -> None:
    until = T0 + timedelta(days=9, hours=12)
    since = T0 + timedelta(days=2, hours=12)
    rep = select(store, Selection(machines=("m1",), since=since, until=until), threshold=5)
    assert rep.series is not None and len(rep.rows) == 6
    for row in rep.rows:
        assert row.record.run_id == "n09m1" and row.history is not None and row.history.n == 7
        assert row.history.window == "quarter"  # 6 days: the first against the last quarter of the points


def test_threshold_and_every_result_through_the_cli(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "SERIES_THRESHOLD", 50)
    res = CliRunner().invoke(app, ["report", "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert len(doc["rows"]) == 12 and all(r["history_n"] == NIGHTS for r in doc["rows"])
    res = CliRunner().invoke(app, ["report", "--every-result", "--format", "json"])
    doc = json.loads(res.output)
    assert len(doc["rows"]) == 240 and all(r["history_n"] is None for r in doc["rows"])
    res = CliRunner().invoke(app, ["report", "--format", "markdown"])
    assert "80 results in 12 series" in res.output and "| history |" in res.output
    monkeypatch.setattr(report_mod, "SERIES_THRESHOLD", 80)  # not more than the threshold: every result
    res = CliRunner().invoke(app, ["report", "--format", "json"])
    assert len(json.loads(res.output)["rows"]) == 240


def test_deleting_results_rebuilds_their_series(store: ResultStore) -> None:
    results = lab()
    mine = [r for r in results if r.machine and r.machine.machine_tag == "m0" and r.spec_hash == SPECS[0].spec_hash()]
    store.delete_results([mine[-1].job_id, mine[3].job_id])
    sid = sid_of(mine[0], "forward")
    pts = raw_points(store, sid)
    kept = [r for r in mine if r.job_id not in (mine[-1].job_id, mine[3].job_id)]
    assert [p[0] for p in pts] == [(r.finished_at or T0).timestamp() for r in kept]
    assert json.loads(store.r.hget(store.key("series-meta"), sid))[1] == kept[-1].job_id
    rep = select(store, Selection(machines=("m0",), spec_hashes=(SPECS[0].spec_hash(),)), threshold=5)
    assert {row.record.job_id for row in rep.rows} == {kept[-1].job_id}
    assert all(row.history is not None and row.history.n == NIGHTS - 2 for row in rep.rows)
    # Deleting every result of a series removes it.
    store.delete_results([r.job_id for r in kept])
    assert store.rb.get(store.series_key(sid)) is None and store.r.hget(store.key("series-meta"), sid) is None


def test_results_stored_before_series_are_filed_once(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    results = lab()
    for r in results:  # as an older version stored them: result, summary-less, indexes; no series
        when = (r.finished_at or T0).timestamp()
        store.rb.set(store.key("result", r.job_id), pack_result(r.model_dump_json()))
        for k in store._index_keys(r):
            store.r.zadd(k, {r.job_id: when})
    assert not store.r.exists(store.key("series-meta"))
    series = store.series_points()
    assert len(series) == 12 and all(len(s.points) == NIGHTS for s in series)
    assert store.r.hget(store.key("meta"), "series_version") == str(SERIES_VERSION)
    before = {s.sid: store.rb.get(store.series_key(s.sid)) for s in series}
    assert store.backfill_series() == 12  # idempotent: the same blobs again
    assert {sid: store.rb.get(store.series_key(sid)) for sid in before} == before
    rep = select(store, Selection(), threshold=10)
    assert len(rep.rows) == 12 and all(row.history is not None and row.history.n == NIGHTS for row in rep.rows)


def test_a_corrupt_series_blob_is_skipped_with_one_warning(
    store: ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    results = lab()
    bad, nan = sid_of(results[0], "train"), sid_of(results[1], "train")
    store.rb.append(store.series_key(bad), b"xyz")  # not a whole point
    store.rb.append(store.series_key(nan), struct.pack("<5d", math.nan, 1.0, 0.1, 10.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="farm.results.store"):
        rep = select(store, Selection(), threshold=10)
    warned = [r.getMessage() for r in caplog.records]
    assert len([w for w in warned if store.series_key(bad) in w]) == 1
    assert len([w for w in warned if store.series_key(nan) in w]) == 1
    assert len(rep.rows) == 12  # both jobs still report, through their other series; their train rows lack history
    missing = [r for r in rep.rows if r.history is None]
    assert {series_id(r.record.spec_hash, r.record.machine_tag, r.record.device, r.phase_name) for r in missing} == {
        bad,
        nan,
    }


def test_hostile_meta_is_skipped(store: ResultStore, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    store.r.hset(store.key("series-meta"), "x|y|cpu|train", "not json")
    with caplog.at_level(logging.WARNING, logger="farm.results.store"):
        series = store.series_points()
    assert len(series) == 12
    assert any("series-meta" in r.getMessage() for r in caplog.records)


def test_a_machine_tag_with_separators_keeps_its_series(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    fp = syn.machine("lab:7|b")
    res = syn.result("r1", 0, "cpu", _times(0, 0, 0), spec=SPECS[0], fingerprint=fp)
    assert store.put_result(res)
    keys = [k for k in store.r.scan_iter(match=store.key("series", "*"))]
    assert len(keys) == 3 and all(k.count(":") == 2 for k in keys)  # one segment: the id's `:` encoded
    series = store.series_points(machines=["lab:7|b"])
    assert {s.phase for s in series} == set(PHASE_NAMES) and {s.machine for s in series} == {"lab:7|b"}
    store.delete_results([res.job_id])
    assert store.series_points() == [] and not list(store.r.scan_iter(match=store.key("series", "*")))


def test_a_series_report_finds_machine_baselines_among_the_latest(store: ResultStore) -> None:
    rep = select(store, Selection(), parse_baseline("machine=m0"), threshold=10)
    m1 = [r for r in rep.rows if r.record.machine_tag == "m1" and r.phase_name == "forward"]
    assert len(m1) == 2
    for row in m1:  # m0's newest result of the same spec (m0 ran in other runs: its newest)
        k = [s.spec_hash() for s in SPECS].index(row.record.spec_hash)
        assert row.baseline is not None and row.baseline.job_id == f"n{NIGHTS - 1:02d}m0-{k:03d}"
        assert row.speedup is not None and row.speedup.value < 1  # m1's times are twice m0's
