"""`farm import`: validated with the farm's schema, re-derived from raw times, impossible ones stored invalid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli.main import app
from farm.errors import SpecError
from farm.reports.importer import recheck, validate
from farm.results import synthetic as syn
from farm.results.peaks import Peak
from farm.results.store import ResultStore
from farm.settings import get_settings
from farm.spec import BenchSpec

CPU = {"init": [1.2], "forward": [0.50, 0.51, 0.49, 0.50, 0.52], "train": [1.60, 1.62, 1.58, 1.61, 1.59]}
FAKE_PEAK = Peak(flops=1e18, source="table: made up", tolerance=1.0)


@pytest.fixture()
def store(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ResultStore:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    return ResultStore.from_url(redis_url)


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def _lab_results() -> list[dict]:
    """A lab's run: a CPU and an A100, as `farm results --json` would print them."""
    a100 = syn.machine("lab-a100", gpu="NVIDIA A100-SXM4-40GB")
    gpu = {"init": [1.5], "forward": [0.02, 0.021, 0.019], "train": [0.06, 0.061, 0.059]}
    return [
        syn.result("lab1", 0, "cpu", CPU, fingerprint=syn.machine("lab-cpu")).model_dump(mode="json"),
        syn.result("lab1", 1, "cuda", gpu, fingerprint=a100).model_dump(mode="json"),
    ]


def test_import_valid_results_rederives_stats_and_reports(store: ResultStore, tmp_path: Path) -> None:
    docs = _lab_results()
    docs[0]["phases"]["forward"]["median_s"] = 99.0  # a derived number is never trusted
    docs[0]["phases"]["forward"]["stats"]["median_s"] = 99.0
    f = tmp_path / "lab.json"
    f.write_text(json.dumps({"run_id": "lab1", "results": docs}))
    code, text = cli("import", str(f), "--json")
    assert code == 0, text
    summary = json.loads(text)
    assert summary["stored"] == ["lab1-000", "lab1-001"] and summary["runs"] == ["lab1"]
    # The A100 is checked against its published peak (by name): ok. The CPU's ceiling can only be
    # derived from what the file says about its machine: it bounds the result, cannot vouch for it.
    assert list(summary["flagged"]) == ["lab1-000"]
    assert store.get_result("lab1-001").status == "ok"
    cpu = store.get_result("lab1-000")
    assert cpu.status == "unverified" and cpu.phases["forward"].median_s == pytest.approx(0.50)
    assert "cannot vouch" in (cpu.phases["forward"].invalid_reason or "")
    assert any("imported from lab.json" in w for w in cpu.warnings)
    assert store.get_run("lab1")["tags"] == {"imported": "yes"}
    code, text = cli("import", str(f), "--json")  # idempotent by job id
    assert code == 0 and json.loads(text)["existing"] == ["lab1-000", "lab1-001"]
    code, text = cli("report", "lab1", "--format", "csv")
    assert code == 0 and "lab-a100" in text


def test_impossible_gpu_result_is_stored_invalid_with_the_reason(store: ResultStore, tmp_path: Path) -> None:
    # The seed's GPU forward (about 390 TFLOP/s of work) on an A100, claiming a made-up peak: ok in the file.
    a100 = syn.machine("lab-a100", gpu="NVIDIA A100-SXM4-40GB")
    fast = {"forward": [1e-5, 1.1e-5, 1e-5], "train": [0.06, 0.061, 0.059]}
    claimed = syn.result("lab2", 0, "cuda", fast, fingerprint=a100, peak=FAKE_PEAK)
    assert claimed.status == "ok"
    f = tmp_path / "lab2.json"
    f.write_text(json.dumps([claimed.model_dump(mode="json")]))
    code, text = cli("import", str(f))
    assert code == 0, text
    assert "flagged" in text and "lab2-000" in text
    stored = store.get_result("lab2-000")
    assert stored.status == "invalid"
    assert stored.phases["forward"].status == "invalid" and stored.phases["train"].status == "ok"
    reason = stored.phases["forward"].invalid_reason or ""
    assert "above the device's peak 19.5 TFLOP/s" in reason and "table: a100 float32 dense" in reason
    assert "re-checked as invalid" in " ".join(stored.warnings)


def test_impossible_cpu_result_against_its_theoretical_peak_not_the_recorded_one() -> None:
    res = syn.result("lab3", 0, "cpu", {"forward": [1e-6, 1e-6, 1e-6]}, peak=FAKE_PEAK)
    res.phases["forward"].peak_flops = 2e20  # whatever the lab's worker recorded is not used
    res.phases["forward"].peak_source = "measured: 2048^3 float32 matmul, 8 threads"
    checked = recheck(res, "lab3.json")
    reason = checked.phases["forward"].invalid_reason or ""
    assert (
        checked.status == "invalid" and "theoretical: 2 cores x 64 FLOP/cycle (Intel Sapphire/Emerald Rapids" in reason
    )
    assert checked.phases["forward"].peak_flops == pytest.approx(2 * 64 * 6500e6)


def test_phase_keys_must_be_phase_names(store: ResultStore, tmp_path: Path) -> None:
    docs = _lab_results()
    docs[0]["phases"]["warmup"] = docs[0]["phases"].pop("forward")
    with pytest.raises(SpecError) as e:
        validate(docs)
    assert e.value.field == "results[0].phases" and "'warmup' is not a phase name" in e.value.message
    docs = _lab_results()
    docs[1]["phases"]["forward"]["name"] = "train"  # a train phase filed as the forward
    with pytest.raises(SpecError) as e:
        validate(docs)
    assert e.value.field == "results[1].phases.forward.name"
    f = tmp_path / "keys.json"
    f.write_text(json.dumps(docs))
    res = CliRunner().invoke(app, ["import", str(f)])
    assert res.exit_code == 2 and "results[1].phases.forward.name" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert store.query_ids() == []


def test_spec_hash_and_model_name_come_from_the_spec() -> None:
    doc = _lab_results()[0]
    doc["model_name"] = "gpt5-huge"
    doc["spec_hash"] = "0123456789ab"
    (res,) = validate([doc])
    checked = recheck(res, "x")
    assert checked.model_name == "gpt2" and checked.spec_hash == checked.spec.spec_hash()
    assert any("model name re-derived" in w and "gpt5-huge" in w for w in checked.warnings)


def test_seed_imports_none_come_back_ok(store: ResultStore, tmp_path: Path) -> None:
    """The seed's GPU forward (390 TFLOP/s) filed from an unknown GPU, a GPU-less fingerprint and a
    tabled GPU, each claiming a made-up peak that let it pass: unverified, unverified, invalid."""
    fast = {"forward": [0.006] * 5}
    spec = BenchSpec(model="gpt2", batch=8, seq=1024, repeats=5, dtype="bfloat16")
    fps = [syn.machine("x1", gpu="NVIDIA Future GPU 9000"), syn.machine("x2"), syn.machine("x3", gpu="NVIDIA L4")]
    docs = [
        syn.result("seed9", i, "cuda", fast, spec=spec, fingerprint=fp, peak=FAKE_PEAK).model_dump(mode="json")
        for i, fp in enumerate(fps)
    ]
    assert all(d["status"] == "ok" for d in docs)
    f = tmp_path / "seed.json"
    f.write_text(json.dumps(docs))
    code, text = cli("import", str(f), "--json")
    assert code == 0, text
    assert json.loads(text)["flagged"].keys() == {"seed9-000", "seed9-001", "seed9-002"}
    got = [store.get_result(f"seed9-{i:03d}").status for i in range(3)]
    assert got == ["unverified", "unverified", "invalid"]


def test_bad_times_are_invalid_not_crashes() -> None:
    res = syn.result("lab4", 0, "cpu", {"forward": [0.5, 0.5, 0.5]})
    res.phases["forward"].times_s = [0.5, -1.0, 0.5]
    assert "positive finite" in (recheck(res, "x").phases["forward"].invalid_reason or "")
    res.phases["forward"].times_s = []
    assert recheck(res, "x").status == "invalid"


def test_schema_errors_name_the_field_and_store_nothing(store: ResultStore, tmp_path: Path) -> None:
    docs = _lab_results()
    del docs[1]["spec_hash"]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(docs))
    res = CliRunner().invoke(app, ["import", str(f)])
    assert res.exit_code == 2 and "results[1].spec_hash" in res.output
    assert store.query_ids() == []
    docs = _lab_results()
    docs[0]["job_id"] = "../../etc"
    f.write_text(json.dumps(docs))
    assert CliRunner().invoke(app, ["import", str(f)]).exit_code == 2
    f.write_text("{not json")
    assert CliRunner().invoke(app, ["import", str(f)]).exit_code == 2
    assert CliRunner().invoke(app, ["import", str(tmp_path / "missing.json")]).exit_code == 2
