"""One device, one history (issue: `cpu`, `cpu:<machine>` and `cpu:*` on one machine were two series):
records carry the series device (`farm.spec.series_device`), the store files a CPU result under
`cpu` and `cpu:<machine>` whatever its job named, and results stored before are migrated once."""

from __future__ import annotations

import pytest

from farm.reports.compare import parse_baseline
from farm.reports.report import Selection, select
from farm.results import synthetic as syn
from farm.results.records import records_from_results
from farm.results.store import ResultStore
from farm.spec import device_selector, series_device


@pytest.mark.parametrize(
    ("tag", "series", "selector"),
    [
        ("cpu", "cpu", ("cpu", None)),
        ("cpu:vm", "cpu", ("cpu", "vm")),
        ("cpu:*", "cpu", ("cpu", None)),
        ("cuda", "cuda", ("cuda", None)),
        ("cuda:h100", "cuda:h100", ("cuda:h100", None)),
        ("mps:mini", "mps", ("mps", "mini")),
    ],
)
def test_series_device_and_selector(tag: str, series: str, selector: tuple[str, str | None]) -> None:
    assert series_device(tag) == series and device_selector(tag) == selector


def _results() -> list:  # type: ignore[type-arg]
    vm, box = syn.machine("vm"), syn.machine("box7")
    return [
        syn.result("r1", 0, "cpu", {"forward": [0.1] * 5}, fingerprint=vm),
        syn.result("r2", 0, "cpu:vm", {"forward": [0.11] * 5}, fingerprint=vm),
        syn.result("r3", 0, "cpu:box7", {"forward": [0.2] * 5}, fingerprint=box),
    ]


def test_three_spellings_of_one_cpu_are_one_series(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    results = _results()
    assert len({r.spec_hash for r in results}) == 1  # the device is not part of the spec hash
    for res in results:
        assert store.put_result(res)
    assert {r.device for r in records_from_results(results)} == {"cpu"}
    by = {d: sorted(r.run_id for r in store.query(devices=[d])) for d in ("cpu", "cpu:vm", "cpu:box7")}
    assert by == {"cpu": ["r1", "r2", "r3"], "cpu:vm": ["r1", "r2"], "cpu:box7": ["r3"]}
    series = store.series_points(phases=["forward"])
    assert sorted((s.machine, s.device, len(s.points)) for s in series) == [("box7", "cpu", 1), ("vm", "cpu", 2)]
    narrowed = store.series_points(devices=["cpu:vm"], phases=["forward"])
    assert [(s.machine, len(s.points)) for s in narrowed] == [("vm", 2)]
    rep = select(store, Selection(devices=("cpu:vm",)), parse_baseline("device=cpu:vm"))
    assert {r.record.run_id for r in rep.rows} == {"r1", "r2"}
    assert parse_baseline("device=cpu:vm").machine == "vm"


def test_results_stored_before_are_migrated_once(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    old = syn.result("r0", 0, "cpu:vm", {"forward": [0.1] * 5}, fingerprint=syn.machine("vm"))
    assert store.put_result(old)
    # As an older farm left it: only the tag the job named, no migration recorded, series of v1.
    store.r.zrem(store._index_key("device", "cpu"), old.job_id)
    store.r.hdel(store._meta_key(), "device_index_version")
    assert store.r.zscore(store._index_key("device", "cpu"), old.job_id) is None
    fresh = ResultStore.from_url(redis_url)
    assert [r.job_id for r in fresh.query(devices=["cpu"])] == [old.job_id]
    assert fresh.r.hget(fresh._meta_key(), "device_index_version") == "1"
