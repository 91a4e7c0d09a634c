"""docker-compose.yml's service commands, started for real as plain processes (no Docker).

Each service's `command` runs exactly as written, with the environment Compose would give it (the
x-farm-env block and .env.example's FARM_* lines), except FARM_REDIS_URL, which points at the
redis service's own command line started here on a free loopback port (Compose would reach it as
`redis`). The worker's health check command must report healthy; the GPU worker must refuse on this
GPU-less machine. The images themselves stay validated offline (tests/test_deploy.py).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from farmproc import stop_session

from farm.engine.hardware import nvml_gpus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PASSWORD = "composetest0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ (enough for this file)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        got = env.get(name, "")
        if op == ":-":
            return got or _interpolate(arg, env)
        if op == ":?" and not got:
            raise AssertionError(f"compose would refuse: {arg}")
        return got

    out = re.sub(r"\$\{(\w+)(:-|:\?)?((?:[^{}]|\$\{[^}]*\})*)\}", one, value.replace("$$", "\0"))
    return out.replace("\0", "$")


def _env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^(FARM_[A-Z0-9_]+)=(.*)$", text, re.M))


@pytest.fixture()
def compose_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The redis service's command on a free port; the environment the farm services get."""
    port = _free_port()
    cmd = [_interpolate(a, {"FARM_REDIS_PASSWORD": PASSWORD}) for a in SERVICES["redis"]["command"]]
    data = tmp_path / "redis-data"
    data.mkdir()
    exe = shutil.which("redis-server") or pytest.skip("no redis-server")
    proc = subprocess.Popen(
        [exe, *cmd[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        r = redis.Redis.from_url(url)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.RedisError):
                if r.ping():
                    break
            assert time.monotonic() < deadline, "redis service command did not start"
            time.sleep(0.1)
        # The redis service's own health check command, with its REDISCLI_AUTH.
        health = SERVICES["redis"]["healthcheck"]["test"][1]
        env_r = {**os.environ, "REDISCLI_AUTH": PASSWORD}
        hp = subprocess.run(
            ["sh", "-c", health.replace("redis-cli", f"redis-cli -p {port}")], env=env_r, capture_output=True
        )
        assert hp.returncode == 0
        base = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env = {**base, **_env_example(), "FARM_REDIS_PASSWORD": PASSWORD, "FARM_HOME": os.environ["FARM_HOME"]}
        env["FARM_REDIS_URL"] = url  # .env's override, as for a worker-only machine
        farm_env = COMPOSE["x-farm-env"]
        env.update({k: _interpolate(str(v), env) for k, v in farm_env.items()})
        # The images put `farm` on PATH; here it is the virtual environment's.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        yield env
    finally:
        proc.kill()
        proc.wait(10)


def _start(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [_interpolate(str(a), env) for a in SERVICES[service]["command"]]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p: subprocess.Popen[bytes]) -> None:
    stop_session(p, grace_s=30)


def _healthcheck(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    return subprocess.run(["sh", "-c", _interpolate(test[1], env)], env=env, capture_output=True, text=True, timeout=60)


def test_worker_cpu_command_starts_and_its_health_check_reports_healthy(
    compose_env: dict[str, str], tmp_path: Path
) -> None:
    assert _healthcheck("worker-cpu", compose_env).returncode != 0  # nothing runs yet: unhealthy
    p = _start("worker-cpu", compose_env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 150  # inside the service's start_period (90 s) on a quiet machine
        while (hc := _healthcheck("worker-cpu", compose_env)).returncode != 0:
            assert p.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, hc.stderr
            time.sleep(1)
    finally:
        _stop(p)
    assert "serving cpu" in (tmp_path / "worker.log").read_text()


def test_beat_command_starts_and_stays_up(compose_env: dict[str, str], tmp_path: Path) -> None:
    p = _start("beat", compose_env, tmp_path / "beat.log")
    try:
        deadline = time.monotonic() + 60
        while "beat: Starting" not in (tmp_path / "beat.log").read_text(errors="replace"):
            assert p.poll() is None, (tmp_path / "beat.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "beat.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        _stop(p)


@pytest.mark.skipif(bool(nvml_gpus()), reason="this machine has a GPU")
def test_worker_gpu_command_refuses_without_a_gpu(compose_env: dict[str, str], tmp_path: Path) -> None:
    p = _start("worker-gpu", compose_env, tmp_path / "gpu.log")
    try:
        assert p.wait(120) == 2
    finally:
        _stop(p)
    assert "no usable CUDA device" in (tmp_path / "gpu.log").read_text()
    assert _healthcheck("worker-gpu", compose_env).returncode != 0


def _http_status(url: str, auth: str | None) -> int:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_flower_command_starts_behind_basic_auth(compose_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 5555)) == 0:
            pytest.skip("port 5555 is taken here")
    auth = "admin:composetest-flower"
    p = _start("flower", {**compose_env, "FLOWER_BASIC_AUTH": auth}, tmp_path / "flower.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", 5555)) == 0:
                    break
            assert p.poll() is None, (tmp_path / "flower.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert _http_status("http://127.0.0.1:5555/api/workers", None) == 401
        assert _http_status("http://127.0.0.1:5555/api/tasks", auth) == 200
    finally:
        _stop(p)


def test_flower_command_refuses_without_basic_auth(compose_env: dict[str, str], tmp_path: Path) -> None:
    p = _start("flower", {**compose_env, "FLOWER_BASIC_AUTH": ""}, tmp_path / "flower.log")
    try:
        assert p.wait(30) == 2
    finally:
        _stop(p)
    assert "set FLOWER_BASIC_AUTH" in (tmp_path / "flower.log").read_text()
