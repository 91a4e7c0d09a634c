"""deploy/slurm/farm-worker.sbatch submitted to a real single-node Slurm cluster.

The fixture starts munged, slurmctld and slurmd (Debian's slurm-wlm and munge) on this machine with
a configuration of their own in a temporary directory, one node with two CPUs and a stand-in GPU:
a `gpu` gres backed by a plain file, so that `--gres=gpu:1` schedules. Everything it started (jobs,
job steps, daemons) is stopped afterwards, also when a test fails. Skipped without root or the
Slurm binaries.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from farm.cluster.redisproc import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "farm-worker.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd")
# Soft < hard < visibility timeout, short: a job killed with its allocation is delivered again soon.
SHORT_VT = {"FARM_VISIBILITY_TIMEOUT": "25", "FARM_TASK_TIME_LIMIT": "20", "FARM_TASK_SOFT_TIME_LIMIT": "18"}
FAST_BEAT = {"FARM_HEARTBEAT_INTERVAL": "1", "FARM_HEARTBEAT_TTL": "5"}
TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]

if os.geteuid() != 0 or not all(shutil.which(d) for d in (*DAEMONS, "sbatch", "scancel", "squeue")):
    pytest.skip("needs root and slurm-wlm + munge (apt-get install slurm-wlm munge)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Slurm:
    dir: Path
    cluster: str
    env: dict[str, str]

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)

    def sbatch(self, *args: str, env: dict[str, str]) -> str:
        p = subprocess.run(
            ["sbatch", "--parsable", f"--chdir={self.dir}", f"--output={self.dir}/%x-%j.out", *args, str(SBATCH)],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str:
        p = self.run("scontrol", "show", "job", job_id, "-o")
        fields = dict(f.split("=", 1) for f in p.stdout.split() if "=" in f)
        return f"{fields.get('JobState', 'GONE')} {fields.get('ExitCode', '')}".strip()

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.job_state(job_id)
            if st.split()[0] in states:
                return st
            time.sleep(0.5)
        raise TimeoutError(f"slurm job {job_id} is {self.job_state(job_id)}, not {states}")

    def output(self, job_id: str) -> str:
        p = self.dir / f"farm-worker-{job_id}.out"
        return p.read_text(errors="replace") if p.exists() else ""


def _ours(proc: psutil.Process, conf: str, cluster: str) -> bool:
    """A daemon started with our config, or a job process of our cluster."""
    with contextlib.suppress(psutil.Error):
        if any(conf in a or a.startswith(conf.rsplit("/", 1)[0]) for a in proc.cmdline()):
            return True
        return proc.environ().get("SLURM_CLUSTER_NAME") == cluster
    return False


@pytest.fixture()
def slurm() -> Iterator[Slurm]:
    d = Path(tempfile.mkdtemp(prefix="farm-slurm-"))  # short: munge's socket path must fit sun_path
    cluster = f"farm{secrets.token_hex(3)}"
    conf = d / "slurm.conf"
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    (d / "munge.key").write_bytes(secrets.token_bytes(1024))
    (d / "munge.key").chmod(0o600)
    (d / "gpu0").touch()  # the stand-in GPU: a gres needs a File, any file will do
    host = socket.gethostname().split(".")[0]
    mem = psutil.virtual_memory().total // 2**20 - 512
    conf.write_text(
        f"""ClusterName={cluster}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
GresTypes=gpu
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=3
MinJobAge=300
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={mem} Gres=gpu:1 State=UNKNOWN
PartitionName=farm Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    (d / "gres.conf").write_text(f"NodeName={host} Name=gpu File={d}/gpu0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "SLURM_"))}
    env["SLURM_CONF"] = str(conf)
    s = Slurm(d, cluster, env)
    try:
        munge = ["munged", "-f", "-S", f"{d}/munge.sock", f"--key-file={d}/munge.key"]
        munge += [f"--log-file={d}/log/munged.log", f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"]
        for cmd in (munge, ["slurmctld", "-i", "-f", str(conf)], ["slurmd", "-f", str(conf)]):
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, f"{cmd[0]}: {p.stderr}"
        deadline = time.monotonic() + 60
        while "idle" not in s.run("sinfo", "-h", "-o", "%T").stdout:
            assert time.monotonic() < deadline, (d / "log" / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.run("scancel", "--full", "-u", "root")
            deadline = time.monotonic() + 20
            while s.run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((d / f"{name}.pid").read_text()), signal.SIGTERM)
        time.sleep(1)
        left = [p for p in psutil.process_iter() if _ours(p, str(conf), cluster)]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def _worker_env(url: str) -> dict[str, str]:
    return {
        "FARM_REDIS_URL": url,
        "FARM_HOME": os.environ["FARM_HOME"],
        "VENV": str(Path(sys.executable).parent.parent),
        "ENV_FILE": "/nonexistent",
        **SHORT_VT,
        **FAST_BEAT,
    }


def _farm(*args: str, url: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_REDIS_URL=url, FARM_HOME=os.environ["FARM_HOME"])
    return subprocess.run(
        [sys.executable, "-m", "farm.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _wait_registered(r: redis.Redis, slurm: Slurm, job_id: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [str(k).split(":", 2)[2] for k in r.keys("farm:worker:*")]
        mine = [n for n in names if n.startswith(f"slurm-{job_id}-")]
        if mine:
            return mine[0]
        assert slurm.job_state(job_id).split()[0] in ("PENDING", "RUNNING"), slurm.output(job_id)
        time.sleep(0.5)
    raise TimeoutError(f"worker of slurm job {job_id} never registered:\n{slurm.output(job_id)}")


def test_cpu_workers_from_sbatch_run_a_job_and_scancel_hands_it_to_the_other(slurm: Slurm, tmp_path: Path) -> None:
    rp = RedisProcess(tmp_path / "redis").start()
    try:
        r = redis.Redis.from_url(rp.url, decode_responses=True)
        env = _worker_env(rp.url)
        # The documented CPU-partition form (docs/deploy.md), with resources that fit this node.
        cpu = ("--gres=none", "--cpus-per-task=1", "--mem=3G", "--export=ALL,FARM_WORKER_DEVICE=cpu")
        a = slurm.sbatch(*cpu, env=env)
        name_a = _wait_registered(r, slurm, a)
        assert "device cpu" in slurm.output(a)
        # A job through the Slurm worker.
        p = _farm("submit", *TINY, "--phases", "init", "--devices", "cpu", "--wait", "--json", url=rp.url)
        assert p.returncode == 0, p.stderr
        assert [res["worker"] for res in json.loads(p.stdout)["results"]] == [name_a]
        # A second worker; a long job on the first; scancel the first mid-job.
        b = slurm.sbatch(*cpu, env=env)
        name_b = _wait_registered(r, slurm, b)
        long = ["--model", "gpt2-tiny", "--phases", "forward", "--devices", "cpu", "--batch", "4", "--seq", "128"]
        long += ["--repeats", "250", "--warmup", "0", "--threads", "1"]
        run_id = _farm("submit", *long, url=rp.url).stdout.strip()
        job_key = f"farm:job:{run_id}-000"
        deadline = time.monotonic() + 120
        while r.hget(job_key, "state") != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        first = r.hget(job_key, "worker")
        assert first in (name_a, name_b)
        victim, other = (a, name_b) if first == name_a else (b, name_a)
        assert slurm.run("scancel", victim).returncode == 0
        slurm.wait_state(victim, ("CANCELLED", "COMPLETED", "FAILED"), timeout=60)
        assert "Warm shutdown" in slurm.output(victim) or "warm shutdown" in slurm.output(victim).lower()
        p = _farm("status", run_id, "--watch", "--json", url=rp.url, timeout=240)
        p = _farm("results", run_id, "--json", url=rp.url)
        results = json.loads(p.stdout)
        assert [res["worker"] for res in results] == [other], p.stdout
        assert results[0]["status"] in ("ok", "invalid"), results[0]["error"]
        assert int(r.hget(job_key, "attempts") or 0) == 2  # delivered again, stored once
    finally:
        rp.kill9()


def test_a_gpu_allocation_without_a_usable_gpu_ends_the_worker_at_once(slurm: Slurm, tmp_path: Path) -> None:
    # The script's own `--gres=gpu:1` schedules on the stand-in GPU; the worker finds no CUDA device.
    rp = RedisProcess(tmp_path / "redis").start()
    try:
        job = slurm.sbatch("--cpus-per-task=1", "--mem=2G", env=_worker_env(rp.url))
        st = slurm.wait_state(job, ("FAILED", "COMPLETED", "CANCELLED"), timeout=120)
        assert st == "FAILED 2:0", st
        out = slurm.output(job)
        assert "device cuda" in out and "no usable CUDA device" in out, out
        assert not redis.Redis.from_url(rp.url).keys("farm:worker:*")
    finally:
        rp.kill9()
