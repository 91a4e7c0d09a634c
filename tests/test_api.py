"""The Python API (farm.api), `celery -A farm`, and the JSON Schemas, against real components."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from farmproc import WorkerProcess, start_worker, stop_all

import farm.api as fa
from farm.cluster.queue import SCHEDULE_TASK_NAME, TASK_NAME
from farm.errors import NotFoundError, SpecError
from farm.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model": "gpt2-tiny", "phases": ["forward"], "devices": ["cpu"], "seq": 16, "batch": 1, "repeats": 2}


def test_spec_names_the_bad_field() -> None:
    with pytest.raises(SpecError) as e:
        fa.spec(TINY, batch=0)
    assert e.value.field == "batch"
    assert fa.spec(TINY, batch=2).batch == 2


def test_run_here_and_to_dataframe() -> None:
    results = fa.run(TINY, warmup=0)
    assert len(results) == 1 and results[0].phases["forward"].stats is not None
    rows = fa.to_rows(results)
    assert [(r["device"], r["phase"]) for r in rows] == [("cpu", "forward")]
    df = fa.to_dataframe(results)
    assert list(df["phase"]) == ["forward"]
    assert df["median_s"].iloc[0] == pytest.approx(results[0].phases["forward"].median_s)


@pytest.fixture()
def api_farm(redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[WorkerProcess]:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    from farm.cluster.queue import get_app

    get_app.cache_clear()
    w = start_worker(redis_url, device="cpu", queues=["cpu"])
    try:
        yield w.wait_ready()
    finally:
        stop_all([w])
        get_settings.cache_clear()
        get_app.cache_clear()


def _doc_example() -> str:
    text = (ROOT / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/python-api.md has no python example"
    return blocks[0]


def test_the_documented_notebook_example_runs(api_farm: WorkerProcess, tmp_path: Path) -> None:
    """docs/python-api.md's example, as written: a sweep submitted, waited for, plotted from a DataFrame."""
    plot = tmp_path / "tokens.png"
    scope: dict[str, object] = {"PLOT_PATH": str(plot)}
    exec(compile(_doc_example(), "docs/python-api.md", "exec"), scope)  # the doc's own code
    df = scope["df"]
    assert sorted(df["batch"]) == [1, 2]  # type: ignore[index]
    assert set(df["status"]) <= {"ok", "unverified"}  # type: ignore[index]
    assert plot.stat().st_size > 5000  # a real PNG with bars, not an empty canvas
    # The results are stored: the same run comes back through results() and report()
    run_id = scope["sub"].run_id  # type: ignore[attr-defined]
    assert {r.job_id for r in fa.results([run_id])} == {r.job_id for r in scope["results"]}  # type: ignore[attr-defined]
    assert len(fa.report([run_id]).rows) == 2


def test_celery_dash_a_farm(api_farm: WorkerProcess) -> None:
    """Celery's own app discovery finds the farm's app: inspect reaches the live worker."""
    env = {**os.environ, "FARM_REDIS_URL": api_farm.redis_url}
    celery = [sys.executable, "-m", "celery", "-A", "farm"]
    reg = subprocess.run([*celery, "inspect", "registered", "--timeout", "10", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    registered = json.loads(reg.stdout)
    names = {n.split()[0] for tasks in registered.values() for n in tasks}
    assert {TASK_NAME, SCHEDULE_TASK_NAME} <= names
    ping = subprocess.run([*celery, "inspect", "ping", "--timeout", "10"], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert ping.returncode == 0 and "pong" in ping.stdout
    active = subprocess.run([*celery, "inspect", "active", "--timeout", "10", "--json"], capture_output=True,
                            text=True, env=env, timeout=120)  # fmt: skip
    assert active.returncode == 0, active.stderr
    assert list(json.loads(active.stdout).values()) == [[]]  # one worker, nothing running


def test_celery_dash_a_farm_without_a_farm_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-m", "celery", "-A", "farm", "inspect", "ping"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert res.returncode != 0
    assert "farm up" in res.stderr + res.stdout and "Traceback" not in res.stderr


def test_submit_wait_results_and_the_worker_log(api_farm: WorkerProcess) -> None:
    """fa.submit + fa.wait as the README shows them; fa.results by selector; the worker logs each step."""
    sub = fa.submit(TINY, name="api-submit", tags={"via": "api"})
    results = fa.wait(sub.run_id, timeout=600)
    assert [r.status for r in results] in (["ok"], ["unverified"])
    assert [r.job_id for r in fa.results([sub.run_id], devices=["cpu"], models=["gpt2-tiny"])] == [results[0].job_id]
    with pytest.warns(fa.EmptySelectionWarning, match=r"device=cuda"):
        assert fa.results([sub.run_id], devices=["cuda"]) == []
    # One string is one item, never its characters: the run id as anyone would pass it.
    df = fa.to_dataframe(fa.results(sub.run_id, devices="cpu"))
    assert list(df["job_id"]) == [results[0].job_id] and list(df["run_id"]) == [sub.run_id]
    assert list(fa.to_dataframe(fa.results(sub.run_id)).job_id) == [results[0].job_id]
    with pytest.raises(NotFoundError, match=r"no run '20991231T000000-000000' is stored"):
        fa.results("20991231T000000-000000")  # as `farm results` exits 4
    with pytest.raises(NotFoundError, match="machine=no-such-host"):
        fa.report(sub.run_id, machines="no-such-host")  # a report of nothing is an error, as in the CLI
    with pytest.raises(SpecError, match=r"^devices: int in the list"):
        fa.results(sub.run_id, devices=[1])  # type: ignore[list-item]
    rows = fa.to_rows(results)
    assert rows[0]["run_id"] == sub.run_id and rows[0]["phase"] == "forward"
    log = api_farm.log()
    assert f"job {results[0].job_id}: forward (" in log  # one line per step, not per repeat
    assert log.count(f"job {results[0].job_id}: forward (") == 1


def test_store_query_takes_singular_and_plural_selectors(redis_url: str) -> None:
    """`ResultStore.query(model=...)` used to raise TypeError (only `models=` worked)."""
    from farm.results import synthetic as syn
    from farm.results.store import ResultStore

    store = ResultStore.from_url(redis_url)
    res = syn.result("q1", 0, "cpu", {"forward": [0.1] * 5})
    assert store.put_result(res)
    assert [r.job_id for r in store.query(model="gpt2")] == [res.job_id]
    assert [r.job_id for r in store.query(models=["gpt2"], device="cpu", run=["q1"])] == [res.job_id]
    assert store.query(machine="elsewhere") == []


def test_one_selection_rule_for_the_api_and_farm_results(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs named: those; no run but a selector: every run it matches; nothing: the latest run.
    The same for `fa.results`, `fa.report` and `farm results` (the CLI's --since no longer narrows
    only the latest run)."""
    from datetime import UTC, datetime, timedelta

    from typer.testing import CliRunner

    from farm.cli.main import app
    from farm.results import synthetic as syn
    from farm.results.store import ResultStore

    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    now = datetime.now(UTC)
    old, new = (
        syn.result(run, 0, "cpu", {"forward": [0.1] * 5}, finished_at=at)
        for run, at in (("20261101T000000-aaaaaa", now - timedelta(days=30)), ("20261207T000000-bbbbbb", now))
    )
    for res in (old, new):
        store.create_run(res.run_id, [res.spec], [], name="t")
        assert store.put_result(res)
    assert [r.run_id for r in fa.results()] == [new.run_id]  # nothing: the latest run
    assert {r.run_id for r in fa.results(devices="cpu")} == {old.run_id, new.run_id}  # a selector: every run
    assert [r.run_id for r in fa.results(since="7d")] == [new.run_id]
    assert [r.run_id for r in fa.results(until=now - timedelta(days=7))] == [old.run_id]
    assert [r.run_id for r in fa.results(old.run_id, devices="cpu")] == [old.run_id]  # named: that run
    assert {r.run_id for r in fa.results([])} == {old.run_id, new.run_id}  # [] is every run
    assert {r.run_id for r in fa.report(models="gpt2").records} == {old.run_id, new.run_id}
    with pytest.raises(SpecError, match=r"^since: "):
        fa.results(since="yesterday-ish")
    out = CliRunner().invoke(app, ["results", "--since", "7d", "--json"])
    assert out.exit_code == 0, out.output
    assert [r["run_id"] for r in json.loads(out.stdout)] == [new.run_id]
    out = CliRunner().invoke(app, ["results", "--device", "cpu", "--json"])
    assert {r["run_id"] for r in json.loads(out.stdout)} == {old.run_id, new.run_id}
    out = CliRunner().invoke(app, ["results", "--device", "mps"])
    assert out.exit_code == 4 and "no stored results match" in out.output
    get_settings.cache_clear()
