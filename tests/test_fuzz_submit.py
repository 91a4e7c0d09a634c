"""Fuzzing `farm submit` against a real redis-server: invalid input never reaches a queue.

FARM_REDIS_URL points at a private redis-server and no worker runs, so a valid submission stays
on its queue where it can be counted. After every invalid example Redis must be empty: no run,
no job state, no message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_fuzz_spec import FUZZ, TALLY, _dump, _options, assert_clean_failure, cli_args, runner, spec_dicts

from farm.cli.main import app
from farm.cli.options import build_spec
from farm.cluster.redisproc import RedisProcess
from farm.errors import SpecError
from farm.settings import get_settings

pytestmark = pytest.mark.integration
SUBMIT_FUZZ = settings(FUZZ, max_examples=60)  # each example is a real submission attempt


@pytest.fixture()
def farm_redis(redis_proc: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    monkeypatch.setenv("FARM_REDIS_URL", redis_proc.url)
    get_settings.cache_clear()
    r = redis.Redis.from_url(redis_proc.url, decode_responses=True)
    yield r
    r.close()
    get_settings.cache_clear()


def _queued(r: redis.Redis) -> int:
    """Messages waiting on every farm queue (kombu keeps a queue as a Redis list named after it)."""
    return sum(r.llen(k) for k in r.scan_iter() if r.type(k) == "list")


def _check_submission(r: redis.Redis, argv: list[str], valid: bool) -> None:
    result = runner.invoke(app, ["submit", *argv])
    if not valid:
        TALLY["submit rejected"] += 1
        assert_clean_failure(result, one_line=True)
        assert r.dbsize() == 0, sorted(r.scan_iter())
        return
    # Valid per the spec: queued (exit 0), or refused as a whole (a wildcard no live worker serves).
    if result.exit_code == 2:
        TALLY["submit rejected"] += 1
        assert_clean_failure(result, one_line=True)
        assert r.dbsize() == 0
        return
    TALLY["submit accepted"] += 1
    assert result.exit_code == 0, (result.output, result.exception)
    run_id = result.stdout.strip()
    jobs = r.hget(f"farm:run:{run_id}", "jobs")
    assert jobs is not None
    assert _queued(r) == len(json.loads(jobs))
    r.flushall()


@SUBMIT_FUZZ
@given(cli_args)
def test_submit_options(farm_redis: redis.Redis, pairs: list[tuple[str, str]]) -> None:
    argv = [x for p in pairs for x in p]
    try:
        opts = _options(pairs)
    except ValueError:
        result = runner.invoke(app, ["submit", *argv])
        TALLY["submit type rejected"] += 1
        assert_clean_failure(result, one_line=True)
        assert farm_redis.dbsize() == 0
        return
    try:
        build_spec(None, **opts)
        valid = True
    except SpecError:
        valid = False
    _check_submission(farm_redis, argv, valid)


@SUBMIT_FUZZ
@given(spec_dicts, st.sampled_from(["yaml", "json"]))
def test_submit_spec_files(
    farm_redis: redis.Redis, tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any], fmt: str
) -> None:
    try:
        text = _dump(data, fmt)
    except ValueError:
        assume(False)
    path = tmp_path_factory.mktemp("spec") / f"spec.{fmt}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        build_spec(path)
        valid = True
    except SpecError:
        valid = False
    _check_submission(farm_redis, [str(path)], valid)


def test_submit_valid_is_queued(farm_redis: redis.Redis) -> None:
    """The control case: a valid spec does reach the queue (so the checks above can see one)."""
    _check_submission(farm_redis, ["--model", "gpt2-tiny", "--seq", "8", "--devices", "cpu,cuda:h100"], True)
    assert TALLY["submit accepted"] >= 1


def test_submit_redis_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis unreachable: exit 3 and one line, not a traceback."""
    from farm.cluster.redisproc import free_port

    monkeypatch.setenv("FARM_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    result = runner.invoke(app, ["submit", "--model", "gpt2-tiny", "--seq", "8"])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert len([ln for ln in result.stderr.split("\n") if ln.strip()]) == 1


@SUBMIT_FUZZ
@given(st.one_of(st.text(max_size=140), st.sampled_from(["..", "../x", "a/b", "run:1", "r*", "ok.run-1", "x" * 125])))
def test_submit_run_ids(farm_redis: redis.Redis, run_id: str) -> None:
    """A caller-chosen run id (sweeps: nightly ids) becomes keys: refused unless safe, nothing written then."""
    from pydantic import ValidationError

    from farm.cluster.controller import submit
    from farm.spec import parse_spec

    spec = parse_spec({"model": "gpt2-tiny", "seq": 8})
    try:
        sub = submit(spec, run_id=run_id, settings=get_settings())
    except (SpecError, ValidationError):
        TALLY["run id rejected"] += 1
        assert farm_redis.dbsize() == 0
        return
    TALLY["run id accepted"] += 1
    assert re.match(r"^[A-Za-z0-9_.-]{1,96}$", sub.run_id)
    assert all(re.match(r"^[A-Za-z0-9_.-]+$", k.split(":", 2)[-1]) for k in farm_redis.scan_iter("farm:*"))
    farm_redis.flushall()


@pytest.fixture(autouse=True, scope="module")
def _print_submit_tally() -> Iterator[None]:
    yield
    print("\nsubmit fuzz tally:", {k: v for k, v in sorted(TALLY.items()) if "submit" in k or "run id" in k})
