"""`farm diff`: the environment difference of two results."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from farm.cli.main import app
from farm.reports.diff import diff_listing, environment_diff
from farm.reports.formats import render
from farm.results import synthetic as syn
from farm.results.store import ResultStore
from farm.settings import get_settings
from farm.spec import BenchSpec

T = {"forward": [0.5, 0.51, 0.49], "train": [1.6, 1.61, 1.59]}


def _pair():
    a = syn.result("r1", 1, "cuda", T, fingerprint=syn.machine("gpu1", gpu="NVIDIA H100 80GB HBM3"))
    b = syn.result(
        "r2",
        1,
        "cuda",
        T,
        spec=BenchSpec(model="gpt2", batch=1, seq=128, matmul_precision="high"),
        fingerprint=syn.machine("gpu2", gpu="NVIDIA A100-SXM4-40GB", torch_version="2.4.0"),
    )
    return a, b


def test_diff_lists_hardware_versions_precision_spec_and_peak() -> None:
    a, b = _pair()
    d = environment_diff(a, b)
    keys = {(s, k): (va, vb) for s, k, va, vb in d.rows}
    assert keys["hardware", "gpu[0].name"] == ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB")
    assert keys["software", "torch_version"] == ("2.5.1", "2.4.0")
    assert keys["precision", "matmul_precision"] == ("highest", "high")
    assert keys["spec", "matmul_precision"] == ("highest", "high")
    assert keys["peak", "forward.peak_source"] == ("table: h100 float32 dense", "table: a100 tf32 dense")
    assert ("hardware", "cpu_model") not in keys  # equal keys are not listed
    assert d.same > 10
    assert len(environment_diff(a, b, show_all=True).rows) == len(d.rows) + d.same


def test_diff_of_a_result_with_itself_is_empty() -> None:
    a, _ = _pair()
    d = environment_diff(a, a)
    assert d.rows == [] and d.same > 0


def test_diff_formats_and_cli(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _pair()
    d = environment_diff(a, b)
    assert "| software | torch_version | 2.5.1 | 2.4.0 |" in render(diff_listing(d), "markdown")
    assert {"section": "software", "key": "torch_version", "a": "2.5.1", "b": "2.4.0"} in json.loads(
        render(diff_listing(d), "json")
    )["differences"]
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    store.put_result(a)
    store.put_result(b)
    res = CliRunner().invoke(app, ["diff", a.job_id, b.job_id, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["a"] == "r1-001"
    res = CliRunner().invoke(app, ["diff", a.job_id, b.job_id])
    assert res.exit_code == 0 and "torch_version" in res.output and "A100" in res.output
    assert CliRunner().invoke(app, ["diff", a.job_id, "missing-000"]).exit_code == 4
