"""The Celery app: configuration that keeps long jobs from being lost or run twice, and sending jobs.

Settings follow docs/reliability.md: JSON only (a pickle message is refused), late acks,
reject on worker lost, prefetch 1, time limits below a visibility timeout set in every place Celery
and kombu read it, connection retry forever on start-up, long tasks cancelled on connection loss,
successful tasks deduplicated. Celery keeps its task state in process memory (see make_app); the
results themselves live in the farm's own keys (`farm.results.store`). Task events are sent (Flower,
`celery events`). A worker drops, with one log line, a queue entry it cannot decode instead of
exiting (`GuardedChannel`, installed by `install_message_guard`).

Queues (named by `farm.spec.queue_for`): a job goes to `job.queue` (`cpu`, `cuda`, `cuda.h100`,
`cpu.<machine>`); small farm tasks (`farm.fire_schedule`) go to `control`, which every worker
consumes. The tasks are declared where their work is, with `shared_task`: `farm.run_job` in
`farm.cluster.worker`, `farm.fire_schedule` in `farm.nightly.schedule`; the app lists those modules
in Celery's `include`, so a worker imports them when it starts, while a client, which sends by name,
never does (and this module imports neither).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Container, Iterable
from queue import Empty
from typing import Any, ClassVar

from celery import Celery
from kombu.exceptions import OperationalError
from kombu.serialization import registry
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

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
# kombu's lock around a sweep for expired messages; it outlives a worker (or a Redis) that dies holding it
# by this long, during which nothing is redelivered (kombu's default, 300 s: tests/test_chaos.py saw it).
UNACKED_MUTEX_EXPIRE_S = 10


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


# -- messages a worker cannot decode -------------------------------------------------------------------
def _envelope_problem(payload: Any) -> str | None:
    """Why kombu could not build a message from this decoded queue entry (None: it can)."""
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not a kombu message"
    props = payload.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("delivery_tag"), str) or not props["delivery_tag"]:
        return "no delivery tag"
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "no delivery info"
    if props.get("body_encoding") not in (None, "base64", "utf-8"):
        return "unknown body encoding"
    if not isinstance(payload.get("body"), str | None) or not isinstance(payload.get("headers"), dict | None):
        return "body or headers of the wrong type"
    if not all(isinstance(payload.get(k), str | None) for k in ("content-type", "content-encoding")):
        return "content type or encoding of the wrong type"
    return None


def _task_problem(payload: dict[str, Any], body: Any, task_names: Container[str]) -> str | None:
    """Why a worker could not run this message as a task (Celery protocol 2, JSON; None: it can)."""
    task = (payload.get("headers") or {}).get("task")
    if not isinstance(task, str):
        return "no task name (not a Celery protocol 2 task message)"
    if task not in task_names:
        return f"task {task[:80]!r} is not one this worker runs"
    content_type = payload.get("content-type")
    if content_type != "application/json":  # accept_content is JSON only: never decoded (pickle runs code)
        name = registry.type_to_name.get(content_type, "unknown")
        return f"content type {str(content_type)[:80]!r} ({name}) refused: JSON only"
    try:
        args = json.loads(body)
    except (TypeError, ValueError, UnicodeDecodeError):
        return "body is not JSON"
    if not (isinstance(args, list) and len(args) == 3 and [type(a) for a in args] == [list, dict, dict]):
        return "body is not [args, kwargs, embed]"
    return None


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that an entry it cannot deliver is dropped, not fatal.

    kombu decodes a queue entry before anything that handles decode errors sees it
    (`Consumer.on_decode_error` is never reached), so one non-JSON entry, or JSON that is not a kombu
    message, ends the whole worker with `Unrecoverable error`. Here every entry popped from a task
    queue is checked first: JSON, a kombu envelope, and (on the worker's task queues) a JSON Celery
    protocol 2 message for a task this worker runs. One that fails is logged (one line naming the
    queue) and dropped: BRPOP already removed it, and it is never delivered, so it is never acked
    or redelivered. `install_message_guard` puts this class into kombu's Redis transport.
    """

    task_queues: frozenset[str] = frozenset()  # queues whose entries must be task messages
    app: Celery | None = None  # whose registered tasks a task message must name
    # Entries BRPOP removed from their queue that kombu could not then record in `unacked` (Redis went
    # away in between): (queue key, raw entry), pushed back by the next `_brpop_start` (process-wide: a
    # connection loss replaces the channel).
    undelivered: ClassVar[list[tuple[str, Any]]] = []

    def _checked(self, raw: Any, queue: str) -> dict[str, Any] | None:
        """The decoded entry, or None after logging why it was dropped."""
        problem: str | None
        payload: Any = None
        try:
            payload = json.loads(bytes_to_str(raw))
            problem = _envelope_problem(payload)
        except (TypeError, ValueError, UnicodeDecodeError, RecursionError):
            problem = "not JSON"
        if problem is None:
            try:
                body = self.Message(payload, channel=self).body  # what kombu does on delivery
            except Exception:  # any way a malformed envelope breaks kombu's Message
                problem = "body does not decode"
            else:
                if queue in self.task_queues and self.app is not None:
                    problem = _task_problem(payload, body, self.app.tasks)
        if problem is None:
            return dict(payload)
        size = len(raw) if isinstance(raw, bytes | str) else 0
        log.error("queue %s: dropped a message this worker cannot decode: %s (%d bytes)", queue, problem, size)
        return None

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own _brpop_read, with the entry checked before delivery.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnect on the next poll, as kombu does
                raise
            if not dest__item:
                raise Empty()
            key, item = dest__item
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._checked(item, dest)
            if payload is None:
                raise Empty()
            try:
                self.connection._deliver(payload, dest)  # kombu records it in `unacked` first
            except self.connection_errors:
                # BRPOP removed the entry, and Redis went away before kombu wrote it into `unacked`: it
                # exists only here now. Kept, and put back on its queue once Redis answers again; dropped,
                # the job would never run (tests/test_chaos.py found one lost to a Redis restart).
                GuardedChannel.undelivered.append((bytes_to_str(key), item))
                log.warning("queue %s: a message taken as Redis went away is kept to be put back", dest)
                raise
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own reset (its annotation says bool)
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6
            if flush is not None:
                flush()

    def _brpop_start(self, timeout: float | None = None) -> None:
        # Put back what a connection loss left undelivered (see _brpop_read), then kombu's own BRPOP.
        while GuardedChannel.undelivered:
            key, item = GuardedChannel.undelivered[0]
            try:
                with self.conn_or_acquire() as client:
                    client.rpush(key, item)  # the end BRPOP takes from: it is delivered next
            except self.connection_errors:
                break  # Redis still away: kept for the next poll
            GuardedChannel.undelivered.pop(0)
            log.warning("queue %s: put back a message taken as Redis went away", key)
        super()._brpop_start(timeout)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        # kombu's own _get (consumers without an event loop), with the entry checked.
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    payload = self._checked(item, queue)
                    if payload is None:
                        raise Empty()
                    return payload
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        # Broadcasts (control commands, events) arrive as JSON already; check the envelope.
        problem = _envelope_problem(message)
        if problem is not None:
            log.error("broadcast %s: dropped a message this worker cannot decode: %s", exchange, problem)
            raise Empty()
        return bool(super()._deliver_fanout_message(message, exchange))


def install_message_guard(app: Celery, task_queues: Iterable[str]) -> None:
    """Make this process's Redis transport drop undecodable entries (`GuardedChannel`): call it in a
    worker, before it connects, with the queues it consumes tasks from."""
    GuardedChannel.task_queues = frozenset(task_queues)
    GuardedChannel.app = app  # its tasks are read on delivery: the worker imports them after this call
    kombu_redis.Transport.Channel = GuardedChannel


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
    # A sweep takes milliseconds; its lock must not hold redelivery up for minutes when its holder dies.
    transport = {
        "visibility_timeout": vt,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
    }
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
        # Events for Flower and `celery events` (docs/deploy.md): every task's sent/received/started/
        # succeeded/failed, and the workers' heartbeats (`farm worker` runs with them on).
        worker_send_task_events=True,
        task_send_sent_event=True,
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
