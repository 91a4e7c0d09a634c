"""The controller side of the farm: submit runs, follow them, cancel them, list live workers.

A run is recorded in Redis (`farm.results.store`) before its jobs are enqueued, one job per spec and device;
a sweep (a list of specs) is one run. Wildcard device tags (`cuda:*`, `cpu:*`) fan out to every
narrower tag a live worker serves now. Nothing here waits forever on a job that no live worker can
serve: `wait` returns when every job either has a result or sits on a queue nobody consumes.
Workers that are still starting get a grace period (`await_service`), and a queue that loses its
last worker mid-run (a heartbeat expired across a network partition, a worker restarting) gets
`lost_after` seconds to come back before `wait` counts its jobs unserved.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from farm.cluster.embedded import resolve_redis_url, results_url
from farm.cluster.queue import enqueue, make_app
from farm.errors import BrokerError, BrokerUnavailable, JobTimeout, NotFoundError, SpecError
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import Settings, get_settings
from farm.spec import BenchSpec, Job, SkippedDevice, check_run_id, new_run_id, parse_device_tag, queue_for

REDIS_LOST_S = 30.0  # how long `wait` rides out a Redis that went away before it gives up
UNSERVED_AFTER_S = 60.0  # how long `submit --wait` waits for a worker to start serving a queue
WORLD_QUEUE_RE = re.compile(r"\.x[0-9]+$")  # the suffix of a queue for jobs over several devices (spec.queue_for)
LOST_AFTER_S = 60.0  # how long `wait` waits for a queue whose workers vanished mid-run to be served again


@dataclass
class Submission:
    """What `submit` did: the run, its jobs, and the queues that no live worker serves."""

    run_id: str
    jobs: list[Job]
    created: bool
    unserved: list[str] = field(default_factory=list)


@dataclass
class JobView:
    """One job of a run as `status` and `--wait` show it."""

    job_id: str
    device: str
    queue: str
    state: str  # queued, running, done, cancelled
    served: bool  # a live worker consumes its queue
    status: str | None = None  # the stored result's status, once there is one
    worker: str = ""
    phase: str = ""
    done: int = 0
    total: int = 0
    attempts: int = 0

    @property
    def finished(self) -> bool:
        return self.status is not None

    @property
    def unserved(self) -> bool:
        return not self.finished and not self.served


# One store (redis-py connection pool) per URL and one Celery app per broker configuration, kept
# for the life of the process: opening a connection and building an app per submit cost tens of
# milliseconds of submit-to-start latency. Both reconnect by themselves after a Redis restart.
_STORES: dict[tuple[str, str], ResultStore] = {}
_APPS: dict[tuple[str, str], Celery] = {}


def store_for(settings: Settings | None = None) -> ResultStore:
    """The results store of the configured Redis (FARM_REDIS_URL / FARM_RESULTS_URL or embedded)."""
    settings = settings or get_settings()
    key = (results_url(settings), settings.key_prefix)
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = ResultStore.from_url(*key)
    store.ping()
    return store


def _app_for(settings: Settings) -> Celery:
    """The Celery app that sends jobs for these settings, built once per process."""
    key = (resolve_redis_url(settings), settings.model_dump_json())
    app = _APPS.get(key)
    if app is None:
        app = _APPS[key] = make_app(settings, broker_url=key[0])
    return app


def live_workers(settings: Settings | None = None, store: ResultStore | None = None) -> list[dict[str, Any]]:
    """Workers whose heartbeat has not expired: name, host, tags, queues, device, job, last beat."""
    store = store or store_for(settings)
    out = []
    for n, raw in store.worker_docs():
        out.append(
            {
                "name": n,
                "host": raw.get("host", ""),
                "machine": raw.get("machine", ""),
                "device": raw.get("device", ""),
                "gpu": raw.get("gpu_index") or None,
                "tags": json.loads(raw.get("tags") or "[]"),
                "queues": json.loads(raw.get("queues") or "[]"),
                "concurrency": int(raw.get("concurrency") or 1),
                "job": raw.get("job") or None,
                "pid": int(raw.get("pid") or 0),
                "started_at": float(raw.get("started_at") or 0),
                "last_heartbeat": float(raw.get("updated_at") or 0),
                "gpus": json.loads(raw.get("gpu_names") or "[]"),
                "max_world_size": int(raw.get("max_world_size") or 1),
            }
        )
    return out


def served_queues(workers: Sequence[dict[str, Any]]) -> set[str]:
    return {q for w in workers for q in w["queues"]}


def expand_wildcards(spec: BenchSpec, workers: Sequence[dict[str, Any]]) -> BenchSpec:
    """Replace `cuda:*` / `cpu:*` by every narrower tag a live worker serves (one job per tag)."""
    if not any(d.endswith(":*") for d in spec.devices):
        return spec
    queues = served_queues(workers)
    devices: list[str] = []
    for tag in spec.devices:
        kind, narrow = parse_device_tag(tag)
        if narrow != "*":
            devices.append(tag)
            continue
        # `<kind>.<tag>` queues only: `cuda.x2` / `cuda.h100.x2` (jobs over several devices) name no tag.
        narrow_queues = [q for q in queues if q.startswith(f"{kind}.") and not WORLD_QUEUE_RE.search(q)]
        found = sorted({q.split(".", 1)[1] for q in narrow_queues})
        if not found:
            raise SpecError("devices", f"{tag!r} matches no live worker: no worker serves a {kind}.<tag> queue now")
        devices.extend(f"{kind}:{n}" for n in found)
    return spec.model_copy(update={"devices": tuple(dict.fromkeys(devices))})


def plan_jobs(specs: Sequence[BenchSpec], run_id: str) -> list[Job]:
    """All jobs of a run: each spec's jobs, numbered once across the run so ids stay unique."""
    jobs: list[Job] = []
    for spec in specs:
        for job in spec.expand(run_id):
            jobs.append(job.model_copy(update={"job_id": f"{run_id}-{len(jobs):03d}"}))
    return jobs


def submit(
    specs: BenchSpec | Sequence[BenchSpec],
    *,
    run_id: str | None = None,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    settings: Settings | None = None,
    skipped: Sequence[SkippedDevice] = (),
) -> Submission:
    """Record a run and enqueue its jobs. With an existing `run_id`, nothing is enqueued again.
    `skipped`: the devices asked for that the embedded farm left out (`embedded.ensure_local`),
    kept in the run's record."""
    settings = settings or get_settings()
    store = store_for(settings)
    spec_list = [specs] if isinstance(specs, BenchSpec) else list(specs)
    if not spec_list:
        raise SpecError("spec", "nothing to submit: no spec given")
    workers = live_workers(settings, store)
    served = served_queues(workers)
    if run_id is not None:
        check_run_id(run_id)
        try:
            jobs = store.stored_jobs(run_id)
            return Submission(run_id, jobs, False, _unserved_queues(jobs, served))
        except NotFoundError:
            pass
    spec_list = [expand_wildcards(s, workers) for s in spec_list]
    run_id = run_id or new_run_id()
    jobs = plan_jobs(spec_list, run_id)
    # The run is recorded first: a job that finishes before the last one is sent still has its run.
    store.create_run(run_id, spec_list, jobs, name=name, tags=tags, skipped=skipped)
    app = _app_for(settings)
    for job in jobs:
        enqueue(app, job, settings)
    return Submission(run_id, jobs, True, _unserved_queues(jobs, served))


DRY_RUN_ID = "dry-run"  # the run id a plan's jobs carry: a real submission gets a fresh one


@dataclass
class Plan:
    """What `submit` would queue, queueing nothing (`farm submit --dry-run`, `farm sweep --dry-run`)."""

    jobs: list[Job]
    unserved: list[str]  # queues no live worker serves now ([] when workers are unknown)
    workers: int | None  # live workers seen; None when Redis could not be reached
    notes: list[str] = field(default_factory=list)


def plan(specs: BenchSpec | Sequence[BenchSpec], *, settings: Settings | None = None) -> Plan:
    """The jobs and queues `submit` would make of specs, with wildcards expanded against the live
    workers when Redis can be reached (left as given, with a note, when not). Writes nothing and
    never starts the embedded farm. SpecError when a wildcard matches no live worker (as `submit`)."""
    spec_list = [specs] if isinstance(specs, BenchSpec) else list(specs)
    if not spec_list:
        raise SpecError("spec", "nothing to submit: no spec given")
    notes: list[str] = []
    try:
        workers: list[dict[str, Any]] | None = live_workers(settings)
    except BrokerError as e:
        workers = None
        notes.append(f"live workers unknown ({e}): wildcards not expanded, queues not checked")
    if workers is not None:
        spec_list = [expand_wildcards(s, workers) for s in spec_list]
    jobs = plan_jobs(spec_list, DRY_RUN_ID)
    unserved = _unserved_queues(jobs, served_queues(workers)) if workers is not None else []
    return Plan(jobs, unserved, None if workers is None else len(workers), notes)


def _unserved_queues(jobs: Sequence[Job], served: set[str]) -> list[str]:
    return list(dict.fromkeys(j.queue for j in jobs if j.queue not in served))


def job_views(run_id: str, store: ResultStore, workers: Sequence[dict[str, Any]] | None = None) -> list[JobView]:
    """Every job of a run with its state, progress and (when stored) result status."""
    workers = live_workers(store=store) if workers is None else workers
    served = served_queues(workers)
    views = []
    for job_id, h, status in store.job_rows(run_id):
        queue = h.get("queue") or queue_for(h.get("device", "cpu"))
        views.append(
            JobView(
                job_id=job_id,
                device=h.get("device", "?"),
                queue=queue,
                state=h.get("state", "queued")
                if status is None
                else ("cancelled" if status == "cancelled" else "done"),
                served=queue in served,
                status=status,
                worker=h.get("worker", ""),
                phase=h.get("phase", ""),
                done=int(h.get("done") or 0),
                total=int(h.get("total") or 0),
                attempts=int(h.get("attempts") or 0),
            )
        )
    return views


def await_service(
    run_id: str,
    *,
    unserved_after: float = UNSERVED_AFTER_S,
    settings: Settings | None = None,
    poll_s: float = 0.5,
    on_waiting: Callable[[list[str], float], None] | None = None,
) -> list[str]:
    """Wait up to `unserved_after` seconds for a live worker on every queue of the run's pending jobs.

    Calls `on_waiting(queues, seconds left)` once, when the first poll finds queues unserved.
    Returns the queues still unserved when the grace ends ([] as soon as every one is served).
    """
    store = store_for(settings)
    deadline = time.monotonic() + max(0.0, unserved_after)
    told = False
    while True:
        try:
            views = job_views(run_id, store)
        except BrokerUnavailable:
            views = None  # Redis restarting: the grace keeps running
        if views is not None:
            queues = list(dict.fromkeys(v.queue for v in views if v.unserved))
            if not queues:
                return []
            if time.monotonic() >= deadline:
                return queues
            if not told and on_waiting is not None:
                on_waiting(queues, deadline - time.monotonic())
            told = True
        elif time.monotonic() >= deadline:
            raise BrokerError(f"lost Redis while waiting for workers of run {run_id}")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def wait(
    run_id: str,
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
    poll_s: float = 0.5,
    on_update: Callable[[list[JobView]], None] | None = None,
    stop_when_unserved: bool = True,
    lost_after: float = LOST_AFTER_S,
) -> list[JobResult]:
    """Follow a run until every job has a result, or (by default) every job left is unserved.

    A job counts as unserved at once if its queue had no live worker when the wait began, and
    only `lost_after` seconds after its queue was last seen served otherwise (a worker whose
    heartbeat lapsed in a network partition, or that restarts, gets that long to come back).
    Returns the stored results (jobs left unserved have none: compare with the run's jobs).
    Raises JobTimeout after `timeout` seconds with jobs still pending.
    """
    store = store_for(settings)
    deadline = None if timeout is None else time.monotonic() + timeout
    lost_since: float | None = None
    seen_served: dict[str, float] = {}  # queue -> when a live worker last served it
    while True:
        try:
            views = job_views(run_id, store)
            lost_since = None
        except BrokerUnavailable as e:
            # Redis restarting (its data is on disk): keep following for a while, then say so.
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > REDIS_LOST_S:
                raise BrokerError(f"lost Redis while following run {run_id}: {e}") from None
            time.sleep(1.0)
            continue
        now = time.monotonic()
        seen_served.update((v.queue, now) for v in views if v.served)
        if on_update is not None:
            on_update(views)
        pending = [v for v in views if not v.finished]

        given_up = [v.unserved and now - seen_served.get(v.queue, -float("inf")) > lost_after for v in pending]
        if not pending or (stop_when_unserved and all(given_up)):
            return store.get_results([v.job_id for v in views if v.finished])
        if deadline is not None and time.monotonic() > deadline:
            raise JobTimeout(f"run {run_id}: {len(pending)} job(s) still pending after {timeout} s")
        time.sleep(poll_s)


def cancel(
    run_id: str, *, job_ids: Sequence[str] | None = None, settings: Settings | None = None
) -> tuple[list[str], list[str]]:
    """Cancel a run's queued jobs (or only `job_ids`): stored as `cancelled` and revoked.

    Returns (cancelled job ids, job ids left running). A worker that later receives a cancelled
    job finds its result and skips it; running jobs are not interrupted.
    """
    settings = settings or get_settings()
    store = store_for(settings)
    jobs = {j.job_id: j for j in store.stored_jobs(run_id)}
    views = job_views(run_id, store)
    cancelled, running = [], []
    for v in views:
        if v.finished or (job_ids is not None and v.job_id not in job_ids):
            continue
        if v.state == "running" and v.served:
            running.append(v.job_id)
            continue
        res = JobResult.failure(jobs[v.job_id], "cancelled", "cancelled before it started (farm cancel)")
        if store.put_result(res):
            store.set_job_state(v.job_id, "cancelled")
            cancelled.append(v.job_id)
    if cancelled:
        _app_for(settings).control.revoke(cancelled)
    return cancelled, running
