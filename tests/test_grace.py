"""Workers that are still starting, and workers that cannot serve what they were asked to.

`submit --wait` (and `sweep --wait`) give a starting worker `--unserved-after` seconds before a job
counts as unserved; `farm worker --device cuda` on this GPU-less machine refuses to start. A real
redis-server, real `farm worker` processes, the real CLI in subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from farmproc import start_worker

from farm.engine.hardware import nvml_gpus

pytestmark = pytest.mark.integration

TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]


def cli(*args: str, url: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_REDIS_URL=url, FARM_HOME=os.environ["FARM_HOME"], **extra)
    return subprocess.run(
        [sys.executable, "-m", "farm.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_submit_wait_from_a_cold_start_waits_for_the_worker(redis_url: str) -> None:
    # `farm worker & farm submit --wait`: the worker is not registered yet when the job is queued.
    w = start_worker(redis_url, device="cpu")
    try:
        p = cli("submit", *TINY, "--phases", "init", "--devices", "cpu", "--wait", "--json", url=redis_url)
        assert p.returncode == 0, p.stderr
        assert "waiting up to" in p.stderr and "queue(s) cpu" in p.stderr
        (res,) = json.loads(p.stdout)["results"]
        assert res["status"] == "ok" and res["worker"] == w.name
    finally:
        w.stop()


def test_nothing_serves_the_queue_exit_5_after_the_grace(redis_url: str) -> None:
    p = cli("submit", *TINY, "--phases", "init", "--devices", "cpu", "--wait", "--unserved-after", "2", url=redis_url)
    assert p.returncode == 5, p.stderr
    assert "waiting up to 2 s for a live worker on queue(s) cpu" in p.stderr
    assert "no live worker serves queue 'cpu' after 2 s" in p.stderr
    # The job stays queued (its message waits in Redis) for a worker that comes later.
    st = cli("status", "--json", url=redis_url)
    assert [j["state"] for j in json.loads(st.stdout)["jobs"]] == ["queued"]


def test_skip_unserved_cancels_after_the_grace(redis_url: str) -> None:
    args = ("submit", *TINY, "--phases", "init", "--devices", "cpu", "--wait", "--skip-unserved", "--json")
    p = cli(*args, url=redis_url, FARM_UNSERVED_AFTER="1")
    assert p.returncode == 0, p.stderr
    assert "cancelled 1 unserved job(s)" in p.stderr
    assert [r["status"] for r in json.loads(p.stdout)["results"]] == []


def test_sweep_wait_has_the_same_grace(redis_url: str, tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: g\nmodel: gpt2-tiny\nphases: [init]\ndevices: [cpu]\nbatch: 1\ngrid:\n  seq: [16, 32]\n")
    p = cli("sweep", str(sweep), "--wait", "--unserved-after", "1", url=redis_url)
    assert p.returncode == 5, p.stderr
    assert "waiting up to 1 s" in p.stderr and "no live worker serves queue 'cpu' after 1 s" in p.stderr


def test_without_wait_jobs_stay_queued_at_once(redis_url: str) -> None:
    p = cli("submit", *TINY, "--phases", "init", "--devices", "cpu", url=redis_url)
    assert p.returncode == 0, p.stderr
    assert "waiting" not in p.stderr and "no live worker serves queue 'cpu'" in p.stderr


@pytest.mark.skipif(bool(nvml_gpus()), reason="this machine has a GPU")
@pytest.mark.parametrize("extra", [[], ["--gpu", "1"]])
def test_cuda_worker_without_a_gpu_refuses_to_start(redis_url: str, extra: list[str]) -> None:
    p = cli("worker", "--device", "cuda", *extra, "--name", "nogpu", url=redis_url, timeout=120)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no usable CUDA device" in lines[0], p.stderr
    assert "serving" not in p.stdout + p.stderr
    # The health check and `farm workers` agree: nothing registered.
    assert cli("workers", "--check-host", socket.gethostname(), url=redis_url).returncode == 1
    assert json.loads(cli("workers", "--json", url=redis_url).stdout) == []
