"""Schedules against a real redis-server: add, list, replace, run (idempotent per night), remove."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from test_regress import webhook_server  # noqa: F401 (fixture)
from typer.testing import CliRunner

from farm.cli.main import app
from farm.errors import SpecError
from farm.nightly.schedule import ScheduleBook, daily_at_most, fire, parse_cron
from farm.nightly.sweep import parse_sweep
from farm.settings import get_settings

SWEEP = {
    "name": "tiny-nightly",
    "model": "gpt2-tiny",
    "phases": ["forward"],
    "seq": 16,
    "repeats": 2,
    "warmup": 0,
    "grid": {"batch": [1, 2]},
}


@pytest.fixture()
def farm_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    return redis_url


@pytest.fixture()
def sweep_file(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(SWEEP))
    return p


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def test_add_list_run_remove(farm_env: str, sweep_file: Path) -> None:
    code, text = cli("schedule", "add", "nightly", "--cron", "0 2 * * *", "--sweep", str(sweep_file))
    assert code == 0, text
    assert "2 points, 2 jobs" in text

    code, text = cli("schedule", "list", "--json")
    (doc,) = json.loads(text)
    assert doc["name"] == "nightly" and doc["cron"] == "0 2 * * *" and doc["sweep"]["grid"] == {"batch": [1, 2]}
    next_at = datetime.fromisoformat(doc["next_at"])
    assert next_at > datetime.now(UTC)  # not fired on add: the first firing is the next 02:00

    code, text = cli("schedule", "run", "nightly")
    assert code == 0, text
    run_id = f"tiny-nightly-{datetime.now(UTC):%Y%m%d}"
    assert run_id in text and "submitted: 2 jobs" in text
    code, text = cli("schedule", "run", "nightly")  # the same night again: nothing new
    assert code == 0 and "already exists" in text and run_id in text

    book = ScheduleBook()
    fires = book.fires("nightly")
    assert [f["created"] for f in fires] == [False, True] and {f["run_id"] for f in fires} == {run_id}
    from farm.cluster.controller import store_for

    store = store_for()
    assert store.get_run(run_id)["name"] == "tiny-nightly" and len(store.get_run(run_id)["jobs"]) == 2

    code, text = cli("schedule", "run", "nightly", "--fresh")
    assert code == 0 and "-manual" in text

    code, text = cli("schedule", "list")
    assert code == 0 and "nightly" in text and "cron 0 2 * * *" in text

    code, text = cli("schedule", "remove", "nightly")
    assert code == 0
    code, text = cli("schedule", "list", "--json")
    assert json.loads(text) == []
    assert not book.store.r.keys(f"{book.store.p}:redbeat:nightly")  # the beat entry went with it


def test_stored_content_changes_only_with_replace(farm_env: str, sweep_file: Path) -> None:
    assert cli("schedule", "add", "s", "--every", "3600", "--sweep", str(sweep_file))[0] == 0
    sweep_file.write_text(yaml.safe_dump({**SWEEP, "grid": {"batch": [1, 2, 4]}}))
    code, text = cli("schedule", "add", "s", "--every", "3600", "--sweep", str(sweep_file))
    assert code == 2 and "--replace" in text
    assert ScheduleBook().get("s").sweep["grid"]["batch"] == [1, 2]  # the file edit changed nothing
    code, text = cli("schedule", "add", "s", "--cron", "30 3 * * 1", "--sweep", str(sweep_file), "--replace")
    assert code == 0, text
    s = ScheduleBook().get("s")
    assert s.sweep["grid"]["batch"] == [1, 2, 4] and s.cron == "30 3 * * 1" and s.every_s is None


def test_bad_input_and_missing_schedules(farm_env: str, sweep_file: Path) -> None:
    code, text = cli("schedule", "add", "x", "--cron", "0 2 * *", "--sweep", str(sweep_file))
    assert code == 2 and "5 fields" in text
    code, text = cli("schedule", "add", "x", "--cron", "99 2 * * *", "--sweep", str(sweep_file))
    assert code == 2 and "cron" in text
    code, text = cli("schedule", "add", "x", "--sweep", str(sweep_file))
    assert code == 2 and "exactly one of --cron or --every" in text
    code, text = cli("schedule", "add", "x", "--every", "0.1", "--sweep", str(sweep_file))
    assert code == 2 and "at least" in text
    for args in (("remove", "ghost"), ("run", "ghost")):
        code, text = cli("schedule", *args)
        assert code == 4 and "no schedule 'ghost'" in text


def test_interval_firings_are_keyed_by_interval_start(farm_env: str) -> None:
    book = ScheduleBook()
    book.add("fast", parse_sweep(SWEEP), every_s=10)
    a = fire("fast", when=datetime(2026, 11, 28, 2, 0, 3, tzinfo=UTC))
    b = fire("fast", when=datetime(2026, 11, 28, 2, 0, 9, tzinfo=UTC))
    c = fire("fast", when=datetime(2026, 11, 28, 2, 0, 10, tzinfo=UTC))
    assert a.run_id == b.run_id == "tiny-nightly-20261128T020000" and a.created and not b.created
    assert c.run_id == "tiny-nightly-20261128T020010" and c.created


def test_cron_helpers() -> None:
    assert daily_at_most("0 2 * * *") and not daily_at_most("*/5 * * * *") and not daily_at_most("0 */2 * * *")
    parse_cron("*/15 1-3 * * mon-fri")
    with pytest.raises(SpecError, match="cron"):
        parse_cron("61 * * * *")


def test_sweep_dry_run_submits_nothing(farm_env: str, sweep_file: Path) -> None:
    code, text = cli("sweep", str(sweep_file), "--dry-run")
    assert code == 0 and "2 points x 1 device = 2 jobs" in text
    res = CliRunner().invoke(app, ["sweep", str(sweep_file), "--dry-run", "--json"])
    code, doc = res.exit_code, json.loads(res.stdout)  # the plan's note goes to stderr
    assert "would queue 2 job(s) on cpu" in res.stderr
    assert code == 0 and doc["jobs"] == 2 and [p["params"] for p in doc["points"]] == [{"batch": 1}, {"batch": 2}]
    assert all(p["ok"] and p["devices"] == ["cpu"] and p["predicted_bytes"] > 0 for p in doc["points"])
    from farm.cluster.controller import store_for

    assert store_for().list_runs() == []


def test_sweep_reports_skipped_points_and_strict_refuses(farm_env: str, tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    base = {k: v for k, v in SWEEP.items() if k != "seq"}
    p.write_text(yaml.safe_dump({**base, "grid": {"seq": [16, 4096]}}))
    code, text = cli("sweep", str(p), "--dry-run")
    assert code == 0 and "skipped" in text and "above the model's context" in text
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump({"model": "gpt2-large", "devices": ["cpu", "cuda:t4"], "grid": {"batch": [1, 32]}}))
    code, text = cli("sweep", str(big), "--dry-run")
    assert code == 0 and "dropped cuda:t4" in text  # only the device it cannot fit on
    code, text = cli("sweep", str(p), "--strict")
    assert code == 2 and "--strict" in text
    from farm.cluster.controller import store_for

    assert store_for().list_runs() == []


def test_a_firing_reports_the_previous_nights_regressions_once(
    farm_env: str,
    webhook_server: tuple[str, list[dict]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_regress import night_result

    from farm.cluster.controller import store_for
    from farm.spec import Job

    url, received = webhook_server
    monkeypatch.setenv("FARM_WEBHOOK_URL", url)
    get_settings.cache_clear()
    store = store_for()
    one = parse_sweep({k: v for k, v in SWEEP.items() if k != "grid"} | {"batch": 1})
    spec = one.specs[0]
    for i in range(10):  # ten earlier nights on box7 at 1.0 s
        store.put_result(night_result(i, [1.0, 1.01, 0.99, 1.0, 1.02], spec=spec))
    ScheduleBook().add("nightly", one, cron="0 2 * * *")
    first = fire("nightly", when=datetime(2026, 11, 12, 2, tzinfo=UTC))
    assert received == []  # its job has no result yet: nothing to judge
    (job_id,) = store.get_run(first.run_id)["jobs"]
    slow = night_result(11, [1.3, 1.31, 1.29, 1.3, 1.32], spec=spec)  # tonight: 30% slower
    job = Job.model_validate_json(store.r.hget(store.key("job", job_id), "job"))
    store.put_result(slow.model_copy(update={"job_id": job.job_id, "run_id": job.run_id}))
    fire("nightly", when=datetime(2026, 11, 13, 2, tzinfo=UTC))
    fire("nightly", when=datetime(2026, 11, 14, 2, tzinfo=UTC))
    assert len(received) == 1  # judged once, reported once
    assert received[0]["body"]["verdict"]["run_id"] == first.run_id
    assert received[0]["body"]["event"] == "farm.regression"


def test_a_firing_that_cannot_submit_is_recorded_with_its_error(farm_env: str) -> None:
    from farm.nightly.schedule import fire_from_beat

    book = ScheduleBook()
    book.add("broken", parse_sweep(SWEEP), cron="0 2 * * *")
    book.store.r.hset(
        book.store.key("schedule", "broken"), "sweep", json.dumps({"name": "x", "grid": {"batch": [0]}})
    )  # as if edited badly
    with pytest.raises(SpecError, match="no valid point"):
        fire_from_beat("broken")
    (last,) = book.fires("broken")
    assert "no valid point" in last["error"] and last["run_id"] == ""
    code, text = cli("schedule", "list")
    assert code == 0 and "failed" in text


def test_redis_down_is_exit_3(monkeypatch: pytest.MonkeyPatch, sweep_file: Path) -> None:
    from farm.cluster.redisproc import free_port

    monkeypatch.setenv("FARM_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    for args in (("list",), ("add", "x", "--every", "60", "--sweep", str(sweep_file)), ("run", "x")):
        code, text = cli("schedule", *args)
        assert code == 3 and "cannot reach Redis" in text, text
