"""Spec identity: the hash names the work, not how it is measured; stored results under an older
hash join today's histories (regressions, reports, the store's spec index) after the migration."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis

from farm.nightly.regress import build_series
from farm.reports.report import Selection, select
from farm.results import synthetic as syn
from farm.results.records import record_from_dict, summary_json
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.spec import MEASUREMENT_FIELDS, PRESETS, WORK_FIELDS, BenchSpec, parse_spec

BASE = {"model": "gpt2-tiny", "batch": 2, "seq": 64}


def legacy_spec_hash(spec: BenchSpec) -> str:
    """The hash farm wrote before SPEC_HASH_VERSION 2: every field but devices, tags, seed, time limit."""
    new_fields = {"ci_target", "repeat_budget_s", "max_repeats"}
    doc = spec.model_dump(mode="json", exclude={"devices", "tags", "seed", "time_limit_s", *new_fields})
    doc["model"] = spec.shape.model_dump(mode="json")
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def test_every_spec_field_is_work_or_measurement() -> None:
    assert set(WORK_FIELDS) | set(MEASUREMENT_FIELDS) == set(BenchSpec.model_fields)
    assert not set(WORK_FIELDS) & set(MEASUREMENT_FIELDS)


@pytest.mark.parametrize(
    "change",
    [
        {"phases": "forward"},
        {"repeats": 3},
        {"repeats": "auto", "ci_target": 0.01, "repeat_budget_s": 5, "max_repeats": 20},
        {"warmup": 3},
        {"time_limit_s": 60},
        {"tags": {"team": "x"}},
        {"seed": 7},
        {"devices": "cuda:h100"},
        {"precision_mode": "cast"},  # float32: no cast, no autocast, the same work
        {"model": {**PRESETS["gpt2-tiny"].model_dump(), "name": "my-tiny"}},  # same shape, another name
    ],
)
def test_how_it_is_measured_keeps_the_hash(change: dict) -> None:
    """Why 7: `--phases forward` and `--repeats 5` used to start a new series."""
    assert parse_spec({**BASE, **change}).spec_hash() == parse_spec(BASE).spec_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"batch": 4},
        {"seq": 32},
        {"dtype": "bfloat16"},
        {"matmul_precision": "high"},
        {"threads": 1},
        {"compile": True},
        {"optimizer": "sgd"},
        {"checkpoint": "/models/gpt2"},
        {"model": "gpt2"},
        {"model": {**PRESETS["gpt2-tiny"].model_dump(), "n_layer": 3, "name": "tiny-3"}},
    ],
)
def test_what_changes_the_work_changes_the_hash(change: dict) -> None:
    assert parse_spec({**BASE, **change}).spec_hash() != parse_spec(BASE).spec_hash()


def test_precision_mode_counts_for_low_precision() -> None:
    bf16 = {**BASE, "dtype": "bfloat16"}
    hashes = {parse_spec({**bf16, "precision_mode": m}).spec_hash() for m in ("auto", "cast", "autocast")}
    assert len(hashes) == 3


def test_a_result_read_under_an_old_hash_comes_back_under_todays() -> None:
    res = syn.result("old", 0, "cpu", {"forward": [0.5] * 3})
    doc = res.model_dump(mode="json")
    doc["spec_hash"] = legacy_spec_hash(res.spec)
    assert doc["spec_hash"] != res.spec.spec_hash()
    assert JobResult.model_validate(doc).spec_hash == res.spec.spec_hash()


def _old_format(res: JobResult) -> tuple[str, str]:
    """The JSON an older farm stored for `res` (its hash, no host load), and that hash."""
    old = legacy_spec_hash(res.spec)
    doc = res.model_dump(mode="json")
    doc["spec_hash"] = old
    doc.pop("fresh_process", None)
    for p in doc["phases"].values():
        for key in ("host", "repeats_stop"):
            p.pop(key, None)
    return json.dumps(doc, separators=(",", ":")), old


def test_stored_results_under_the_old_hash_join_a_new_run(redis_url: str) -> None:
    """An old run (repeats 3, all phases) and a new one (repeats 5, forward only) of the same work:
    one regression series, one report group, one `idx:spec:<hash>`."""
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    old_spec = parse_spec({**BASE, "repeats": 3, "phases": "all"})
    new_spec = parse_spec({**BASE, "repeats": 5, "phases": "forward"})
    olds = [
        syn.result(f"old{n}", 0, "cpu", {"forward": [0.50, 0.51, 0.50]}, spec=old_spec, finished_at=t0 + timedelta(n))
        for n in range(5)
    ]
    new = syn.result(
        "new", 0, "cpu", {"forward": [0.5, 0.5, 0.51, 0.5, 0.5]}, spec=new_spec, finished_at=t0 + timedelta(9)
    )
    # Written as an older farm wrote them: raw keys, the legacy hash in the JSON, its index and a summary.
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    old_hash = ""
    for res in olds:
        text, old_hash = _old_format(res)
        when = res.finished_at.timestamp() if res.finished_at else 0.0
        raw.set(f"farm:result:{res.job_id}", text)
        raw.set(f"farm:summary:{res.job_id}", summary_json(record_from_dict(json.loads(text)), len(text.encode())))
        for key in ("all", f"run:{res.run_id}", "device:cpu", f"spec:{old_hash}", f"model:{res.model_name}"):
            raw.zadd(f"farm:idx:{key}", {res.job_id: when})
        if res.machine:
            raw.zadd(f"farm:idx:machine:{res.machine.machine_tag}", {res.job_id: when})
    new_hash = new_spec.spec_hash()
    assert old_hash != new_hash
    store = ResultStore.from_url(redis_url)
    assert store.put_result(new)

    # The first read re-indexes: one spec index holds both runs, the old index is gone.
    ids = store.query_ids(spec_hashes=[new_hash])
    assert ids == [r.job_id for r in [*olds, new]]
    assert store.query_ids(spec_hashes=[old_hash]) == []
    assert raw.hget("farm:meta", "spec_hash_version") == "2"
    assert json.loads(raw.get(f"farm:result:{olds[0].job_id}") or "{}")["spec_hash"] == new_hash

    # Regressions: one series (machine, device, spec, phase) with every night in it.
    series = build_series(store.query())
    assert len(series) == 1 and len(next(iter(series.values()))) == 6

    # A report over both runs: one group, the old run's summary rebuilt under the new hash.
    report = select(store, Selection(runs=(olds[0].run_id, new.run_id)))
    assert {r.spec_hash for r in report.records} == {new_hash}
    assert len(report.groups) == 1

    # Idempotent: a second migration moves nothing.
    assert ResultStore.from_url(redis_url).migrate_spec_hashes() == 0
