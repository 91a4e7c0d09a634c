"""The Celery app: configuration that keeps long jobs from being lost or run twice, and sending jobs.

Settings follow docs/reliability.md: JSON only (a pickle message is refused), late acks,
reject on worker lost, prefetch 1, time limits below a visibility timeout set in every place Celery
and kombu read it, connection retry forever on start-up, long tasks cancelled on connection loss,
successful tasks deduplicated. Celery keeps its task state in process memory (see make_app); the
results themselves live in the farm's own keys (`farm.results.store`).

Queues (named by `farm.spec.queue_for`): a job goes to `job.queue` (`cpu`, `cuda`, `cuda.h100`,
`cpu.<machine>`); small farm tasks (`farm.fire_schedule`) go to `control`, which every worker
consumes. The tasks are declared where their work is, with `shared_task`: `farm.run_job` in
`farm.cluster.worker`, `farm.fire_schedule` in `farm.nightly.schedule`; the app lists those modules
in Celery's `include`, so a worker imports them when it starts, while a client, which sends by name,
never does (and this module imports neither).
"""

from __future__ import annotations

import functools
import logging

from celery import Celery
from kombu.exceptions import OperationalError

from farm.cluster.embedded import resolve_redis_url
from farm.errors import BrokerError, ConfigError
from farm.settings import Settings, get_settings
from farm.spec import CONTROL_QUEUE, Job

log = logging.getLogger(__name__)

TASK_NAME = "farm.run_job"
SCHEDULE_TASK_NAME = "farm.fire_schedule"
TASK_MODULES = ("farm.cluster.worker", "farm.nightly.schedule")  # Celery `include`: imported by workers
RESULT_EXPIRES_S = 7 * 24 * 3600  # Celery task state only; results live in farm keys without expiry
CELERY_STATE_BACKEND = "cache+memory://"  # see make_app: Celery's task state never goes to Redis
HARD_LIMIT_GRACE_S = 30.0  # a job's own time limit: the hard kill comes this long after the soft one


def check_limits(settings: Settings) -> None:
    """Refuse a configuration where a running job could be redelivered (hard limit >= visibility)."""
    if not settings.task_soft_time_limit < settings.task_time_limit < settings.visibility_timeout:
        raise ConfigError(
            f"time limits must satisfy soft ({settings.task_soft_time_limit} s) < hard "
            f"({settings.task_time_limit} s) < visibility timeout ({settings.visibility_timeout} s): "
            "otherwise Redis hands a still-running job to a second worker"
        )


def job_time_limits(spec_limit_s: float | None, settings: Settings) -> tuple[float, float]:
    """(soft, hard) limits in seconds for one job: the spec's own limit, capped by the settings."""
    soft, hard = settings.task_soft_time_limit, settings.task_time_limit
    if spec_limit_s is not None and spec_limit_s < soft:
        soft = spec_limit_s
        hard = min(hard, soft + max(HARD_LIMIT_GRACE_S, 0.1 * soft))
    return soft, hard


def make_app(settings: Settings | None = None, broker_url: str | None = None) -> Celery:
    """A configured Celery app for these settings (URL from FARM_REDIS_URL or the embedded farm)."""
    settings = settings or get_settings()
    check_limits(settings)
    if broker_url is None:
        broker_url = resolve_redis_url(settings)
    # Celery's own task state lives in process memory, never in Redis: the farm reads none of it (results
    # are farm keys, written before the ack). With Redis as the backend a Redis crash lost the running job:
    # Celery cancels it on connection loss, Request._announce_cancelled raises writing RETRY to the dead
    # backend, and the job is then treated as revoked and its message acknowledged (tests/test_faults.py
    # test_kill9_redis). Kept in memory, the cancel completes and the message stays unacknowledged until
    # the visibility timeout hands it back.
    app = Celery(
        "farm", broker=broker_url, backend=CELERY_STATE_BACKEND, include=list(TASK_MODULES), set_as_current=True
    )
    vt = int(settings.visibility_timeout)
    # kombu looks for messages past the visibility timeout every interval x throttle seconds (default
    # 10 x 10): scan on every 10 s sweep so that a dead worker's job comes back soon after the timeout.
    transport = {"visibility_timeout": vt, "unacked_restore_throttle": 1}
    app.conf.update(
        # JSON only: pickle would let anyone who can write to Redis run code on the workers.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Nothing lost: ack after the result is stored; a killed job process requeues its message.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_timeout=True,  # the parent stored `timeout` first (FarmTask.on_failure)
        worker_prefetch_multiplier=1,
        # Soft < hard < visibility timeout, the last in every place it is read (celery#7651, #9339).
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=vt,
        # Survive a broker that starts late or restarts.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Inert with the in-memory backend (not persistent); the task skips a job whose farm result exists.
        worker_deduplicate_successful_tasks=True,
        result_expires=RESULT_EXPIRES_S,
        result_persistent=True,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        task_routes={SCHEDULE_TASK_NAME: {"queue": CONTROL_QUEUE}},
        broker_connection_timeout=5,
    )
    return app


@functools.lru_cache(maxsize=1)
def get_app() -> Celery:
    """The process's Celery app, built once from `get_settings()` (tests: `get_app.cache_clear()`)."""
    return make_app(get_settings())


def enqueue(app: Celery, job: Job, settings: Settings) -> None:
    """Send one `Job` to its queue; its job id is the Celery task id (dedup, revoke, tracing)."""
    # Without a limit in the spec the worker's own settings apply (it knows its visibility timeout).
    limits: dict[str, float] = {}
    if job.spec.time_limit_s is not None:
        soft, hard = job_time_limits(job.spec.time_limit_s, settings)
        limits = {"soft_time_limit": soft, "time_limit": hard}
    try:
        app.send_task(
            TASK_NAME,
            args=[job.model_dump(mode="json")],
            task_id=job.job_id,
            queue=job.queue,
            **limits,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        )
    except OperationalError as e:
        raise BrokerError(f"cannot enqueue job {job.job_id} on queue {job.queue!r}: {e}") from None
