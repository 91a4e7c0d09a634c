"""The farm end to end: a real redis-server, real `farm worker` processes, the real `farm` CLI.

One redis-server and two CPU workers serve the whole module (starting workers is the slow part):
worker A consumes `cpu` (and a `cuda.nogpu` queue as a CUDA-tagged worker on a machine without
CUDA), worker B consumes only `cpu.box2`. Jobs are gpt2-tiny, batch 1 x seq 32, 2 repeats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from farmproc import WorkerProcess, start_worker

from farm.redisproc import RedisProcess

pytestmark = pytest.mark.integration

TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0"]


def farm_env(url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    if url:
        env["FARM_REDIS_URL"] = url
    return {**env, **extra}


def farm(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "farm.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


class Farm:
    def __init__(self, redis_proc: RedisProcess, a: WorkerProcess, b: WorkerProcess, cuda: WorkerProcess) -> None:
        self.redis = redis_proc
        self.url = redis_proc.url
        self.a, self.b, self.cuda = a, b, cuda
        self.env = farm_env(self.url)
        self.r = redis.Redis.from_url(self.url, decode_responses=True)

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return farm(*args, env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def live_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    rp = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    workers: list[WorkerProcess] = []
    try:
        env = {"FARM_HOME": str(tmp_path_factory.mktemp("home"))}
        workers.append(start_worker(rp.url, queues=["cpu"], name="worker-a", env=env))
        workers.append(start_worker(rp.url, queues=["cpu.box2"], name="worker-b", env=env))
        workers.append(start_worker(rp.url, device="cuda", queues=["cuda.nogpu"], name="worker-nogpu", env=env))
        for w in workers:
            w.wait_ready()
        yield Farm(rp, *workers)
    finally:
        for w in workers:
            w.stop()
        rp.kill9()


def results_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def test_submit_wait_json_cpu_ok_with_three_phases(live_farm: Farm) -> None:
    p = live_farm.cli("submit", *TINY, "--phases", "all", "--devices", "cpu", "--wait", "--json")
    assert p.returncode == 0, p.stderr
    doc = results_of(p)
    assert len(doc["results"]) == 1
    res = doc["results"][0]
    assert res["status"] == "ok", res["error"]
    assert list(res["phases"]) == ["init", "forward", "train"]
    assert res["worker"] == "worker-a"
    # The result is in the farm's own keys, without expiry.
    key = f"farm:result:{res['job_id']}"
    assert json.loads(live_farm.r.get(key))["run_id"] == doc["run_id"]
    assert live_farm.r.ttl(key) == -1
