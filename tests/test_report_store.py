"""`farm report` and `farm compare` against a real redis-server: selectors, baselines, files, exits.

Also: building a report never imports torch (checked in a fresh interpreter).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli.main import app
from farm.results import synthetic as syn
from farm.results.store import ResultStore
from farm.settings import get_settings

CPU = {"init": [1.2], "forward": [0.50, 0.51, 0.49, 0.50, 0.52], "train": [1.60, 1.62, 1.58, 1.61, 1.59]}
GPU = {"init": [1.5], "forward": [0.0050, 0.0051, 0.0049, 0.0050, 0.0050], "train": [0.020, 0.021, 0.019, 0.02, 0.02]}


@pytest.fixture()
def stored(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultStore]:
    """Run r1: a CPU and an H100 job; run r2 a day later: the same, the GPU twice as fast."""
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    gpu = syn.machine("gpu1", gpu="NVIDIA H100 80GB HBM3")
    faster = {k: [t / 2 for t in v] for k, v in GPU.items()}
    results = [
        syn.result("r1", 0, "cpu", CPU),
        syn.result("r1", 1, "cuda", GPU, fingerprint=gpu),
        syn.result("r2", 0, "cpu", CPU, finished_at=None),
        syn.result("r2", 1, "cuda", faster, fingerprint=gpu),
    ]
    results[2].finished_at = results[3].finished_at = results[0].finished_at.replace(day=2)
    for r in results:
        assert store.put_result(r)
    yield store


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_report_csv_and_html_files(stored: ResultStore, tmp_path: Path) -> None:
    code, text = cli("report", "r1", "--format", "csv")
    assert code == 0, text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6 and {r["run_id"] for r in rows} == {"r1"}
    fwd = next(r for r in rows if r["device"] == "cuda:h100" and r["phase"] == "forward")
    assert float(fwd["speedup"]) == pytest.approx(100.0)
    out = tmp_path / "r.html"
    code, text = cli("report", "r1", "-o", str(out))  # the format follows the suffix
    assert code == 0, text
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch


def test_report_terminal_and_latest(stored: ResultStore) -> None:
    stored.create_run("r2", [], [])
    code, text = cli("report", "latest")
    assert code == 0, text
    assert "r2" in text and "100×" not in text and "200×" in text


def test_compare_device_selector_fetches_the_left_out_cpu_baseline(stored: ResultStore) -> None:
    code, text = cli("compare", "--device", "cuda", "--format", "json")
    assert code == 0, text
    doc = json.loads(text)
    assert doc["results"] == 2 and {r["device"] for r in doc["rows"]} == {
        "cuda:h100"
    }  # the GPU it ran on (one device, one history)
    speedups = {(r["run_id"], r["phase"]): r["speedup"] for r in doc["rows"]}
    assert speedups["r1", "forward"] == pytest.approx(100.0)
    assert speedups["r2", "forward"] == pytest.approx(200.0)


def test_compare_against_another_run_and_date_range(stored: ResultStore) -> None:
    code, text = cli("compare", "--run", "r2", "--baseline", "run=r1", "--format", "json")
    assert code == 0, text
    rows = {(r["device"], r["phase"]): r for r in json.loads(text)["rows"]}
    assert rows["cuda:h100", "train"]["speedup"] == pytest.approx(2.0)
    assert rows["cuda:h100", "train"]["baseline_job_id"] == "r1-001"
    assert rows["cpu", "train"]["speedup"] == pytest.approx(1.0)
    code, text = cli("compare", "--since", "2026-11-02", "--format", "json")
    assert code == 0 and {r["run_id"] for r in json.loads(text)["rows"]} == {"r2"}


def test_errors_become_exit_codes(stored: ResultStore) -> None:
    assert cli("report", "nope")[0] == 4
    assert cli("report", "r1", "--format", "pdf")[0] == 2
    assert cli("compare", "--baseline", "gpu=x")[0] == 2
    assert cli("compare", "--since", "yesterday-ish")[0] == 2


def test_reports_never_import_torch(tmp_path: Path) -> None:
    code = """
import sys
from farm.results import synthetic as syn
from farm.results.records import records_from_results
from farm.reports.report import build_report
import farm.reports.compare, farm.reports.plots, farm.reports.html, farm.reports.diff
import farm.reports.importer, farm.reports.formats, farm.nightly.regress, farm.results.store
import farm.cli.main, farm.nightly.schedule, farm.cluster.controller  # the CLI starts without torch
t = {"forward": [0.5, 0.51, 0.49], "train": [1.6, 1.61, 1.59]}
g = {"forward": [0.005, 0.0051, 0.0049], "train": [0.016, 0.0161, 0.0159]}
rep = build_report(records_from_results([syn.result("r", 0, "cpu", t), syn.result("r", 1, "cuda", g)]))
md = farm.reports.formats.to_markdown(rep)
assert "100×" in md and len(rep.rows) == 4
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_report_summaries_are_cached_and_dropped_when_the_result_changes(stored: ResultStore) -> None:
    from farm.results.records import records_from_results

    ids = stored.query_ids(runs=["r1"])
    first = stored.load_records(ids)  # reads the results, writes the summaries
    assert all(stored.r.exists(stored.key("summary", j)) for j in ids)
    again = stored.load_records(ids)  # reads the summaries
    assert again == first == records_from_results([stored.get_result(j) for j in ids])
    changed = stored.get_result(ids[0])
    changed.warnings.append("re-stored with a different length")
    stored.put_result(changed, overwrite=True)
    (rec,) = stored.load_records(ids[:1])
    assert rec.warnings == ["re-stored with a different length"]  # the stale summary was not used


def test_selection_reads_single_indexes_in_the_store_order(stored: ResultStore) -> None:
    from datetime import UTC, datetime

    from farm.reports.report import Selection

    day2 = datetime(2026, 11, 2, tzinfo=UTC)
    for sel, kw in [
        (Selection(), {}),
        (Selection(runs=("r2",)), {"runs": ["r2"]}),
        (Selection(since=day2), {"since": day2}),
        (Selection(devices=("cuda",), until=day2), {"devices": ["cuda"], "until": day2}),
        (Selection(runs=("r1", "r2"), devices=("cpu",)), {"runs": ["r1", "r2"], "devices": ["cpu"]}),
    ]:
        assert sel.query_ids(stored) == stored.query_ids(**kw)
    assert len(Selection().query_ids(stored)) == 4
