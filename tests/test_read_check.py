"""A result read back from the store proves every number it carries (docs/import.md, "On read"):
statistics, FLOP/s, MFU, the generate record and the DDP scaling record follow from its own raw times
and stay under the ceiling its fingerprint allows, or the result reads back `invalid` with a one-line
reason naming the field. An honest result reads back unchanged; a read never rewrites stored bytes.

The unit tests check the pure functions (`farm.results.verify`); the real ones write lying results
straight into a real redis-server and read them through the real CLI (`farm results`, `farm report`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from test_import_records import _ddp_result, _generate_result
from typer.testing import CliRunner

from farm.cli.main import app
from farm.results import synthetic as syn
from farm.results.records import record_from_dict, summary_json
from farm.results.result import JobResult
from farm.results.stats import summarize
from farm.results.store import ResultStore, pack_result
from farm.results.verify import check_document, verify_document, verify_record, verify_result
from farm.settings import get_settings
from farm.spec import BenchSpec

SPEC = BenchSpec(model="gpt2", batch=1, seq=128, repeats=5)
CPU_TIMES = {"init": [0.5], "forward": [0.51, 0.5, 0.52, 0.49, 0.505], "train": [1.5, 1.6, 1.55, 1.52, 1.51]}


def _cpu(index: int = 0, run_id: str = "lies") -> JobResult:
    return syn.result(run_id, index, "cpu", CPU_TIMES, spec=SPEC)


def _gpu(index: int = 1, run_id: str = "lies") -> JobResult:
    times = {"init": [1.5], "forward": [0.002, 0.0021, 0.0019, 0.002, 0.00205], "train": [0.006] * 5}
    return syn.result(run_id, index, "cuda", times, spec=SPEC)


def _doc(res: JobResult) -> dict[str, Any]:
    return json.loads(res.model_dump_json())


# --- lies, each a function of an honest result's JSON: (the lie, words its reason holds) ---


def _median(d: dict[str, Any]) -> None:
    d["phases"]["forward"]["stats"]["median_s"] = 1e-6


def _fast_forward(d: dict[str, Any]) -> None:
    """Times of 1 ns with statistics, FLOP/s and MFU made to match them: only the ceiling refutes it."""
    p = d["phases"]["forward"]
    p["times_s"] = [1e-9] * 5
    p["stats"] = summarize(p["times_s"]).model_dump()
    p["achieved_flops"] = p["flops"] / 1e-9
    p["tokens_per_s"] = 128 / 1e-9
    p["mfu"] = p["achieved_flops"] / p["peak_flops"]


def _decode_rate(d: dict[str, Any]) -> None:
    d["phases"]["generate"]["generate"]["decode_tokens_per_s"] = 3e12


def _efficiency(d: dict[str, Any]) -> None:
    d["phases"]["train"]["scaling"]["efficiency"] = 50.0


LIES: list[tuple[str, Callable[[], JobResult], Callable[[dict[str, Any]], None], str]] = [
    ("a median that is not the times'", _cpu, _median,
     "forward.stats.median_s: stored 1e-06 does not follow from times_s (0.505)"),
    ("1 ns forward repeats", _gpu, _fast_forward, "forward.times_s: "),
    ("a decode rate of 3e12 tokens/s", lambda: _generate_result(2e-3, 4e-3), _decode_rate,
     "generate.decode_tokens_per_s: stored 3e+12 does not follow from decode_times_s"),
    ("a DDP efficiency of 50", lambda: _ddp_result("cuda", 2, 0.05, [0.045] * 5), _efficiency,
     "train.scaling.efficiency: stored 50 does not follow from times_s and single_device_times_s (0.9)"),
]  # fmt: skip


def _lie(make: Callable[[], JobResult], lie: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    d = _doc(make())
    lie(d)
    return d


def test_honest_results_read_back_unchanged() -> None:
    for res in (_cpu(), _gpu(), _generate_result(2e-3, 4e-3), _ddp_result("cuda", 2, 0.05, [0.045] * 5)):
        assert res.status in ("ok", "unverified") and check_document(_doc(res)) == {}, (res.job_id, res.error)
        assert verify_result(res) is res
        doc = _doc(res)
        assert verify_document(doc) is doc


@pytest.mark.parametrize(("case", "make", "lie", "reason"), LIES, ids=[x[0] for x in LIES])
def test_a_lying_record_reads_back_invalid_naming_the_field(
    case: str, make: Callable[[], JobResult], lie: Callable[[dict[str, Any]], None], reason: str
) -> None:
    doc = _lie(make, lie)
    before = json.dumps(doc)
    out = verify_document(doc)
    assert json.dumps(doc) == before, "the read check never changes what it was given"
    phase = next(p for p in out["phases"].values() if p["status"] == "invalid")
    assert reason in phase["invalid_reason"] and "\n" not in phase["invalid_reason"], (case, phase["invalid_reason"])
    assert out["status"] == "invalid" and out["error"] == phase["invalid_reason"]
    assert out["warnings"][-1] == f"stored as {doc['status']}; re-checked on read as invalid"


def test_1e_12_s_decode_steps_claimed_ok_are_invalid() -> None:
    res = _generate_result(prefill=2e-3, decode_step=1e-12, whole=0.1)
    res.phases["generate"].status, res.phases["generate"].invalid_reason = "ok", None  # what the writer claims
    res.status, res.error = "ok", None
    out = verify_result(res)
    assert out.status == "invalid"
    assert "the fastest decode step ran at" in (out.phases["generate"].invalid_reason or "")


def test_a_ddp_efficiency_of_50_from_its_own_times_is_invalid() -> None:
    res = _ddp_result("cuda", 2, 0.05, [2.5] * 5)  # one device 50 x slower than the group of two
    res.phases["train"].status = "ok"
    out = verify_result(res)
    assert out.phases["train"].status == "invalid"
    assert "efficiency 50 " in (out.phases["train"].invalid_reason or "")


def test_a_record_from_a_forged_summary_is_checked_against_its_times() -> None:
    honest = record_from_dict(_doc(_cpu()))
    assert verify_record(honest).status == "ok" and all(p.status == "ok" for p in honest.phases.values())
    forged = record_from_dict(_doc(_cpu()))
    forged.phases["train"].median_s = 0.001
    verify_record(forged)
    assert forged.status == "invalid" and forged.phases["train"].status == "invalid"
    assert (
        forged.phases["train"].invalid_reason
        == "train.stats.median_s: stored 0.001 does not follow from times_s (1.52)"
    )


def test_a_phase_that_failed_or_was_already_invalid_is_left_as_it_is() -> None:
    d = _lie(_cpu, _median)
    d["phases"]["forward"]["status"], d["phases"]["forward"]["invalid_reason"] = "invalid", "forward: kept"
    d["status"] = "invalid"
    assert check_document(d) == {}


# --- real: a redis-server, the real CLI ---


@pytest.fixture()
def farm(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ResultStore, redis.Redis]]:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield ResultStore.from_url(redis_url), redis.Redis.from_url(redis_url)
    get_settings.cache_clear()


def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (args, res.output, res.stderr)
    return res.stdout


def test_lies_written_into_redis_read_back_invalid_through_the_cli(farm: tuple[ResultStore, redis.Redis]) -> None:
    store, r = farm
    honest = _cpu(0)
    made = [honest]
    lies: dict[str, tuple[dict[str, Any], str]] = {}
    for i, (_, make, lie, reason) in enumerate(LIES, start=1):
        res = make().model_copy(update={"run_id": "lies", "job_id": f"lies-{i:03d}"})
        made.append(res)
        doc = _doc(res)
        lie(doc)
        lies[res.job_id] = (doc, reason)
    store.create_run("lies", [SPEC], [], name="lies")
    for res in made:
        assert store.put_result(res)
    written = {}
    for job_id, (doc, _) in lies.items():  # the lie replaces the honest bytes, summary and all
        written[job_id] = pack_result(json.dumps(doc))
        r.set(store._result_key(job_id), written[job_id])
        r.delete(store._summary_key(job_id))
    got = {x["job_id"]: x for x in json.loads(_cli("results", "lies", "--json"))}
    assert got[honest.job_id] == json.loads(honest.model_dump_json()), "an honest result reads back as stored"
    for job_id, (_, reason) in lies.items():
        assert got[job_id]["status"] == "invalid" and reason in got[job_id]["error"], (job_id, got[job_id]["error"])
        assert r.get(store._result_key(job_id)) == written[job_id], "a read never rewrites what is stored"
    table = _cli("results", "lies", "--wide")
    assert table.count("invalid") >= len(lies), table
    rows = list(csv.DictReader(io.StringIO(_cli("report", "lies", "--format", "csv"))))
    assert {x["status"] for x in rows if x["job_id"] == honest.job_id} == {"ok"}
    for job_id, (_, reason) in lies.items():
        assert any(x["status"] == "invalid" and reason in x["error"] for x in rows if x["job_id"] == job_id), job_id


def test_a_forged_summary_reads_back_invalid_in_a_report(farm: tuple[ResultStore, redis.Redis]) -> None:
    store, r = farm
    res = _cpu(0, "forged")
    store.create_run("forged", [SPEC], [], name="forged")
    assert store.put_result(res)
    rec = record_from_dict(_doc(res))
    rec.phases["forward"].median_s = 1e-6  # the summary says 1 µs; its own times say 505 ms
    r.set(store._summary_key(res.job_id), summary_json(rec, len(r.get(store._result_key(res.job_id)) or b"")))
    (got,) = store.load_records([res.job_id])
    assert got.phases["forward"].status == "invalid"
    assert (
        got.phases["forward"].invalid_reason
        == "forward.stats.median_s: stored 1e-06 does not follow from times_s (0.505)"
    )
    rows = list(csv.DictReader(io.StringIO(_cli("report", "forged", "--format", "csv"))))
    assert [x["status"] for x in rows if x["phase"] == "forward"] == ["invalid"]
