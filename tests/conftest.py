"""Shared fixtures. Integration tests use a real redis-server on a free port (never fakeredis)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.cluster.redisproc import RedisProcess


@pytest.fixture()
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server (append-only file on) for one test; stopped afterwards."""
    proc = RedisProcess(tmp_path / "redis").start()
    try:
        yield proc
    finally:
        proc.kill9()


@pytest.fixture()
def redis_url(redis_proc: RedisProcess) -> str:
    return redis_proc.url


@pytest.fixture(autouse=True)
def _isolated_farm_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees the developer's FARM_* settings or writes into their home."""
    import os

    for k in list(os.environ):
        if k.startswith("FARM_"):
            monkeypatch.delenv(k)
    # pytest-xdist's workers inherit COLUMNS=80: tables would wrap differently under `-n 2` than in a
    # plain run. A test that wants a width sets COLUMNS itself (tests/test_table_width.py).
    monkeypatch.delenv("COLUMNS", raising=False)
    home = tmp_path_factory.getbasetemp() / "farm-home"
    monkeypatch.setenv("FARM_HOME", str(home))
    from farm.settings import get_settings

    get_settings.cache_clear()


# -- the two tiers: `make test-fast` (unit tests, no processes started) and `make test` (everything) --
# A test is in the full tier only ("real") when it uses a fixture that starts a real component, when
# its module is marked `real`, `integration` or `slow`, or when it is one of REAL_TESTS below. The fast
# tier (FARM_TEST_TIER=fast, `-m "not real"`) fails any other test that starts a process, so a test
# that does is moved to the full tier instead of slowing the inner loop unnoticed.
REAL_FIXTURES = {"redis_proc", "redis_url"}
REAL_MODULES = {  # every test here starts a process: a cluster, a script, a browser, kubectl-like tools
    "test_benchmarks.py", "test_deploy.py", "test_deploy_consistency.py", "test_distributed.py",
    "test_html_browser.py", "test_security.py", "test_store_scale.py", "test_embedded_identity.py",
    "test_embedded_clock.py", "test_cli_startup.py", "test_gpu_run.py", "test_chaos.py",
}  # fmt: skip
REAL_TESTS = {  # single tests that start a process in a module of unit tests
    "test_api.py::test_celery_dash_a_farm_without_a_farm_says_so",
    "test_ceilings.py::test_roofline_script_prints_the_ceiling_and_every_shape",
    "test_cli_errors.py::test_usage_error_through_the_console_script",
    "test_farm_unit.py::test_plan_worker_gpu_one_job_per_gpu_fresh_process",
    "test_farm_unit.py::test_cli_against_a_password_protected_redis",
    "test_hostlock.py::test_waiting_for_the_lock_keeps_the_deadline_and_says_so",
    "test_hostlock.py::test_a_phase_beside_a_busy_loop_is_contended",
    "test_hostlock.py::test_two_processes_never_time_at_once",  # multiprocessing: two timed children
    "test_report_store.py::test_reports_never_import_torch",
    "test_schema.py::test_committed_schema_matches_the_models",
}
FULL_TIER_MARKS = ("real", "integration", "slow")
# Short-lived tools a fingerprint reads facts with (platform's `file`, `git rev-parse`): not components.
FACT_TOOLS = {"file", "git", "uname", "lscpu", "nvidia-smi"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.path.name
        test = f"{module}::{item.name.split('[')[0]}"
        listed = module in REAL_MODULES or test in REAL_TESTS
        if listed or fixtures & REAL_FIXTURES or any(item.get_closest_marker(m) for m in FULL_TIER_MARKS):
            item.add_marker(pytest.mark.real)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the fast tier a test that starts a process fails, naming the command (mark it `real`)."""
    if os.environ.get("FARM_TEST_TIER") != "fast" or request.node.get_closest_marker("real"):
        return
    real_init = subprocess.Popen.__init__

    def refuse(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        if Path(os.fsdecode(argv[0]).split()[0]).name in FACT_TOOLS:
            real_init(self, args, *a, **kw)
            return
        pytest.fail(f"starts a process ({str(args)[:80]}): mark the test or its module `real` (full tier)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
