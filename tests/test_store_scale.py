"""The store's compact format against a real redis-server: packed results, generic summaries, old data.

Every `PhaseRecord` field (dict-valued ones included) survives a summary round trip; results stored
by older versions (plain JSON) are still read, listed, mended and deleted; a corrupt packed result
is skipped with one warning naming its key; and a result costs at most half the Redis memory
(MEMORY USAGE) of the plain-JSON format. Bytes are asserted, never times.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pydantic_core
import pytest

from farm.errors import NotFoundError
from farm.results import synthetic as syn
from farm.results.records import (
    SUMMARY_VERSION,
    PhaseRecord,
    check_record,
    record_from_dict,
    record_from_summary,
    records_from_results,
    summary_json,
)
from farm.results.result import JobResult
from farm.results.store import PACKED_1, ResultStore, pack_result, unpack_result
from farm.spec import Job

ROOT = Path(__file__).resolve().parent.parent
CPU = {"init": [1.2], "forward": [0.50, 0.51, 0.49, 0.50, 0.52], "train": [1.60, 1.62, 1.58, 1.61, 1.59]}
GPU = {"init": [1.5], "forward": [0.0050, 0.0051, 0.0049, 0.0050, 0.0050], "train": [0.020, 0.021, 0.019, 0.02, 0.02]}


def _value(name: str, kind: str, i: int) -> Any:
    """A value of a field's declared type that no default has (so a lost field shows)."""
    if kind == "float | None":
        return 1.25 + i / 7
    if kind == "bool":
        return True
    if kind == "int" or kind == "int | None":
        return 1000 + i
    if kind == "list[float]":
        return [0.5, 0.25 + i, 1e-9]
    if kind.startswith("dict"):
        return {"tokens": 128 + i, "nested": {"ms": [1.5, 2.5]}, "label": f"{name} ✓", "none": None}
    return f'{name} <{i}> "quoted"'  # str, str | None


def _full_phase(name: str) -> PhaseRecord:
    vals = {f.name: _value(f.name, str(f.type), i) for i, f in enumerate(fields(PhaseRecord))}
    return PhaseRecord(**{**vals, "name": name, "status": "ok"})


def test_every_phase_field_round_trips_through_a_summary() -> None:
    rec = record_from_dict(syn.result("r1", 0, "cpu", CPU).model_dump(mode="json"))
    rec.phases = {"forward": _full_phase("forward"), "train": _full_phase("train")}
    rec.fresh_process = True
    rec.warnings = ["a warning"]
    row = pydantic_core.from_json(summary_json(rec, 123))
    assert row[0] == 123 and row[1] == SUMMARY_VERSION
    back = record_from_summary(row)
    assert back == rec
    assert back is not None and all(type(getattr(back.phases["train"], f.name)) is type(
        getattr(rec.phases["train"], f.name)) for f in fields(PhaseRecord))  # fmt: skip
    dicts = [f.name for f in fields(PhaseRecord) if str(f.type).startswith("dict")]
    for name in dicts:  # the dict fields other helpers add (generate, telemetry, scaling) travel as JSON
        assert getattr(back.phases["forward"], name)["nested"] == {"ms": [1.5, 2.5]}


def test_nones_and_empty_phases_round_trip() -> None:
    rec = record_from_dict(
        syn.result("r1", 0, "cpu", {"init": [0.3]}, status="failed", error="boom").model_dump(mode="json")
    )
    blank = PhaseRecord(
        **{f.name: None for f in fields(PhaseRecord) if str(f.type).endswith("| None")},
        name="forward", status="failed", times=[], n=0, noisy=False,
    )  # fmt: skip
    rec.phases["forward"] = blank
    assert record_from_summary(pydantic_core.from_json(summary_json(rec, 9))) == rec


def test_a_summary_of_another_layout_is_not_used() -> None:
    rec = record_from_dict(syn.result("r1", 0, "cpu", CPU).model_dump(mode="json"))
    row = pydantic_core.from_json(summary_json(rec, 1))
    row[1] = 3  # the layout before the generic one
    assert record_from_summary(row) is None
    row[1] = SUMMARY_VERSION
    row[-2][0] = row[-2][0][:-1]  # a phase one value short
    with pytest.raises(ValueError):
        record_from_summary(row)


def test_pack_round_trip_and_plain_json_passes_through() -> None:
    doc = syn.result("r1", 1, "cuda", GPU, fingerprint=syn.machine("g", gpu="NVIDIA H100 80GB HBM3")).model_dump_json()
    packed = pack_result(doc)
    assert packed[:1] == PACKED_1 and len(packed) < len(doc) / 3
    assert unpack_result(packed) == doc.encode()
    assert unpack_result(doc.encode()) == doc.encode()  # as older versions stored it
    with pytest.raises(ValueError, match="does not decompress"):
        unpack_result(PACKED_1 + b"\xff\x00 not deflate")


@pytest.fixture()
def store(redis_url: str) -> ResultStore:
    return ResultStore.from_url(redis_url)


def _results() -> list[JobResult]:
    gpu = syn.machine("gpu1", gpu="NVIDIA H100 80GB HBM3")
    return [syn.result("r1", 0, "cpu", CPU), syn.result("r1", 1, "cuda", GPU, fingerprint=gpu)]


def put_plain(store: ResultStore, res: JobResult) -> str:
    """Store a result as the version before packing did: plain JSON, a summary, the same indexes."""
    doc = res.model_dump_json()
    store.r.set(store.key("result", res.job_id), doc)
    store.r.set(store.key("summary", res.job_id), summary_json(record_from_dict(json.loads(doc)), len(doc.encode())))
    when = (res.finished_at or res.started_at).timestamp()
    for k in store._index_keys(res):
        store.r.zadd(k, {res.job_id: when})
    return doc


def test_store_round_trip_packed(store: ResultStore) -> None:
    results = _results()
    for r in results:
        assert store.put_result(r)
    raw = store.rb.get(store.key("result", results[0].job_id))
    assert raw[:1] == PACKED_1  # stored packed
    ids = store.query_ids(runs=["r1"])
    expected = records_from_results(results)
    assert store.load_records(ids) == expected  # from the summaries written with the results
    assert store.load_records(ids, cache=False) == expected  # from the packed results
    assert [r.model_dump() for r in store.get_results(ids)] == [r.model_dump() for r in results]
    assert store.get_result(ids[1]).model_dump() == results[1].model_dump()
    assert not store.put_result(results[0])  # written once
    for rec in store.load_records(ids):
        check_record(rec)


def test_old_plain_json_results_are_still_read_and_mended(store: ResultStore) -> None:
    old, new = _results()
    doc = put_plain(store, old)
    assert store.put_result(new)
    ids = store.query_ids(runs=["r1"])
    assert store.load_records(ids) == records_from_results([old, new])
    store.r.delete(store.key("summary", old.job_id))
    assert store.load_records(ids) == records_from_results([old, new])  # re-derived from the plain JSON
    assert json.loads(store.r.get(store.key("summary", old.job_id)))[0] == len(doc.encode())
    assert store.get_result(old.job_id).model_dump() == old.model_dump()
    jobs = [Job(job_id=r.job_id, run_id="r1", device=r.device, spec=r.spec) for r in (old, new)]
    store.create_run("r1", [old.spec], jobs)
    assert [status for _, _, status in store.job_rows("r1")] == [old.status, new.status]
    seen = store.occupancy([old.job_id, new.job_id], ["r1"])
    assert seen.results == {old.job_id, new.job_id} and seen.result_runs == {old.job_id: "r1", new.job_id: "r1"}
    assert store.delete_results([old.job_id]) == [old.job_id]
    assert not store.r.exists(store.key("result", old.job_id), store.key("summary", old.job_id))
    assert store.query_ids() == [new.job_id]


def test_spec_hash_migration_keeps_each_result_in_its_format(store: ResultStore) -> None:
    plain, packed = (r.model_copy(update={"spec_hash": "0ld0ld0ld0ld"}) for r in _results())
    put_plain(store, plain)
    assert store.put_result(packed)
    store.r.hset(store.key("meta"), "spec_hash_version", 0)
    new = _results()[0].spec_hash
    assert store.query_ids(spec_hashes=[new]) == [plain.job_id, packed.job_id]  # migrated on the first read
    raws = [store.rb.get(store.key("result", r.job_id)) for r in (plain, packed)]
    assert raws[0][:1] == b"{" and raws[1][:1] == PACKED_1
    assert [json.loads(unpack_result(raw))["spec_hash"] for raw in raws] == [new, new]
    assert [r.spec_hash for r in store.get_results([plain.job_id, packed.job_id])] == [new, new]


def test_a_corrupt_packed_result_is_skipped_with_one_warning(
    store: ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = _results()
    assert store.put_result(good) and store.put_result(bad)
    key = store.key("result", bad.job_id)
    store.rb.set(key, PACKED_1 + b"\x00garbage that is not deflate")  # and no summary matches it now
    caplog.set_level(logging.WARNING, logger="farm.results.store")
    ids = store.query_ids(runs=["r1"])
    assert [r.job_id for r in store.load_records(ids)] == [good.job_id]
    (warning,) = [r.getMessage() for r in caplog.records if key in r.getMessage()]
    assert warning.startswith(f"skipped {key}: it is not a readable record: does not decompress")
    assert "does not decompress" in store.skipped[key]
    assert [r.job_id for r in store.get_results(ids)] == [good.job_id]
    with pytest.raises(NotFoundError, match=key):
        store.get_result(bad.job_id)
    assert store.delete_results([bad.job_id]) == [bad.job_id]  # removable though unreadable
    assert store.query_ids() == [good.job_id]


def test_a_summary_naming_another_job_is_rederived_with_one_warning(
    store: ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = _results()
    assert store.put_result(a) and store.put_result(b)
    summary_a = store.r.get(store.key("summary", a.job_id))
    length_b = store.r.strlen(store.key("result", b.job_id))
    skey = store.key("summary", b.job_id)
    store.r.set(skey, f"[{length_b}," + summary_a.split(",", 1)[1])  # a's record under b's key, b's length
    caplog.set_level(logging.WARNING, logger="farm.results.store")
    assert store.load_records([a.job_id, b.job_id]) == records_from_results([a, b])
    (warning,) = [r.getMessage() for r in caplog.records if skey in r.getMessage()]
    assert "names another job" in warning and "re-derived" in warning
    assert store.load_records([b.job_id]) == records_from_results([b])  # rewritten: read cleanly next time
    assert len([r for r in caplog.records if skey in r.getMessage()]) == 1


def test_a_packed_result_costs_at_most_half_the_memory_of_plain_json(redis_url: str) -> None:
    old, new = ResultStore.from_url(redis_url, prefix="old"), ResultStore.from_url(redis_url, prefix="new")
    n = 60
    gpu = syn.machine("gpu1", gpu="NVIDIA H100 80GB HBM3")
    for i in range(n):
        run = f"m{i // 2:04d}"
        res = syn.result(run, i, "cuda" if i % 2 else "cpu", GPU if i % 2 else CPU, fingerprint=gpu if i % 2 else None)
        put_plain(old, res)
        assert new.put_result(res)
    before, after = old.result_memory(), new.result_memory()
    assert after["idx"] == before["idx"]  # the same index entries
    assert after["result"] < before["result"] / 3
    assert sum(after.values()) <= sum(before.values()) / 2, (before, after)


def test_store_scale_benchmark_runs(tmp_path: Path) -> None:
    env = {**os.environ, "FARM_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "benchmarks/store_scale.py", "--sizes", "300", "--write-sample", "100",
         "--series-sizes", "2500"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| 300 |" in proc.stdout and "MEMORY USAGE" in proc.stdout
    assert "| 2500 | 900 | 900 |" in proc.stdout  # the series report: one row per series
