"""Real `farm worker` processes for integration tests (no eager mode, no fakeredis).

    w = start_worker(redis_url, device="cpu", queues=["cpu"]).wait_ready()
    ...
    w.stop()

Each worker runs in its own session; `stop` ends it (SIGTERM, then SIGKILL of the whole family),
so a test never leaves a process behind. Other engineers' tests use this with `redis_url`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import redis

READY_TIMEOUT_S = 120.0  # a worker imports torch before it beats; the shared CI machine is slow


class WorkerProcess:
    """One `farm worker` subprocess with its name, pid and log file."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, redis_url: str, log_path: Path, prefix: str) -> None:
        self.proc = proc
        self.name = name
        self.redis_url = redis_url
        self.log_path = log_path
        self.prefix = prefix

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def child_pids(self) -> list[int]:
        """Pool processes (where jobs run) of this worker."""
        try:
            return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def is_ready(self) -> bool:
        r = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
        try:
            return bool(r.exists(f"{self.prefix}:worker:{self.name}"))
        except redis.RedisError:
            return False
        finally:
            r.close()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> WorkerProcess:
        """Block until the worker's heartbeat is in Redis (it consumes its queues)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.is_ready():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready after {timeout} s:\n{self.log()[-3000:]}")

    def _family(self) -> list[psutil.Process]:
        """Every process of the worker's session (it is a session leader): orphans included."""
        family = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == self.pid:
                    family.append(p)
        return family

    def kill9(self) -> None:
        """Crash the worker's main process (its pool children are left to notice)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM: Celery's warm shutdown (the running job finishes or is requeued)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the worker and every process it started; nothing is left behind."""
        family = self._family()
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(family, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def stop_all(workers: list[WorkerProcess], timeout: float = 30.0) -> None:
    """Stop several workers at once (their warm shutdowns overlap), leaving no process behind."""
    for w in workers:
        if w.proc.poll() is None:
            w.terminate()
    deadline = time.monotonic() + timeout
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(max(0.1, deadline - time.monotonic()))
    for w in workers:
        w.stop(timeout=1)


def start_worker(
    redis_url: str,
    *,
    device: str = "cpu",
    queues: list[str] | None = None,
    env: dict[str, str] | None = None,
    name: str | None = None,
    concurrency: int = 1,
    gpu: int | None = None,
    loglevel: str = "info",
    machine: str | None = None,
) -> WorkerProcess:
    """Start `farm worker` against `redis_url` (call `.wait_ready()` before submitting)."""
    name = name or f"test-{device}-{uuid.uuid4().hex[:6]}"
    full_env = {**os.environ, "FARM_REDIS_URL": redis_url, **(env or {})}
    cmd = [sys.executable, "-m", "farm.cli.main", "worker", "--device", device, "--name", name]
    cmd += ["--concurrency", str(concurrency), "--loglevel", loglevel]
    if queues:
        cmd += ["--queues", ",".join(queues)]
    if gpu is not None:
        cmd += ["--gpu", str(gpu)]
    if machine is not None:
        cmd += ["--machine", machine]
    log_path = Path(tempfile.mkdtemp(prefix="farm-worker-")) / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    return WorkerProcess(proc, name, redis_url, log_path, full_env.get("FARM_KEY_PREFIX", "farm"))


def stop_session(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM a process started with `start_new_session=True` and its session (a warm shutdown, as
    Compose and systemd send it), wait up to `grace_s`, then SIGKILL whatever of the session is left."""
    family = []
    for q in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(q.pid) == proc.pid:
                family.append(q)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    for q in family:
        with contextlib.suppress(psutil.Error):
            q.kill()
    psutil.wait_procs(family, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
