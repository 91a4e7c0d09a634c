"""Hostile data (issue 13): finite numbers only, unreadable records skipped with a warning and
removable, imports that never overwrite, limits with one-line refusals, safe model names.

Every class goes through the real CLI (Typer's CliRunner, in-process) against a real redis-server,
and asserts one line on stderr, the documented exit code (farm.cli.main), nothing stored or
half-stored, and that the farm still works afterwards (a report of a good run, regressions, check).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel, ValidationError
from test_regress import history
from typer.testing import CliRunner, Result

from farm.cli.main import app
from farm.results import synthetic as syn
from farm.results.host import HostLoad
from farm.results.machine import GpuInfo, MachineFingerprint
from farm.results.records import record_from_dict, summary_json
from farm.results.result import JobResult, PhaseResult
from farm.results.stats import Stats, summarize
from farm.results.store import ResultStore, unpack_result
from farm.settings import get_settings
from farm.spec import BenchSpec, Job, ModelShape, parse_spec

runner = CliRunner()
NIGHTS = 15  # n000 .. n014 on box7, quiet: no regression


@pytest.fixture()
def farm(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ResultStore, redis.Redis]]:
    """A farm holding 15 quiet nights (runs n000..n014, one CPU result each)."""
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    for r in history(NIGHTS):
        store.create_run(r.run_id, [r.spec], [], name="nightly")
        assert store.put_result(r)
    yield store, redis.Redis.from_url(redis_url, decode_responses=True)
    get_settings.cache_clear()


def cli(*args: str) -> Result:
    res = runner.invoke(app, list(args))
    assert "Traceback" not in res.output + res.stderr, (args, res.stderr)
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


def refused(res: Result, code: int, *words: str) -> str:
    """The one stderr line of a refusal with exit `code`, holding every word."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def keys(r: redis.Redis) -> set[str]:
    return set(r.keys("farm:*"))


def still_works(store: ResultStore) -> None:
    """A report of a good run, `farm regressions` and `farm check` after the hostile input."""
    res = cli("report", "n013", "--format", "csv")
    assert res.exit_code == 0 and "n013-000" in res.stdout, res.stderr
    res = cli("regressions", "--json", "--no-notify")
    assert res.exit_code == 0 and json.loads(res.stdout) == [], res.stderr
    res = cli("check", "n014", "--no-notify", "--json")
    assert res.exit_code == 0, res.stderr
    assert {v["kind"] for v in json.loads(res.stdout)["verdicts"]} == {"unchanged"}


def good_doc(run_id: str = "lab1", index: int = 0, **spec: Any) -> dict[str, Any]:
    s = BenchSpec(model="gpt2", batch=1, seq=128, repeats=5, **spec)
    times = {"forward": [0.5, 0.51, 0.49, 0.5, 0.52]}
    return syn.result(run_id, index, "cpu", times, spec=s, fingerprint=syn.machine("lab-cpu")).model_dump(mode="json")


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


# -- finite numbers only -----------------------------------------------------------------------
FINITE_CASES: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (Stats, {**summarize([1.0, 2.0, 3.0]).model_dump(), "median_s": math.nan}, "median_s"),
    (HostLoad, {"load_avg_1m": math.inf}, "load_avg_1m"),
    (PhaseResult, {"name": "forward", "times_s": [0.1, math.nan]}, "times_s.1"),
    (PhaseResult, {"name": "train", "breakdown": {"loss_last": math.nan}}, "breakdown.loss_last"),
    (PhaseResult, {"name": "forward", "mfu": -math.inf}, "mfu"),
    (MachineFingerprint, {**syn.machine("m").model_dump(), "cpu_clock_mhz": math.nan}, "cpu_clock_mhz"),
    (GpuInfo, {"index": 0, "name": "g", "tag": "g", "memory_bytes": None, "sm_count": None}, ""),
    (BenchSpec, {"ci_target": math.nan}, "ci_target"),
    (BenchSpec, {"time_limit_s": math.inf}, "time_limit_s"),
    (BenchSpec, {"repeat_budget_s": math.inf}, "repeat_budget_s"),
]


@pytest.mark.parametrize(("model", "doc", "field"), FINITE_CASES, ids=lambda x: getattr(x, "__name__", None))
def test_every_stored_model_refuses_nan_and_infinity(model: type[BaseModel], doc: dict[str, Any], field: str) -> None:
    if not field:  # GpuInfo has no float field: its integers already refuse non-finite floats
        with pytest.raises(ValidationError):
            model.model_validate({**doc, "sm_count": math.inf})
        return
    with pytest.raises(ValidationError) as e:
        model.model_validate(doc)
    err = e.value.errors()[0]
    assert ".".join(str(x) for x in err["loc"]) == field and "finite" in err["msg"]


def test_a_job_result_with_nan_cannot_be_made() -> None:
    doc = good_doc()
    doc["phases"]["forward"]["times_s"][1] = math.nan
    with pytest.raises(ValidationError):
        JobResult.model_validate(doc)


@pytest.mark.parametrize(
    ("where", "literal", "field"),
    [
        (("phases", "forward", "times_s", 1), "NaN", "results[0].phases.forward.times_s.1"),
        (("phases", "forward", "breakdown", "loss_last"), "Infinity", "results[0].phases.forward.breakdown.loss_last"),
        (("machine", "cpu_clock_mhz"), "NaN", "results[0].machine.cpu_clock_mhz"),
        (("spec", "ci_target"), "NaN", "results[0].spec.ci_target"),
    ],
)
def test_import_refuses_nan_and_infinity_naming_the_field(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path, where: tuple[Any, ...], literal: str, field: str
) -> None:
    store, r = farm
    before = keys(r)
    doc = good_doc()
    node = doc
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = "__X__"
    f = tmp_path / "nan.json"
    f.write_text(json.dumps([doc]).replace('"__X__"', literal))
    refused(cli("import", str(f)), 2, field, "finite")
    assert keys(r) == before  # nothing stored
    still_works(store)


def _nan_checkpoint(path: Path) -> Path:
    """A real Hugging Face GPT-2 directory whose final layer norm holds NaN: every loss is NaN."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=300, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    model.save_pretrained(path)
    return path


def test_a_diverged_loss_fails_the_train_phase_and_is_stored_with_its_error(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path
) -> None:
    from farm.engine.runner import run_job  # torch: only this test runs a job

    spec = parse_spec(
        {"checkpoint": str(_nan_checkpoint(tmp_path / "nan")), "batch": 1, "seq": 16, "repeats": 2, "warmup": 1}
    )
    result = run_job(spec.expand(run_id="div1")[0])
    train = result.phases["train"]
    assert train.status == "failed" and train.error is not None
    assert "training diverged: loss nan at step 1 of 3" in train.error
    assert "loss_first" not in train.breakdown and "loss_last" not in train.breakdown
    assert result.status == "failed" and "training diverged" in (result.error or "")
    assert len(train.times_s) == 2  # what was measured is kept beside the verdict
    store, _ = farm
    store.create_run("div1", [result.spec], [])
    assert store.put_result(result)  # finite everywhere: it stores and reads back
    res = cli("results", "div1", "--json")
    assert res.exit_code == 0
    (doc,) = json.loads(res.stdout)
    assert doc["status"] == "failed" and doc["phases"]["train"]["status"] == "failed"


# -- records no reader can parse ---------------------------------------------------------------
def _plant_bad_records(store: ResultStore, r: redis.Redis) -> list[str]:
    """Three bad records in run n014's series: garbage JSON, a result stored with NaN (as pydantic
    wrote it: null) and a summary that does not parse; returns the keys a reader must name."""
    good = store.get_result("n014-000")
    index_keys = [k for k in r.keys("farm:idx:*") if r.zscore(k, "n014-000") is not None]
    when = good.finished_at.timestamp() if good.finished_at else 0.0
    r.set("farm:result:n014-901", "{not json at all")
    nan_doc = good.model_copy(update={"job_id": "n014-902"}).model_dump_json()
    nan_doc = nan_doc.replace('"times_s":[', '"times_s":[null,', 1)
    r.set("farm:result:n014-902", nan_doc)
    for k in index_keys:
        r.zadd(k, {"n014-901": when + 1, "n014-902": when + 2})
    raw13 = store.rb.get("farm:result:n013-000")  # results are stored packed
    assert raw13 is not None
    summary = summary_json(record_from_dict(json.loads(unpack_result(raw13))), len(raw13))
    r.set("farm:summary:n013-000", summary[: summary.index(",")] + ',"broken')  # the same length prefix
    return ["farm:result:n014-901", "farm:result:n014-902"]


def _warned_once(res: Result, *bad: str) -> None:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    for key in bad:
        hits = [ln for ln in lines if ln.startswith(f"warning: skipped {key}:")]
        assert len(hits) == 1, (key, res.stderr)
    assert not [ln for ln in lines if ln.startswith("error")], res.stderr


READERS = [
    ["results", "n014"],
    ["results", "n014", "--json"],
    ["report", "n014"],
    ["report", "n014", "--format", "markdown"],
    ["compare"],
    ["regressions", "--no-notify"],
    ["regressions", "--json", "--no-notify", "--all"],
    ["check", "n014", "--no-notify"],
    ["diff", "n013-000", "n014-000"],
]


@pytest.mark.parametrize("argv", READERS, ids=" ".join)
def test_readers_skip_unreadable_records_with_one_warning_per_key(
    farm: tuple[ResultStore, redis.Redis], argv: list[str]
) -> None:
    store, r = farm
    bad = _plant_bad_records(store, r)
    res = cli(*argv)
    assert res.exit_code == 0, (argv, res.stderr)
    if argv[0] in ("results", "report", "compare", "regressions", "check"):
        _warned_once(res, *bad)
    if argv[0] in ("results", "report"):
        assert "n014-901" not in res.stdout and "n014-902" not in res.stdout
        assert ("n014-000" if "--json" in argv else "1 result") in res.stdout
    still_works(store)


def test_html_report_with_history_skips_unreadable_records(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path
) -> None:
    store, r = farm
    bad = _plant_bad_records(store, r)
    res = cli("report", "n014", "-o", str(tmp_path / "r.html"))
    assert res.exit_code == 0, res.stderr
    _warned_once(res, *bad)
    html = (tmp_path / "r.html").read_text()
    assert "n014 (nightly)" in html and "<figure" in html  # the report and its history plot


def test_a_bad_summary_is_rederived_from_its_result(farm: tuple[ResultStore, redis.Redis]) -> None:
    store, r = farm
    _plant_bad_records(store, r)
    res = cli("report", "n013", "--format", "csv")
    assert res.exit_code == 0 and "n013-000" in res.stdout
    _warned_once(res, "farm:summary:n013-000")
    assert cli("report", "n013", "--format", "csv").stderr.strip() == ""  # rebuilt: read cleanly next time


def test_the_library_returns_the_skipped_keys(farm: tuple[ResultStore, redis.Redis]) -> None:
    store, r = farm
    bad = _plant_bad_records(store, r)
    fresh = ResultStore(r)
    ids = fresh.query_ids(runs=["n014"])
    assert [x.job_id for x in fresh.get_results(ids)] == ["n014-000"]
    assert [x.job_id for x in fresh.load_records(ids)] == ["n014-000"]
    assert set(bad) <= set(fresh.skipped) and "not a readable record" in fresh.skipped[bad[0]]
    assert "times_s" in fresh.skipped[bad[1]]


def test_status_shows_an_unreadable_result_as_such(farm: tuple[ResultStore, redis.Redis]) -> None:
    store, r = farm
    spec = BenchSpec(model="gpt2", batch=1, seq=128, repeats=5)
    store.create_run("st1", [spec], [Job(job_id="st1-000", run_id="st1", device="cpu", spec=spec)])
    r.set("farm:result:st1-000", "[1, 2")
    res = cli("status", "st1", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["jobs"][0]["status"] == "unreadable"
    _warned_once(res, "farm:result:st1-000")


def test_diff_of_an_unreadable_record_is_one_line_not_found(farm: tuple[ResultStore, redis.Redis]) -> None:
    store, r = farm
    _plant_bad_records(store, r)
    refused(cli("diff", "n014-901", "n014-000"), 4, "farm:result:n014-901", "not a readable record")


def test_delete_removes_a_bad_record_with_its_summary_and_index_entries(
    farm: tuple[ResultStore, redis.Redis],
) -> None:
    store, r = farm
    bad = _plant_bad_records(store, r)
    before = keys(r)
    refused(cli("delete", "n014-901"), 2, "--yes")  # no terminal to confirm on: refused
    assert keys(r) == before
    refused(cli("delete", "n014-901", "nope-000", "--yes"), 4, "nope-000")
    assert keys(r) == before  # all or nothing
    res = cli("delete", "n014-901", "n014-902", "--yes")
    assert res.exit_code == 0 and "deleted 2 result(s)" in res.stderr
    assert not r.exists(*bad, "farm:summary:n014-901", "farm:summary:n014-902")
    for k in r.keys("farm:idx:*"):
        assert r.zscore(k, "n014-901") is None and r.zscore(k, "n014-902") is None, k
    res = cli("results", "n014")
    assert res.exit_code == 0 and "skipped" not in res.stderr
    still_works(store)


def test_import_replace_mends_a_bad_record(farm: tuple[ResultStore, redis.Redis], tmp_path: Path) -> None:
    store, r = farm
    _plant_bad_records(store, r)
    fixed = store.get_result("n014-000").model_copy(update={"job_id": "n014-902"}).model_dump(mode="json")
    f = write_json(tmp_path / "fixed.json", [fixed])
    before = keys(r)
    refused(cli("import", str(f), "--replace", "n014-902"), 2, "--yes")
    assert keys(r) == before
    assert cli("import", str(f), "--json").exit_code == 0  # without --replace: left as it was
    assert r.get("farm:result:n014-902") is not None and "null" in (r.get("farm:result:n014-902") or "")
    res = cli("import", str(f), "--replace", "n014-902", "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["replaced"] == ["n014-902"]
    assert store.get_result("n014-902").run_id == "n014"
    assert r.zscore("farm:idx:run:n014", "n014-902") is not None
    refused(cli("import", str(f), "--replace", "n014-777", "--yes"), 2, "replace", "n014-777")


# -- imports never write into what exists -------------------------------------------------------
def test_import_never_joins_an_existing_run(farm: tuple[ResultStore, redis.Redis], tmp_path: Path) -> None:
    store, r = farm
    before = keys(r)
    f = write_json(tmp_path / "join.json", [good_doc("n014", 50)])
    refused(cli("import", str(f)), 2, "results[0].run_id", "'n014' already exists")
    assert keys(r) == before
    still_works(store)


def test_import_never_fills_a_queued_job_and_stores_nothing_half(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path
) -> None:
    store, r = farm
    spec = BenchSpec(model="gpt2", batch=1, seq=128, repeats=5)
    store.create_run("q1", [spec], [Job(job_id="q1-000", run_id="q1", device="cpu", spec=spec)])
    before = keys(r)
    f = write_json(tmp_path / "fill.json", [good_doc("lab9", 0), good_doc("q1", 0)])
    refused(cli("import", str(f)), 2, "results[1].job_id", "'q1-000'", "queued or running")
    assert keys(r) == before  # lab9-000, valid and first in the file, was not stored either
    assert store.job_field("q1-000", "state") == "queued"


@pytest.mark.parametrize("run_id", ["nightly-gpt2-20991231", "every-20991231T000000"])
def test_import_never_takes_a_future_nightly_run_id(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path, run_id: str
) -> None:
    store, r = farm
    before = keys(r)
    refused(cli("import", str(write_json(tmp_path / "n.json", [good_doc(run_id)]))), 2, run_id, "has not passed")
    assert keys(r) == before
    assert cli("import", str(write_json(tmp_path / "p.json", [good_doc("nightly-gpt2-20200101")]))).exit_code == 0
    assert store.run_exists("nightly-gpt2-20200101")  # a night that has passed imports


def test_a_failed_result_with_an_empty_error_imports_whole(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path
) -> None:
    store, _ = farm
    doc = good_doc("lab5")
    doc.update(status="failed", error="")
    for p in doc["phases"].values():
        p.update(status="failed", error="", times_s=[], stats=None)
    res = cli("import", str(write_json(tmp_path / "f.json", [doc])))
    assert res.exit_code == 0, res.stderr
    assert "no reason recorded" in res.stdout
    assert store.get_result("lab5-000").status == "failed" and store.run_exists("lab5")
    still_works(store)


# -- limits ---------------------------------------------------------------------------------------
def test_an_import_over_the_size_limit_is_refused_before_reading(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path
) -> None:
    store, r = farm
    before = keys(r)
    doc = good_doc("big")
    doc["warnings"] = ["x" * (17 << 20)]  # 17 MiB: was stored as one Redis value
    line = refused(cli("import", str(write_json(tmp_path / "big.json", [doc]))), 2, "at most 16,777,216")
    assert len(line) < 300
    assert keys(r) == before
    still_works(store)


def test_import_limits_refuse_with_one_line(farm: tuple[ResultStore, redis.Redis], tmp_path: Path) -> None:
    store, r = farm
    before = keys(r)
    many = good_doc("many")
    many["phases"]["forward"]["times_s"] = [0.5] * 1001
    cases: list[tuple[Any, tuple[str, ...]]] = [
        ([many], ("results[0].phases.forward.times_s", "at most 1,000")),
        ([{**good_doc("w"), "warnings": ["w"] * 101}], ("results[0].warnings", "at most 100")),
        ([{**good_doc("e"), "status": "failed", "error": "e" * 10_001}], ("at most 10,000",)),
        ([good_doc("s", seed=0) | {"spec": {**good_doc()["spec"], "seed": 2**63}}], ("results[0].spec.seed",)),
        ([good_doc("rp") | {"spec": {**good_doc()["spec"], "repeats": 1001}}], ("results[0].spec.repeats", "1000")),
        ([{}] * 5001, ("5,001 results", "at most 5,000")),
    ]
    for doc, words in cases:
        refused(cli("import", str(write_json(tmp_path / "lim.json", doc))), 2, *words)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    refused(cli("import", str(deep)), 2, "nested deeper than")
    assert keys(r) == before
    still_works(store)


def test_spec_limits_repeats_and_seed() -> None:
    with pytest.raises(ValueError, match="repeats: Input should be less than or equal to 1000"):
        parse_spec({"repeats": 1001})
    with pytest.raises(ValueError, match="seed"):
        parse_spec({"seed": 2**63})
    assert parse_spec({"seed": 2**63 - 1, "repeats": 1000}).seed == 2**63 - 1
    # A result stored before the limit (repeats 5,000) still reads back.
    old = BenchSpec.model_validate({"repeats": 5000}, context={"stored": True})
    assert old.repeats == 5000


# -- custom model names ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("gpt2", ("'gpt2' is a preset's name",)),
        ("gpt2-small", ("preset's name",)),
        ("[/x] $\\alpha$", ("model.name", "A-Z, a-z, 0-9")),
        ("a" * 65, ("model.name",)),
    ],
)
def test_custom_model_names_are_safe_and_not_a_presets(
    farm: tuple[ResultStore, redis.Redis], tmp_path: Path, name: str, words: tuple[str, ...]
) -> None:
    store, r = farm
    before = keys(r)
    shape = {"name": name, "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 128, "vocab_size": 300}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"model": shape, "batch": 1, "seq": 16, "devices": "cpu"}))
    refused(cli("run", str(spec_file)), 2, *words)  # refused before anything runs
    doc = good_doc("named")
    doc["spec"]["model"] = shape
    refused(cli("import", str(write_json(tmp_path / "m.json", [doc]))), 2, "results[0].spec.model")
    assert keys(r) == before
    still_works(store)


def test_a_preset_shape_may_keep_its_name_and_a_custom_one_has_its_own() -> None:
    assert ModelShape(name="gpt2", n_layer=12, n_head=12, n_embd=768).name == "gpt2"
    assert (
        parse_spec({"model": {"name": "one-layer", "n_layer": 1, "n_head": 2, "n_embd": 32}}).model_name == "one-layer"
    )
