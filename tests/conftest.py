"""Shared fixtures. Integration tests use a real redis-server on a free port (never fakeredis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
    home = tmp_path_factory.getbasetemp() / "farm-home"
    monkeypatch.setenv("FARM_HOME", str(home))
    from farm.settings import get_settings

    get_settings.cache_clear()
