"""Errors are mapped once (farm.cli.main): a Redis key of the wrong type under any command that reads
Redis is exit 3 and one line on stderr, never a traceback; an OS error is exit 1 and one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from farm.cli.main import app
from farm.settings import get_settings

runner = CliRunner()


@pytest.fixture()
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    get_settings.cache_clear()


def _assert_broker_line(argv: list[str]) -> None:
    res = runner.invoke(app, argv)
    assert res.exit_code == 3, (argv, res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.split("\n") if ln.strip()]
    assert len(lines) == 1, (argv, res.stderr)
    assert lines[0].startswith("error:"), (argv, res.stderr)
    assert "Traceback" not in res.output + res.stderr, argv


READS_RUNS = [
    ["status"],
    ["results", "latest"],
    ["report", "latest"],
    ["compare", "--run", "latest"],
    ["cancel", "latest"],
    ["check", "latest"],
]
READS_INDEX = [
    ["compare"],
    ["compare", "--machine", "box1"],
    ["regressions"],
    ["regressions", "--json"],
    ["report", "r1"],
]


@pytest.mark.parametrize("argv", READS_RUNS, ids=" ".join)
def test_wrong_type_runs_key(env: redis.Redis, argv: list[str]) -> None:
    env.set("farm:runs", "x")
    _assert_broker_line(argv)


@pytest.mark.parametrize("argv", READS_INDEX, ids=" ".join)
def test_wrong_type_index_key(env: redis.Redis, argv: list[str]) -> None:
    for key in ("farm:idx:all", "farm:idx:machine:box1", "farm:idx:run:r1"):
        env.set(key, "x")
    _assert_broker_line(argv)


@pytest.mark.parametrize("argv", [["workers"], ["workers", "--json"], ["workers", "--check-host", "h"]], ids=" ".join)
def test_wrong_type_workers_key(env: redis.Redis, argv: list[str]) -> None:
    env.set("farm:workers", "x")
    _assert_broker_line(argv)


def test_wrong_type_result_key_under_diff(env: redis.Redis) -> None:
    env.sadd("farm:result:a-000", "x")
    _assert_broker_line(["diff", "a-000", "b-000"])


def test_wrong_type_key_under_import(env: redis.Redis, tmp_path: Path) -> None:
    from farm.results.result import JobResult
    from farm.spec import parse_spec

    job = parse_spec({"model": "gpt2-tiny", "seq": 8, "devices": ["cpu"]}).expand("imp")[0]
    res = JobResult.failure(job, "failed", "boom")
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"run_id": "imp", "results": [res.model_dump(mode="json")]}))
    env.set("farm:idx:all", "x")
    env.set("farm:runs", "x")
    res_cli = runner.invoke(app, ["import", str(path)])
    assert res_cli.exit_code == 3, res_cli.output
    assert len([ln for ln in res_cli.stderr.split("\n") if ln.strip()]) == 1
    assert "Traceback" not in res_cli.output + res_cli.stderr


def test_wrong_type_key_under_schedule_list(env: redis.Redis) -> None:
    env.set("farm:schedules", "x")
    _assert_broker_line(["schedule", "list"])


def test_output_into_a_missing_directory_is_one_line_exit_1(env: redis.Redis, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "listing.csv"
    res = runner.invoke(app, ["workers", "-o", str(target)])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.split("\n") if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output
    assert f"cannot write {target}" in lines[0] and "No such file or directory" in lines[0]
    assert not target.parent.exists()


USAGE_ERRORS = [
    (["run", "--batch", "abc"], "farm run: --batch: "),
    (["submit", "--unserved-after", "nan"], "farm submit: --unserved-after: "),
    (["run", "--no-such-option"], "farm run: No such option: --no-such-option"),
    (["diff", "a-000"], "farm diff: Missing argument"),
    (["no-such-command"], "farm: No such command 'no-such-command'"),
    (["--no-such-option"], "farm: No such option: --no-such-option"),
    (["schedule", "add"], "farm schedule add: Missing argument"),
]


@pytest.mark.parametrize(("argv", "start"), USAGE_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_usage_errors_are_one_line_exit_2(argv: list[str], start: str) -> None:
    """Click's usage errors (bad value, unknown option or command, missing argument): exit 2, one line
    on stderr naming the command and its --help, not Typer's usage box; nothing on stdout."""
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [ln for ln in res.stderr.split("\n") if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {start}"), lines[0]
    assert lines[0].endswith(f"(see {start.split(':')[0]} --help)"), lines[0]
    assert res.stdout == ""


def test_usage_error_escapes_control_characters() -> None:
    res = runner.invoke(app, ["run", "--x\x1b[31m\nred"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.split("\n") if ln.strip()]
    assert len(lines) == 1 and "\x1b" not in res.stderr and "\\x1b" in lines[0], res.stderr


def test_usage_error_through_the_console_script() -> None:
    """The installed `farm` script (Typer's real main, not CliRunner): one line, exit 2."""
    farm = Path(sys.executable).parent / "farm"
    proc = subprocess.run([str(farm), "run", "--batch", "abc"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: farm run: --batch: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


def test_help_version_and_no_args_unchanged() -> None:
    """What is not an error keeps working: no arguments prints the help (exit 2), --help and --version exit 0."""
    bare = runner.invoke(app, [])
    assert bare.exit_code == 2 and "Usage" in bare.stdout and "run" in bare.stdout
    assert runner.invoke(app, ["--help"]).exit_code == 0
    assert (
        runner.invoke(app, ["run", "--help"]).exit_code == 0
        and "--batch" in runner.invoke(app, ["run", "--help"]).stdout
    )
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("farm ")
