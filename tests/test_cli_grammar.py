"""One CLI grammar (issue 15), through the real CLI against a real Redis: every command that takes runs
accepts run ids and `latest`; every data command takes `--format`/`-o`; `submit --dry-run` queues
nothing; `check` says why it gives no verdict and `--require-verdict` exits 6; `workers --json` has ISO
times; `--help` shows the spec defaults; progress counts the whole job."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import pytest
import redis
from farmproc import start_worker
from test_cli_formats import runs  # noqa: F401 (fixture)
from test_regress import night_result, noisy_times
from test_regress_cli import stored  # noqa: F401 (fixture)
from typer.testing import CliRunner

from farm.cli.main import app
from farm.cli.sweep_cmds import EXIT_NO_VERDICT
from farm.results.store import ResultStore
from farm.spec import BenchSpec, Job


def cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one real CLI call."""
    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


# -- run selection ---------------------------------------------------------------------------------
# Every command that takes runs, with `latest` where a run id goes (`compare` both ways).
TAKES_RUNS = {
    "status": ["status", "latest", "--json"],
    "results": ["results", "latest", "--json"],
    "report": ["report", "latest", "--format", "json"],
    "report --run": ["report", "--run", "latest", "--format", "json"],
    "compare": ["compare", "latest", "--format", "json"],
    "compare --run": ["compare", "--run", "latest", "--format", "json"],
    "check": ["check", "latest", "--json", "--no-notify"],
    "cancel": ["cancel", "latest", "--json"],
}


@pytest.mark.parametrize("name", list(TAKES_RUNS))
def test_latest_is_accepted_by_every_command_that_takes_runs(runs: ResultStore, name: str) -> None:  # noqa: F811
    latest = runs.latest_run()
    code, text, err = cli(*TAKES_RUNS[name])
    assert code in ((0, 1) if name == "check" else (0,)), err  # check: 1 on the injected regression
    assert latest in text  # the newest run was the one chosen
    json.loads(text)


def test_report_and_compare_take_runs_the_same_way(runs: ResultStore) -> None:  # noqa: F811
    docs = [
        json.loads(cli(*args, "--format", "json")[1])
        for args in (
            ["report", "n013", "n014"],
            ["report", "--run", "n013,n014"],
            ["compare", "n013", "--run", "n014"],
            ["compare", "--run", "n013", "--run", "n014"],
        )
    ]

    def jobs(doc: dict) -> set[str]:
        return {r["job_id"] for r in doc["rows"]}

    assert jobs(docs[0]) == jobs(docs[1]) == jobs(docs[2]) == jobs(docs[3])
    assert jobs(docs[0]) == {"n013-000", "n013-001", "n014-000", "n014-001"}


def test_results_take_several_runs_and_the_selectors(runs: ResultStore) -> None:  # noqa: F811
    code, text, _ = cli("results", "n013", "n014", "--machine", "box8", "--json")
    assert code == 0
    assert sorted(r["job_id"] for r in json.loads(text)) == ["n013-001", "n014-001"]
    code, text, _ = cli("results", "--run", "n013", "--device", "cpu", "--model", "gpt2-tiny", "--json")
    assert code == 0 and len(json.loads(text)) == 2
    code, text, _ = cli("results", "n013", "--until", "2000-01-02", "--json")
    assert code == 0 and json.loads(text) == []
    assert cli("results", "nope")[0] == 4


def test_names_are_shown_where_stored(runs: ResultStore) -> None:  # noqa: F811
    assert "n014 (nightly)" in cli("status", "n014")[1]
    assert "n014 (nightly)" in cli("results", "n014", "--format", "markdown")[1]
    assert "n014 (nightly)" in cli("report", "n014", "--format", "markdown")[1]
    assert json.loads(cli("status", "n014", "--json")[1])["name"] == "nightly"


# -- --format and -o on every data command -----------------------------------------------------------
def _sweep_file(tmp_path: Path) -> Path:
    f = tmp_path / "tiny.yaml"
    f.write_text("name: tiny\nmodel: gpt2-tiny\nseq: 16\ndevices: [cpu]\ngrid:\n  batch: [1, 2]\n")
    return f


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "html"])
def test_data_commands_take_format_and_output(runs: ResultStore, tmp_path: Path, fmt: str) -> None:  # noqa: F811
    sweep = str(_sweep_file(tmp_path))
    suffix = {"json": ".json", "csv": ".csv", "markdown": ".md", "html": ".html"}[fmt]
    commands = [
        ["results", "n013", "n014", "--machine", "box7"],
        ["report", "--run", "latest"],
        ["compare", "n013", "n014", "--pool"],
        ["cancel", "latest"],
        ["submit", "--dry-run", "--model", "gpt2-tiny", "--seq", "16"],
        ["sweep", sweep, "--dry-run"],
        ["diff", "n013-000", "n014-000"],
        ["regressions", "--all", "--no-notify", "--model", "gpt2-tiny"],
    ]
    for args in commands:
        code, text, err = cli(*args, "--format", fmt)
        assert code == 0 and text.strip(), (args, err)
        if fmt == "json":
            json.loads(text)
        out = tmp_path / f"out{suffix}"
        out.unlink(missing_ok=True)
        code, text, err = cli(*args, "-o", str(out))
        assert code == 0 and out.read_text(encoding="utf-8").strip(), (args, err)
        if fmt == "html":
            assert out.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


# -- submit --dry-run ------------------------------------------------------------------------------
def _lists(url: str) -> dict[str, int]:
    r = redis.Redis.from_url(url, decode_responses=True)
    return {k: r.llen(k) for k in r.scan_iter() if r.type(k) == "list"}


def test_submit_dry_run_prints_the_plan_and_queues_nothing(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    from farm.settings import get_settings

    get_settings.cache_clear()
    store = ResultStore.from_url(redis_url)
    code, text, err = cli("submit", "--dry-run", "--model", "gpt2-tiny", "--devices", "cpu,cuda", "--json")
    assert code == 0, err
    doc = json.loads(text)
    assert doc["dry_run"] and doc["live_workers"] == 0
    assert [(j["device"], j["queue"]) for j in doc["jobs"]] == [("cpu", "cpu"), ("cuda", "cuda")]
    assert doc["unserved"] == ["cpu", "cuda"] and doc["jobs"][0]["spec"]["model"] == "gpt2-tiny"
    code, text, _ = cli("submit", "--dry-run", "--model", "gpt2-tiny", "--batch", "2")
    assert code == 0 and "nothing queued" in text and "2 x 1024" in text and "no live worker" in text
    assert _lists(redis_url) == {}  # no queue list was ever created
    with pytest.raises(Exception, match="no run"):
        store.latest_run()  # and no run was recorded
    code, _, err = cli("submit", "--dry-run", "--model", "gpt2-nope")
    assert code == 2 and "gpt2-nope" in err  # validated like a real submit


def test_dry_run_expands_wildcards_against_a_live_worker_and_workers_json_has_iso_times(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    from farm.settings import get_settings

    get_settings.cache_clear()
    w = start_worker(redis_url, device="cpu").wait_ready()
    try:
        code, text, err = cli("workers", "--json")
        assert code == 0, err
        (doc,) = json.loads(text)
        for key in ("started_at", "last_heartbeat"):
            assert isinstance(doc[key], str) and datetime.fromisoformat(doc[key]).utcoffset() is not None
        code, text, err = cli("submit", "--dry-run", "--model", "gpt2-tiny", "--devices", "cpu:*", "--json")
        assert code == 0, err
        plan = json.loads(text)
        narrow = [q for q in doc["queues"] if q.startswith("cpu.")]
        assert [j["queue"] for j in plan["jobs"]] == narrow and plan["unserved"] == []
        assert plan["live_workers"] == 1
        assert _lists(redis_url) == {}
        code, _, err = cli("sweep", str(_sweep_file(tmp_path)), "--dry-run")
        assert code == 0 and "would queue 2 job(s) on cpu; nothing queued" in err
        assert _lists(redis_url) == {}
    finally:
        w.stop()


def test_sweep_takes_tag_and_name(redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    from farm.settings import get_settings

    get_settings.cache_clear()
    code, text, err = cli("sweep", str(_sweep_file(tmp_path)), "--tag", "team=perf", "--name", "mine", "--json")
    assert code == 0, err
    run_id = json.loads(text)["run_id"]
    store = ResultStore.from_url(redis_url)
    run = store.get_run(run_id)
    assert run["name"] == "mine" and run["tags"] == {"sweep": "tiny", "team": "perf"}
    assert [j.spec.tags for j in store.stored_jobs(run_id)] == [{"team": "perf"}] * 2
    assert "(mine)" in cli("status", run_id)[1]
    cli("cancel", run_id)


# -- check: no verdict -------------------------------------------------------------------------------
def test_check_says_why_it_gives_no_verdict_and_require_verdict_exits_6(stored: ResultStore) -> None:  # noqa: F811
    rng = random.Random(3)
    fresh = night_result(20, noisy_times(rng, 1.0), tag="box9")  # a new machine: no history at all
    stored.create_run(fresh.run_id, [fresh.spec], [], name="first")
    assert stored.put_result(fresh)
    code, text, err = cli("check", fresh.run_id, "--no-notify", "--json")
    assert code == 0  # no regression: passes, but says it could not judge
    assert [v["kind"] for v in json.loads(text)["verdicts"]] == ["no-verdict"]
    assert "no verdict" in err and "box9" in err and "0 earlier results, 5 needed" in err
    code, _, err = cli("check", fresh.run_id, "--no-notify", "--require-verdict")
    assert code == EXIT_NO_VERDICT == 6 and "5 needed" in err
    code, _, err = cli("check", "n013", "--no-notify", "--require-verdict")
    assert code == 0 and "no verdict" not in err  # every result judged
    assert cli("check", "n014", "--no-notify", "--require-verdict")[0] == 1  # a regression comes first
    stored.create_run("empty", [fresh.spec], [], name="")
    code, _, err = cli("check", "empty", "--no-notify", "--require-verdict")
    assert code == 6 and "no measured phase results" in err


def test_exit_code_6_is_documented() -> None:
    import farm.cli.main

    assert "| 6 | `farm check --require-verdict`" in (farm.cli.main.__doc__ or "")


# -- help ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["submit", "run"])
def test_help_shows_the_spec_defaults(command: str) -> None:
    code, text, _ = cli(command, "--help")
    assert code == 0
    flat = " ".join(text.replace("│", " ").split())  # the help box folds lines at 80 columns
    d = BenchSpec()
    assert f"model {d.model} (GPT-2 small" in flat
    assert f"batch {d.batch} x seq {d.seq}" in flat and "training included" in flat
    for mode in ("highest", "high", "medium"):
        assert f"{mode} (" in flat  # each precision with what it means
    assert f"[default: ({d.matmul_precision})]" in flat and f"[default: ({d.batch})]" in flat


# -- progress ---------------------------------------------------------------------------------------
def test_progress_counts_the_whole_job() -> None:
    from farm.engine.runner import run_job

    spec = BenchSpec(model="gpt2-tiny", batch=1, seq=16, repeats=3, warmup=1)
    calls: list[tuple[str, int, int]] = []
    job = Job(job_id="p-000", run_id="p", device="cpu", spec=spec)
    result = run_job(job, on_progress=lambda what, done, total: calls.append((what, done, total)))
    assert result.status in ("ok", "unverified"), result.error
    expected = 1 + 2 * (spec.warmup + 3)  # init, then forward and train: warm-up + repeats each
    steps = [c for c in calls if c[0] in spec.phases]
    assert [c[1] for c in steps] == list(range(1, expected + 1))  # one count across the phases
    assert {c[2] for c in steps} == {expected}
    assert [c[0] for c in steps] == ["init"] + ["forward"] * 4 + ["train"] * 4


def test_auto_repeats_shrink_the_total_once_the_phase_ends() -> None:
    from farm.engine.runner import run_job

    spec = BenchSpec(
        model="gpt2-tiny", batch=1, seq=16, repeats="auto", max_repeats=8, ci_target=0.9, phases=("forward", "train")
    )
    calls: list[tuple[str, int, int]] = []
    job = Job(job_id="p-001", run_id="p", device="cpu", spec=spec)
    run_job(job, on_progress=lambda what, done, total: calls.append((what, done, total)))
    steps = [c for c in calls if c[0] in spec.phases]
    assert all(done <= total for _, done, total in steps)
    assert steps[-1][1] == steps[-1][2]  # the bar ends full
    assert steps[0][2] == 2 * (spec.warmup + 8)  # an upper bound while forward runs


def test_roofline_measurement_reports_each_shape() -> None:
    from farm.engine.phases import JobContext
    from farm.engine.roofline import measure_roofline, roofline_shapes

    spec = BenchSpec(model="gpt2-tiny", batch=1, seq=16, repeats=5, warmup=1)
    seen: list[tuple[int, int]] = []
    entry = measure_roofline(spec, 1, on_progress=lambda done, total: seen.append((done, total)))
    n = len(roofline_shapes(spec))
    assert seen == [(i, n) for i in range(n + 1)] and entry["flops"] > 0
    labels: list[str] = []
    ctx = JobContext(spec=spec, device=None, timer=None, peak=None)  # type: ignore[arg-type]
    ctx.on_progress = lambda what, done, total: labels.append(f"{what} [{done}/{total}]")
    ctx.roofline_progress(2, 5)
    assert labels == ["setup: measuring the CPU roofline 2/5 shapes [0/13]"]  # 13 = init 1 + 2 x (1 + 5)
