"""Flower sees the farm: a real Flower (`celery -A farm flower`, basic auth from FLOWER_BASIC_AUTH)
against a real redis-server and a real `farm worker`; two gpt2-tiny jobs through `farm submit --wait`.

Flower's HTTP API, read with basic auth, lists both tasks (`farm.run_job`, SUCCESS) and the live
worker (`/api/workers?status=1`, from the worker's heartbeat events); a request without or with
wrong credentials is refused with 401. Every process is stopped afterwards.
"""

from __future__ import annotations

import base64
import json
import os
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
from farmproc import start_worker, stop_session

from farm.cluster.redisproc import free_port

pytestmark = pytest.mark.integration

TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]
AUTH = "farmer:correct-horse-battery"


def _farm_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return {**env, "FARM_REDIS_URL": url, "FARM_HOME": os.environ["FARM_HOME"], **extra}


class Flower:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.log = log

    def get(self, path: str, auth: str | None = AUTH) -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path)
        if auth is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None

    def poll(self, path: str, done: Any, timeout: float = 60) -> Any:
        """GET `path` until `done(body)` holds; the last body."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            status, body = self.get(path)
            if status == 200 and done(body):
                return body
            assert time.monotonic() < deadline, f"{path}: {status} {body!r}"
            time.sleep(0.5)


def _stop_session(p: subprocess.Popen[bytes]) -> None:
    stop_session(p, grace_s=15)


@pytest.fixture()
def flower(redis_url: str, tmp_path: Path) -> Iterator[Flower]:
    port = free_port()
    log = tmp_path / "flower.log"
    cmd = [sys.executable, "-m", "celery", "-A", "farm", "flower", f"--port={port}", "--address=127.0.0.1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, env=_farm_env(redis_url, FLOWER_BASIC_AUTH=AUTH), stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield Flower(proc, port, log)
    finally:
        _stop_session(proc)


def test_flower_lists_the_live_worker_and_every_farm_task_behind_basic_auth(redis_url: str, flower: Flower) -> None:
    worker = start_worker(redis_url, queues=["cpu"], name="flower-worker")
    try:
        worker.wait_ready()
        hostname = f"flower-worker@{socket.gethostname()}"
        # Live workers come from heartbeat events, which Flower sees once it is up.
        alive = flower.poll("/api/workers?status=1", lambda b: b.get(hostname) is True)
        assert alive[hostname] is True

        job_ids = []
        for _ in range(2):
            cmd = [sys.executable, "-m", "farm.cli.main", "submit", *TINY, "--phases", "forward", "--devices", "cpu"]
            p = subprocess.run(
                [*cmd, "--wait", "--json"], env=_farm_env(redis_url), capture_output=True, text=True, timeout=300
            )
            assert p.stdout.strip(), p.stderr
            (res,) = json.loads(p.stdout)["results"]
            assert res["status"] in ("ok", "invalid"), res["error"]
            job_ids.append(res["job_id"])

        def both_succeeded(tasks: dict[str, Any]) -> bool:
            return all(tasks.get(j, {}).get("state") == "SUCCESS" for j in job_ids)

        tasks = flower.poll("/api/tasks", both_succeeded)
        for j in job_ids:
            assert tasks[j]["name"] == "farm.run_job"
            assert tasks[j]["worker"] == hostname
        assert set(tasks) == set(job_ids)  # every farm task, nothing else

        # Without credentials, or with wrong ones, the API refuses.
        assert flower.get("/api/tasks", auth=None)[0] == 401
        assert flower.get("/api/workers?status=1", auth="farmer:wrong")[0] == 401
        assert flower.get("/", auth=None)[0] == 401
    finally:
        worker.stop()
    assert worker.proc.poll() is not None
