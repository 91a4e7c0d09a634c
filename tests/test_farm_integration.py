"""The farm end to end: a real redis-server, real `farm worker` processes, the real `farm` CLI.

One redis-server and two CPU workers serve the whole module (starting workers is the slow part):
worker A consumes `cpu` (and a `cuda.nogpu` queue as a CUDA-tagged worker on a machine without
CUDA), worker B consumes only `cpu.box2`. Jobs are gpt2-tiny, batch 1 x seq 32, 2 repeats.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from farmproc import WorkerProcess, start_worker, stop_all

from farm.cluster.redisproc import RedisProcess
from farm.results.store import unpack_result

pytestmark = pytest.mark.integration

# One thread: on a shared 2-core machine, OpenMP threads of several processes fight each other.
TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]


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


@dataclass
class Out:
    returncode: int
    stdout: str
    stderr: str


class Farm:
    def __init__(self, redis_proc: RedisProcess, workers: dict[str, WorkerProcess]) -> None:
        self.redis = redis_proc
        self.url = redis_proc.url
        self.workers = workers
        self.env = farm_env(self.url)
        self.r = redis.Redis.from_url(self.url, decode_responses=True)

    def cli_proc(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """The real console script in a subprocess."""
        return farm(*args, env=self.env, timeout=timeout)

    def cli(self, *args: str) -> Out:
        """The same CLI in this process (Typer's runner): saves a Python start-up per call."""
        from typer.testing import CliRunner

        from farm.cli.main import app
        from farm.settings import get_settings

        get_settings.cache_clear()
        res = CliRunner().invoke(app, list(args), env={"FARM_REDIS_URL": self.url})
        get_settings.cache_clear()
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        return Out(res.exit_code, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def live_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    rp = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    workers: dict[str, WorkerProcess] = {}
    try:
        # The session's farm home (as conftest sets it): the CPU peak calibration is cached there.
        env = {"FARM_HOME": str(tmp_path_factory.getbasetemp() / "farm-home")}
        short = {**env, "FARM_HEARTBEAT_INTERVAL": "0.5", "FARM_HEARTBEAT_TTL": "2"}
        plan = [
            ("worker-a", "cpu", ["cpu"], env),
            ("worker-b", "cpu", ["cpu.box2"], env),
            # Short heartbeat: the last test kills this one and watches its heartbeat expire.
            ("worker-nogpu", "cuda", ["cuda.nogpu"], short),
        ]
        # Started together (each imports torch), then waited for.
        for name, device, queues, wenv in plan:
            workers[name] = start_worker(rp.url, device=device, queues=queues, name=name, env=wenv)
        for w in workers.values():
            w.wait_ready()
        yield Farm(rp, workers)
    finally:
        stop_all(list(workers.values()))
        rp.kill9()


# A completed measurement: `invalid` is one the engine flagged as faster than the CPU peak it
# calibrated, which happens when the calibration ran while the shared machine was busy.
COMPLETED = ("ok", "invalid")


def exit_for(results: list[dict[str, Any]]) -> int:
    return 0 if all(r["status"] == "ok" for r in results) else 1


def results_of(proc: Out | subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def test_submit_wait_json_cpu_ok_with_three_phases(live_farm: Farm) -> None:
    p = live_farm.cli_proc("submit", *TINY, "--phases", "all", "--devices", "cpu", "--wait", "--json")
    doc = results_of(p)
    assert p.returncode == exit_for(doc["results"]), p.stderr
    assert len(doc["results"]) == 1
    res = doc["results"][0]
    assert res["status"] in COMPLETED, res["error"]
    assert list(res["phases"]) == ["init", "forward", "train"]
    assert res["worker"] == "worker-a"
    # The result is in the farm's own keys, without expiry.
    key = f"farm:result:{res['job_id']}"
    assert json.loads(unpack_result(redis.Redis.from_url(live_farm.url).get(key)))["run_id"] == doc["run_id"]
    assert live_farm.r.ttl(key) == -1


def test_two_workers_receive_only_their_own_jobs(live_farm: Farm) -> None:
    p = live_farm.cli("submit", *TINY, "--phases", "init", "--devices", "cpu,cpu:box2", "--wait", "--json")
    assert p.returncode == 0, p.stderr
    by_device = {r["device"]: r for r in results_of(p)["results"]}
    assert by_device["cpu"]["worker"] == "worker-a"
    assert by_device["cpu:box2"]["worker"] == "worker-b"
    assert all(r["status"] == "ok" for r in by_device.values())


def test_cuda_job_without_a_cuda_worker_is_reported_unserved(live_farm: Farm) -> None:
    p = live_farm.cli(
        "submit", *TINY, "--phases", "init", "--devices", "cpu,cuda", "--wait", "--unserved-after", "1", "--json"
    )
    assert p.returncode == 5, p.stderr  # unserved jobs left (docs/farm.md, exit codes)
    doc = results_of(p)
    assert [r["device"] for r in doc["results"]] == ["cpu"]  # the served job finished first
    # Per unserved device: no live worker serves it, it stays queued until one does, how to drop it.
    job = f"{doc['run_id']}-001"
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("unserved: device cuda"))
    assert "no live worker serves queue 'cuda'" in line and f"job {job} stays queued until one does" in line
    cancel = line.split("to drop it: ")[1]
    assert cancel == f"farm cancel {doc['run_id']} --job {job}"
    # The cuda job stays queued (its message waits in Redis) and status says unserved.
    assert live_farm.r.llen("cuda") == 1
    st = live_farm.cli("status", doc["run_id"])
    assert st.returncode == 0, st.stderr
    assert "unserved" in st.stdout and "1 done" in st.stdout
    # The printed command drops exactly that job; an id not in the run is refused (exit 4).
    bad = live_farm.cli("cancel", doc["run_id"], "--job", "nope")
    assert bad.returncode == 4 and "'nope' is not a job of run(s)" in bad.stderr
    c = live_farm.cli(*cancel.split()[1:])
    assert c.returncode == 0 and c.stdout.strip() == f"cancelled 1 job(s): {job}", c.stderr
    # --skip-unserved cancels such jobs instead, and the run succeeds.
    p = live_farm.cli(
        "submit",
        *TINY,
        "--phases",
        "init",
        "--devices",
        "cpu,cuda",
        "--wait",
        "--unserved-after",
        "1",
        "--skip-unserved",
    )
    assert p.returncode == 0, p.stderr
    assert "cancelled 1 unserved job(s)" in p.stderr


def test_cuda_tagged_worker_without_cuda_stores_a_clear_failure(live_farm: Farm) -> None:
    p = live_farm.cli("submit", *TINY, "--phases", "init", "--devices", "cuda:nogpu", "--wait", "--json")
    assert p.returncode == 1, p.stderr  # the job ran and failed
    (res,) = results_of(p)["results"]
    assert res["status"] == "failed"
    assert res["worker"] == "worker-nogpu"
    assert "no CUDA device" in res["error"]
    # Stored once and acknowledged: nothing left on the queue to retry.
    assert live_farm.r.llen("cuda.nogpu") == 0
    assert live_farm.r.hget(f"farm:job:{res['job_id']}", "attempts") == "1"


def test_wildcard_fans_out_to_every_tag_a_live_worker_serves(live_farm: Farm) -> None:
    p = live_farm.cli("submit", *TINY, "--phases", "init", "--devices", "cuda:*,cpu:*", "--wait", "--json")
    results = results_of(p)["results"]
    # worker-nogpu serves cuda.nogpu, worker-b cpu.box2: one job each (worker-a only serves `cpu`).
    assert sorted(r["device"] for r in results) == ["cpu:box2", "cuda:nogpu"]
    assert p.returncode == 1  # the cuda:nogpu job ran on a machine without CUDA and failed


@pytest.mark.parametrize(
    "args",
    [["--batch", "0"], ["--devices", "tpu"], ["--seq", "5000"]],
)
def test_bad_specs_enqueue_nothing(live_farm: Farm, args: list[str]) -> None:
    runs_before = live_farm.r.zcard("farm:runs")
    p = live_farm.cli("submit", "--model", "gpt2-tiny", *args)
    assert p.returncode == 2, p.stderr
    assert "error:" in p.stderr and "Traceback" not in p.stderr
    assert live_farm.r.zcard("farm:runs") == runs_before
    assert all(live_farm.r.llen(q) == 0 for q in ("cpu", "cpu.box2", "cuda.nogpu"))


def test_results_json_and_csv(live_farm: Farm) -> None:
    p = live_farm.cli("submit", *TINY, "--phases", "forward,train", "--devices", "cpu", "--wait", "--json")
    assert p.returncode == exit_for(results_of(p)["results"]), p.stderr
    run_id = results_of(p)["run_id"]
    j = live_farm.cli("results", run_id, "--json")
    assert j.returncode == 0, j.stderr
    (res,) = json.loads(j.stdout)
    assert res["run_id"] == run_id and set(res["phases"]) == {"forward", "train"}
    c = live_farm.cli("results", run_id, "--csv")
    assert c.returncode == 0, c.stderr
    rows = list(csv.DictReader(io.StringIO(c.stdout)))
    assert [r["phase"] for r in rows] == ["forward", "train"]
    assert all(r["status"] in COMPLETED and float(r["median_s"]) > 0 for r in rows)
    missing = live_farm.cli("results", "no-such-run", "--json")
    assert missing.returncode == 4


def test_cancel_marks_queued_jobs_cancelled(live_farm: Farm) -> None:
    p = live_farm.cli("submit", *TINY, "--devices", "cpu:nobody", "--json")
    assert p.returncode == 0, p.stderr
    run_id = json.loads(p.stdout)["run_id"]
    c = live_farm.cli("cancel", run_id)
    assert c.returncode == 0, c.stderr
    assert "cancelled 1 job(s)" in c.stdout
    (res,) = json.loads(live_farm.cli("results", run_id, "--json").stdout)
    assert res["status"] == "cancelled"
    st = live_farm.cli("status", run_id)
    assert "cancelled" in st.stdout


def test_submit_without_wait_prints_the_run_id_and_status_watch_follows_it(live_farm: Farm) -> None:
    p = live_farm.cli("submit", *TINY, "--phases", "all", "--devices", "cpu:box2")
    assert p.returncode == 0, p.stderr
    run_id = p.stdout.strip()
    assert live_farm.r.exists(f"farm:run:{run_id}")
    # While it is held, the worker's heartbeat names the job (it may already be done: then idle).
    deadline = time.monotonic() + 60
    seen = False
    while not seen and time.monotonic() < deadline and not live_farm.r.exists(f"farm:result:{run_id}-000"):
        seen = live_farm.r.hget("farm:worker:worker-b", "job") == f"{run_id}-000"
        time.sleep(0.05)
    assert seen
    w = live_farm.cli("status", run_id, "--watch")
    assert w.returncode == 0, w.stderr
    assert "1 done" in w.stdout and "worker-b" in w.stdout
    latest = live_farm.cli("status")  # the latest run by default
    assert run_id in latest.stdout


def test_workers_lists_tags_and_health_check(live_farm: Farm) -> None:
    p = live_farm.cli("workers", "--json")
    assert p.returncode == 0, p.stderr
    live = {w["name"]: w for w in json.loads(p.stdout)}
    assert {"worker-a", "worker-b", "worker-nogpu"} <= set(live)
    assert live["worker-a"]["tags"] == ["cpu"]
    assert live["worker-b"]["queues"] == ["cpu.box2", "control"]
    assert live["worker-nogpu"]["device"] == "cuda"
    host = live["worker-a"]["host"]
    assert live_farm.cli("workers", "--check-host", host).returncode == 0
    assert live_farm.cli("workers", "--check-host", "no-such-host").returncode == 1


def test_heartbeat_expires_after_worker_is_killed(live_farm: Farm) -> None:
    w = live_farm.workers["worker-nogpu"]  # heartbeat every 0.5 s with a 2 s TTL; the last test
    assert 0 < live_farm.r.ttl("farm:worker:worker-nogpu") <= 2
    children = w.child_pids()
    w.kill9()
    for pid in children:  # the pool child would exit on its own; do not leave it behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while live_farm.r.exists("farm:worker:worker-nogpu") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_farm.r.exists("farm:worker:worker-nogpu")
    p = live_farm.cli("workers", "--json")
    assert "worker-nogpu" not in {w["name"] for w in json.loads(p.stdout)}


def test_every_key_the_farm_wrote_is_in_the_store_key_table(live_farm: Farm) -> None:
    """After the jobs above (results, runs, jobs, workers, summaries), every farm key Redis holds
    matches a pattern of `farm.results.store.KEY_TABLE`; kombu's own keys are not the farm's."""
    import fnmatch

    from farm.results.store import KEY_TABLE

    p = live_farm.cli_proc("submit", *TINY, "--phases", "forward", "--devices", "cpu", "--wait", "--json")
    assert p.returncode in (0, 1), p.stderr
    assert live_farm.cli("report", "latest", "--format", "json").returncode == 0  # writes summaries
    keys = [k for k in live_farm.r.scan_iter("farm:*")]
    assert {k.split(":")[1] for k in keys} >= {"result", "summary", "idx", "run", "runs", "job", "worker", "workers"}
    patterns = [f"farm:{p.replace('**', '*')}" for p in KEY_TABLE]
    unknown = [k for k in keys if not any(fnmatch.fnmatchcase(k, pat) for pat in patterns)]
    assert not unknown, unknown
    # A one-segment pattern (`run:*`) must not stand for a deeper key; index values (device tags
    # such as `cpu:box2`) may hold a colon themselves.
    deep = [k for k in keys if k.count(":") > 2 and not k.startswith(("farm:idx:", "farm:redbeat:", "farm:schedule:"))]
    assert not deep, deep
