"""A farm worker: what it serves, its heartbeat, and the body of the job task.

`farm worker` plans a `WorkerConfig` from the hardware (GPUs through NVML only: CUDA is never
touched in the parent, because job processes are forked from it), subscribes to every queue the
config can serve plus `control` (and `<queue>.x2 .. .x<n>` for jobs over up to `--max-world-size`
devices), and beats a heartbeat into Redis from a thread of the main
process. Each job runs in a pool child: `execute_job` counts the delivery, skips a job whose result
is already stored, quarantines one delivered too often, runs it, and stores the result (confirmed
by Redis) before the task returns, so the late ack only follows a stored result. A job that fails
validation is stored as `failed` when its id names a job the farm submitted, else logged and
dropped; entries the worker cannot decode at all never reach it (`queue.GuardedChannel`). The task
itself (`farm.run_job`, a `shared_task`) is declared here, over `execute_job`; the app in
`farm.cluster.queue` lists this module in Celery's `include`, so workers import it at start.

This module imports torch (through the engine, once, so forked job processes start warm): only
worker processes import it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from celery import Task, shared_task, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker import state as celery_state
from celery.worker.request import Request
from pydantic import ValidationError

from farm.cluster.embedded import results_url
from farm.cluster.queue import TASK_NAME, get_app, install_message_guard
from farm.engine.hardware import fingerprint, machine_tag, nvml_gpus
from farm.engine.runner import run_job
from farm.errors import BrokerError, BrokerUnavailable, ConfigError
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import Settings, get_settings
from farm.spec import CONTROL_QUEUE, MAX_WORLD_SIZE, STORED, Job

log = logging.getLogger("farm.cluster.worker")

JOB_ID_RE = re.compile(Job.model_fields["job_id"].metadata[0].pattern)  # the pattern `Job.job_id` enforces
STORE_RETRY_S = 60.0  # how long a finished job keeps trying to store its result before requeueing
# Heartbeat events on (Flower and `celery events` list live workers from them; task events are on in
# the app's settings). Gossip and mingle off: see docs/deploy.md for the start-up times measured.
WORKER_EVENT_FLAGS: tuple[str, ...] = ("--without-gossip", "--without-mingle")


@dataclass
class WorkerConfig:
    """What one worker serves: its name, device, GPU, queues and the device tags behind them."""

    name: str
    host: str
    machine: str
    device: str  # "cpu" or "cuda"
    gpu_index: int | None
    queues: list[str]
    tags: list[str]
    concurrency: int = 1
    max_tasks_per_child: int | None = None
    gpu_names: list[str] = field(default_factory=list)
    max_world_size: int = 1  # devices it gives one job (DDP train): it consumes `<queue>.x2 .. .x<n>` too


_config: WorkerConfig | None = None  # set in the parent before the pool forks; children inherit it


def plan_worker(
    device: str = "auto",
    gpu: int | None = None,
    queues: list[str] | None = None,
    name: str | None = None,
    concurrency: int = 1,
    max_world_size: int | None = None,
) -> WorkerConfig:
    """Decide what this worker serves from its hardware (NVML only; CUDA stays untouched).

    `max_world_size`: how many devices it gives one job (a DDP train over cuda:0..n-1, or n CPU
    processes); default the local GPU count on a GPU worker without `--gpu`, else 1. Above 1 it also
    consumes `<queue>.x2 .. <queue>.x<n>` for each of its queues.
    """
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"--device must be cpu, cuda or auto, got {device!r}")
    if max_world_size is not None and not 1 <= max_world_size <= MAX_WORLD_SIZE:
        raise ConfigError(f"--max-world-size must be 1..{MAX_WORLD_SIZE}, got {max_world_size}")
    gpus = list(nvml_gpus())
    # An explicit queue list is the operator's word (tests use it for a CUDA-tagged worker without a
    # GPU); otherwise a CUDA worker proves its device before it takes a job.
    check = device == "cuda" and not queues
    if check and not gpus:
        raise ConfigError(
            "--device cuda: no usable CUDA device here: NVML finds no NVIDIA GPU (no GPU, no driver, "
            "or none given to this job); the worker did not start"
        )
    if check:
        usable = cuda_device_count()
        if usable < (1 if gpu is None else gpu + 1):
            raise ConfigError(
                f"--device cuda{'' if gpu is None else f' --gpu {gpu}'}: NVML finds {len(gpus)} GPU(s) but CUDA "
                f"can use {usable} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}, "
                "driver or runtime broken?); the worker did not start"
            )
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    gpu_index_given = gpu
    host = socket.gethostname()
    machine = machine_tag()  # FARM_MACHINE (`--machine`) where set
    gpu_names: list[str] = []
    if device == "cpu":
        tags = ["cpu", f"cpu:{machine}"]
        gpu = None
    else:
        if gpu is not None and gpus and not 0 <= gpu < len(gpus):
            raise ConfigError(f"--gpu {gpu}: NVML finds {len(gpus)} GPU(s) here (0..{len(gpus) - 1})")
        chosen = [g for g in gpus if gpu is None or g.index == gpu]
        gpu = gpu if gpu is not None else (0 if gpus else None)
        # A GPU worker serves one GPU at a time: `cuda` and that GPU's model tag.
        chosen = chosen[:1]
        gpu_names = [g.name for g in chosen]
        tags = ["cuda", *[f"cuda:{g.tag}" for g in chosen]]
        concurrency = 1
    if max_world_size is None:
        max_world_size = len(gpus) if device == "cuda" and gpu_index_given is None and gpus else 1
    if check and max_world_size > len(gpus):
        raise ConfigError(f"--max-world-size {max_world_size}: NVML finds {len(gpus)} GPU(s) here")
    served = [t.replace(":", ".") for t in tags]
    if queues:
        served = [q.strip() for q in queues if q.strip()]
        tags = [q.replace(".", ":", 1) for q in served]
    served += [f"{q}.x{n}" for q in served if q != CONTROL_QUEUE for n in range(2, max_world_size + 1)]
    if CONTROL_QUEUE not in served:
        served.append(CONTROL_QUEUE)
    if name is None:
        name = f"{device}{'' if gpu is None else gpu}-{machine}-{os.getpid()}"
    if not all(c.isalnum() or c in "._-" for c in name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-'")
    return WorkerConfig(
        name=name,
        host=host,
        machine=machine,
        device=device,
        gpu_index=gpu,
        queues=served,
        tags=tags,
        concurrency=max(1, concurrency),
        # A fresh process per job on a GPU: clean CUDA state, memory returned to the driver.
        max_tasks_per_child=1 if device == "cuda" else None,
        gpu_names=gpu_names,
        max_world_size=max_world_size,
    )


CUDA_PROBE_S = 120.0  # a child that imports torch and counts CUDA devices


def cuda_device_count() -> int:
    """How many CUDA devices torch can use, asked in a child process (this one must never touch CUDA:
    job processes fork from it). 0 when the child fails or hangs."""
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CUDA_PROBE_S)
        return int(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else 0
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return 0


# -- the store, per process -----------------------------------------------------------------------
_stores: dict[int, ResultStore] = {}


def worker_store() -> ResultStore:
    """This process's results store (a new connection after a fork: keyed by pid)."""
    pid = os.getpid()
    if pid not in _stores:
        settings = get_settings()
        _stores.clear()
        _stores[pid] = ResultStore.from_url(results_url(settings), settings.key_prefix)
    return _stores[pid]


# -- heartbeat ---------------------------------------------------------------------------------
class Heartbeat:
    """A thread of the worker's main process that keeps the worker's heartbeat hash alive with a TTL.

    The hash holds the config, the fingerprint and the jobs running now (read from Celery's
    `reserved_requests` in this process); it expires `heartbeat_ttl` seconds after the worker dies.
    """

    def __init__(self, config: WorkerConfig, store: ResultStore, settings: Settings) -> None:
        self.config = config
        self.store = store
        self.interval = settings.heartbeat_interval
        self.ttl = max(1, round(settings.heartbeat_ttl))
        self.started_at = time.time()
        self.fp = fingerprint(with_torch=False).model_dump_json()
        self._stop = threading.Event()
        self.wake = threading.Event()
        self.received: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="farm-heartbeat", daemon=True)

    def current_jobs(self) -> list[str]:
        """Jobs this worker holds now: received (prefetch is 1) or running."""
        ids: set[str] = set()
        for _ in range(3):  # the set belongs to Celery's main thread: retry if it changes mid-copy
            try:
                ids = {r.id for r in list(celery_state.reserved_requests)}
                break
            except RuntimeError:
                time.sleep(0.01)
        ids |= self.received
        self.received = set()
        return sorted(ids)

    def note_received(self, job_id: str) -> None:
        """Called on task_received (before Celery reserves it): show the job in the next beat, now."""
        self.received.add(job_id)
        self.wake.set()

    def beat(self) -> None:
        doc = asdict(self.config)
        doc.update(pid=os.getpid(), started_at=self.started_at, updated_at=time.time(), fingerprint=self.fp)
        doc["job"] = ",".join(self.current_jobs())
        self.store.beat_worker(self.config.name, doc, self.ttl)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as e:  # Redis restarting: keep beating, never kill the worker
                log.warning("heartbeat failed: %s", e)
            self.wake.wait(self.interval)
            self.wake.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout=5)
        try:
            self.store.remove_worker(self.config.name)
        except BrokerError as e:
            log.warning("could not unregister worker: %s", e)


# -- the task body ----------------------------------------------------------------------------------
class _ProgressPoster:
    """Writes jobs' progress into Redis from a thread of the job's process, the latest value per job.

    Progress is best effort and must never stall the job: a write to a Redis that does not answer (a
    worker host cut off from it) blocks for the store's socket timeout, and inside the job that wait
    would count against the job's time limit and could end it as `timeout` for a fault of the network.

    `post` is called between timed regions and waits up to WAIT_S for the write, so that on a healthy
    Redis the write is done before the next timed repeat starts (the thread's socket work never
    overlaps a measurement); a write that takes longer is left to the thread, blocked in a socket
    read that takes no CPU."""

    WAIT_S = 0.05

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.pending: dict[str, tuple[str, int, int]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        threading.Thread(target=self._loop, name="farm-progress", daemon=True).start()

    def post(self, job_id: str, phase: str, done: int, total: int) -> None:
        with self.lock:
            self.pending[job_id] = (phase, done, total)
            self.idle.clear()
        self.wake.set()
        self.idle.wait(self.WAIT_S)

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            with self.lock:
                items, self.pending = self.pending, {}
            for job_id, (phase, done, total) in items.items():
                try:
                    self.store.set_job_progress(job_id, phase, done, total)
                except BrokerError as e:
                    log.warning("progress of %s not written: %s", job_id, e)
            with self.lock:
                if not self.pending:
                    self.idle.set()


_posters: dict[int, _ProgressPoster] = {}


def _progress_poster(store: ResultStore) -> _ProgressPoster:
    """This process's progress thread (a pool child starts its own: threads do not survive a fork)."""
    pid = os.getpid()
    if pid not in _posters or _posters[pid].store is not store:
        _posters.clear()
        _posters[pid] = _ProgressPoster(store)
    return _posters[pid]


def _progress_writer(store: ResultStore, job_id: str) -> Callable[[str, int, int], None]:
    """on_progress for run_job: phase/done/total into the job's state, at most every 0.2 s per phase,
    written by the process's progress thread (`_ProgressPoster`: never waits for Redis); and one log
    line each time the step changes (a phase, compiling, measuring the CPU roofline)."""
    last: dict[str, float] = {}
    said = [""]
    poster = _progress_poster(store)

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase != said[0]:
            said[0] = phase
            log.info("job %s: %s (%d/%d steps)", job_id, phase, done, total)
        now = time.monotonic()
        if done < total and now - last.get(phase, 0.0) < 0.2:
            return
        last[phase] = now
        poster.post(job_id, phase, done, total)  # progress is best effort; the result is not

    return on_progress


def _store_confirmed(store: ResultStore, result: JobResult) -> None:
    """Write the result until Redis confirms it; requeue the message if Redis stays away, or if the
    delivery's time limit runs out while the finished result waits for Redis (docs/reliability.md,
    "Time limits and redelivery": that time is not the job's, and the next delivery gets its own)."""
    deadline = time.monotonic() + STORE_RETRY_S
    delay = 0.5
    while True:
        try:
            store.put_result(result)
            store.set_job_state(result.job_id, "done", status=result.status, worker=result.worker)
            return
        except SoftTimeLimitExceeded as e:
            log.error("result of %s not stored within the delivery's time limit: requeueing", result.job_id)
            raise Reject("time limit reached while storing the result: requeued", requeue=True) from e
        except Exception as e:
            if time.monotonic() > deadline:
                log.error("result of %s not stored (%s): requeueing the job", result.job_id, e)
                raise Reject(f"result store unreachable: {e}", requeue=True) from e
            log.warning("storing the result of %s failed (%s); retrying", result.job_id, e)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def execute_job(job_doc: dict[str, Any], request: Any = None) -> dict[str, Any]:
    """Run one delivered job and store its result. Returns a small summary for Celery's state."""
    settings = get_settings()
    try:
        job = Job.model_validate(job_doc)
    except (ValidationError, TypeError) as e:
        return _invalid_job_message(job_doc, request, e)
    cfg = _config
    name = cfg.name if cfg else socket.gethostname()
    try:
        store = worker_store()
        if store.has_result(job.job_id):
            log.info("job %s already has a result: skipped (redelivery)", job.job_id)
            return {"job_id": job.job_id, "status": "skipped"}
        if store.job_field(job.job_id, "state") == "cancelled":
            return {"job_id": job.job_id, "status": "cancelled"}
        attempt = store.count_attempt(job.job_id)
    except (BrokerError, SoftTimeLimitExceeded) as e:
        # The results store is away: never run a job whose result could not be kept; requeue it. (A time
        # limit reached before the job started was spent waiting for Redis: the next delivery gets its own.)
        log.warning("results store unreachable before job %s (%s): requeued", job.job_id, e)
        time.sleep(2.0)  # no hot loop of deliveries while Redis is down
        raise Reject(f"results store unreachable: {e}", requeue=True) from e
    if attempt > settings.max_attempts:
        last = store.job_field(job.job_id, "worker") or "?"
        result = JobResult.failure(
            job,
            "failed",
            f"quarantined after {settings.max_attempts} attempts: each delivery ended without a result "
            f"(the job's process died; last worker {last})",
            worker=name,
            attempt=attempt,
        )
        _store_confirmed(store, result)
        log.error("job %s quarantined after %d attempts", job.job_id, settings.max_attempts)
        return {"job_id": job.job_id, "status": result.status}
    store.set_job_state(job.job_id, "running", worker=name, attempt=attempt, started_at=time.time(), pid=os.getpid())
    try:
        result = run_job(
            job,
            gpu_index=cfg.gpu_index if cfg else None,
            on_progress=_progress_writer(store, job.job_id),
            worker=name,
            attempt=attempt,
        )
    except SoftTimeLimitExceeded:  # raised outside the phases (run_job catches it inside them)
        result = JobResult.failure(job, "timeout", "soft time limit exceeded", worker=name, attempt=attempt)
    if result.status == "failed" and result.error and "SoftTimeLimitExceeded" in result.error.splitlines()[0]:
        # run_job sees Celery's soft-limit exception as a crash; it is the farm's time limit.
        limit = getattr(request, "timelimit", None)
        soft = settings.task_soft_time_limit
        if isinstance(limit, list | tuple) and len(limit) > 1 and limit[1] is not None:
            soft = limit[1]
        phase = result.error.split(":", 1)[0]
        result.status = "timeout"
        result.error = f"{phase}: soft time limit of {soft} s exceeded; the job stopped and freed its memory"
    _store_confirmed(store, result)
    return {"job_id": job.job_id, "status": result.status}


def _validation_summary(e: Exception) -> str:
    """A short, one-line account of why a job message failed validation."""
    if isinstance(e, ValidationError):
        parts = [f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg']}" for err in e.errors()[:3]]
        text = "; ".join(parts) + (f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else "")
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())[:300]


def _invalid_job_message(job_doc: Any, request: Any, e: Exception) -> dict[str, Any]:
    """A `farm.run_job` message whose job fails validation: a `failed` result when its job id names a
    job the farm submitted (the spec stored at submission), else logged and dropped (acknowledged:
    a malformed message never loops)."""
    info = getattr(request, "delivery_info", None) or {}
    queue = info.get("routing_key") or "?"
    why = _validation_summary(e)
    candidates = [job_doc.get("job_id") if isinstance(job_doc, dict) else None, getattr(request, "id", None)]
    ids = [c for c in candidates if isinstance(c, str) and JOB_ID_RE.fullmatch(c)]
    try:
        store = worker_store()
        for job_id in dict.fromkeys(ids):
            raw = store.job_field(job_id, "job")
            try:
                stored = Job.model_validate_json(raw or "", context=STORED)
            except ValueError:
                continue
            if stored.job_id != job_id:
                continue
            if store.has_result(job_id):  # the real message already ran: keep its result and state
                log.error("queue %s: job %s: dropped a message that fails validation (%s)", queue, job_id, why)
                return {"job_id": job_id, "status": "skipped"}
            name = _config.name if _config else socket.gethostname()
            error = f"the job's message failed validation on the worker: {why}"
            _store_confirmed(store, JobResult.failure(stored, "failed", error, worker=name))
            log.error("queue %s: job %s: its message fails validation (%s): stored as failed", queue, job_id, why)
            return {"job_id": job_id, "status": "failed"}
    except BrokerError as ex:
        log.warning("results store unreachable for a malformed job message (%s): requeued", ex)
        time.sleep(2.0)  # no hot loop of deliveries while Redis is down
        raise Reject(f"results store unreachable: {ex}", requeue=True) from ex
    log.error("queue %s: dropped a job message that fails validation (%s): no job of this farm to fail", queue, why)
    return {"job_id": None, "status": "rejected"}


def _store_outcome(job_doc: Any, status: str, error: str) -> None:
    """Store a result for a job that ended outside run_job (never raises: called from hooks)."""
    try:
        job = Job.model_validate(job_doc)
        store = worker_store()
        attempt = int(store.job_field(job.job_id, "attempts") or 1)
        name = _config.name if _config else socket.gethostname()
        result = JobResult.failure(job, status, error, worker=name, attempt=attempt)  # type: ignore[arg-type]
        store.put_result(result)  # NX: a result already stored wins
        store.set_job_state(job.job_id, "done", status=status, worker=name)
    except Exception as e:
        log.error("could not store the %s of a job: %s", status, e)


def store_hard_timeout(job_doc: Any, exc: BaseException) -> None:
    """In the worker's parent, after a hard time limit killed the job's process: store `timeout`."""
    _store_outcome(job_doc, "timeout", f"hard time limit exceeded ({exc}): the job's process was killed and replaced")


def store_crash(job_doc: Any, exc: BaseException) -> None:
    """The task itself raised (a farm bug, not the job): store `failed` rather than lose the job."""
    _store_outcome(job_doc, "failed", f"worker error outside the job: {type(exc).__name__}: {exc}")


# -- the task ---------------------------------------------------------------------------------------
class FarmRequest(Request):
    """Celery's request for the job task, except for a hard time limit on a delivery Celery cancelled.

    After a connection loss Celery cancels a running job whose message it can no longer acknowledge
    (`worker_cancel_long_running_tasks_on_connection_loss`): it terminates the job's process and the
    message goes back to the queue. The pool may still fire that delivery's hard time limit before it
    sees the process gone (a worker cut off from Redis fires every overdue timer at once when the link
    returns); storing `timeout` then would give the job a result for a time limit the connection loss
    consumed, and its redelivery would be skipped. Such a limit is only logged: nothing is stored or
    acknowledged, and the next delivery runs the job with its own full limit.
    """

    farm_cancelled = False

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        self.farm_cancelled = bool(self.time_start)  # Celery terminates the job only once it started
        super().cancel(pool, signal=signal, emit_retry=emit_retry)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft and self.farm_cancelled:
            log.warning(
                "job %s: hard time limit (%s s) of a delivery cancelled after a connection loss: not stored, "
                "the job runs again when its message is redelivered",
                self.id,
                timeout,
            )
            return
        super().on_timeout(soft, timeout)


class FarmTask(Task):
    """The job task. `on_failure` also runs in the worker's parent when a hard time limit kills
    the job's process: the job is then stored as `timeout` before the message is acknowledged
    (not for a delivery Celery had cancelled: `FarmRequest`)."""

    Request = FarmRequest

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job = args[0] if args else kwargs.get("job")
        if isinstance(exc, TimeLimitExceeded):
            store_hard_timeout(job, exc)
        else:  # a bug outside run_job: the message is acknowledged, so keep a `failed` result
            store_crash(job, exc)


@shared_task(name=TASK_NAME, bind=True, base=FarmTask)
def run_job_task(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    """Validate the job again, run it with the core engine, store its result (then ack)."""
    return execute_job(job, self.request)


# -- start-up -------------------------------------------------------------------------------------
def _check_credentials() -> None:
    """Refuse at once when Redis rejects the credentials; a Redis that is down is waited for."""
    try:
        worker_store().ping()
    except BrokerUnavailable as e:
        log.warning("Redis is not reachable yet (%s): the worker keeps retrying", e)


def run_worker(config: WorkerConfig, loglevel: str = "info") -> None:
    """Run a Celery worker for `config` in this process until it is stopped (blocks)."""
    global _config
    _config = config
    # NVML numbers GPUs by PCI bus; CUDA by default numbers them fastest first. Make CUDA use the
    # PCI order too (before torch initialises CUDA in a job process), so `--gpu N`, the tag read
    # from NVML and the `cuda:N` the job runs on are the same physical GPU.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    settings = get_settings()
    app = get_app()  # ConfigError for bad limits, BrokerError without a Redis URL
    install_message_guard(app, config.queues)  # an entry it cannot decode is dropped, never fatal
    _check_credentials()
    # torch and the engine were imported with this module, once, so that forked job processes start
    # warm. Importing torch does not initialise CUDA; nothing in this process ever calls into CUDA.
    beat: dict[str, Heartbeat] = {}

    def _ready(**_: Any) -> None:
        hb = Heartbeat(config, worker_store(), settings)
        hb.start()
        beat["hb"] = hb
        log.info("worker %s serving %s", config.name, ",".join(config.queues))

    def _received(request: Any = None, **_: Any) -> None:
        if "hb" in beat and request is not None:
            beat["hb"].note_received(request.id)

    def _shutdown(**_: Any) -> None:
        if "hb" in beat:
            beat.pop("hb").stop()

    signals.worker_ready.connect(_ready, weak=False)
    signals.task_received.connect(_received, weak=False)
    signals.worker_shutdown.connect(_shutdown, weak=False)
    argv = [
        "worker",
        "-n",
        f"{config.name}@{config.host}",
        "-Q",
        ",".join(config.queues),
        "-c",
        str(config.concurrency),
        "-P",
        "prefork",
        "-O",
        "fair",
        "--loglevel",
        loglevel.upper(),
        *WORKER_EVENT_FLAGS,
    ]
    if config.max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(config.max_tasks_per_child)]
    app.worker_main(argv)
