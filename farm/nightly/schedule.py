"""Schedules: a sweep fired by cron (or every N seconds), stored in Redis, fired by `farm beat`.

Redis (the broker's): the schedule's hash, its firings and its judged runs, under keys that
`farm.results.store` names (`put_schedule`, `schedule_fires`, ...); the celery-redbeat entry that
makes `farm beat` fire it under the store's `redbeat_prefix`.

The sweep's content is stored, not its path: editing the file changes nothing until
`farm schedule add NAME ... --replace`. `farm beat` is Celery beat with the celery-redbeat
scheduler: its entries live in Redis (they survive restarts) and its Redis lock lets one beat
process fire at a time (a second one waits as a standby). Each firing sends the task
`farm.fire_schedule(name)` to the `control` queue; a worker runs `fire`, which submits the stored
sweep as one run with the run id `farm.nightly.sweep.nightly_run_id` (the sweep's name and the night, or
the interval's start), so a night that is fired twice (a manual `schedule run`, a beat restart)
still runs once: `controller.submit` creates nothing for an existing run id.

With `FARM_WEBHOOK_URL`, a firing also reports the schedule's finished earlier runs'
regressions (`notify_finished`, through `farm.nightly.webhook`); docs/sweeps.md has the details.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, shared_task
from celery.schedules import schedule
from redbeat import RedBeatSchedulerEntry
from redbeat.schedulers import ensure_conf

from farm.cluster.controller import store_for, submit
from farm.cluster.embedded import resolve_redis_url
from farm.cluster.queue import SCHEDULE_TASK_NAME, get_app
from farm.errors import BrokerError, FarmError, NotFoundError, SpecError
from farm.nightly.regress import check_run
from farm.nightly.sweep import NAME_RE, Sweep, daily_at_most, nightly_run_id, parse_cron, parse_sweep, resolve_wildcards
from farm.nightly.webhook import notify
from farm.results.store import ResultStore, redbeat_prefix
from farm.settings import Settings, get_settings, mask_url
from farm.spec import CONTROL_QUEUE

log = logging.getLogger(__name__)

MIN_EVERY_S = 1.0
MAX_EVERY_S = 366 * 86400.0  # a year and a day: beyond that, use cron


@dataclass(frozen=True)
class Schedule:
    """A stored schedule: when it fires and the sweep it submits."""

    name: str
    sweep: dict[str, Any]
    cron: str | None = None
    every_s: float | None = None
    source: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    next_at: datetime | None = None  # from the redbeat entry, when listed

    @property
    def when(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.every_s:g} s"

    @property
    def sweep_name(self) -> str:
        return str(self.sweep.get("name") or self.name)

    def beat_schedule(self, app: Celery) -> schedule:
        if self.cron:
            return parse_cron(self.cron, app)
        return schedule(run_every=timedelta(seconds=float(self.every_s or 0)), app=app)


@dataclass(frozen=True)
class Firing:
    """What one firing did."""

    schedule: str
    run_id: str
    created: bool
    jobs: int
    skipped: list[str]
    unserved: list[str]
    error: str = ""  # why nothing was submitted (the stored sweep no longer validates, Redis down)


# -- Redis and redbeat ------------------------------------------------------------------------
def redis_url(settings: Settings) -> str:
    return resolve_redis_url(settings)


def configure_redbeat(app: Celery, settings: Settings, url: str | None = None, retry: bool = False) -> Celery:
    """Point celery-redbeat at the farm's Redis, under the farm's key prefix; `retry`: ride out a
    Redis restart (beat) instead of failing at once (commands)."""
    app.conf.update(
        redbeat_redis_url=url or redis_url(settings),
        redbeat_key_prefix=redbeat_prefix(settings.key_prefix),
        redbeat_redis_options={"retry_period": -1} if retry else {},
        beat_scheduler="redbeat.RedBeatScheduler",
    )
    if hasattr(app, "redbeat_conf"):
        del app.redbeat_conf  # read again from the new configuration
    ensure_conf(app)
    return app


def _admin_app(settings: Settings) -> Celery:
    """A Celery app that only manages redbeat entries (no broker connection is made)."""
    url = redis_url(settings)
    app = Celery("farm-schedules", broker=url, set_as_current=False)
    return configure_redbeat(app, settings, url)


class ScheduleBook:
    """Add, list, get and remove schedules; the farm's hash and the redbeat entry move together."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = _admin_app(self.settings)
        url = self.app.conf.redbeat_redis_url
        self.store = ResultStore.from_url(url, self.settings.key_prefix)
        try:
            self.store.ping()
        except BrokerError as e:
            raise type(e)(f"Redis at {mask_url(url)}: {e}") from None

    def _entry_key(self, name: str) -> str:
        return str(self.app.redbeat_conf.key_prefix) + name

    def _entry(self, sched: Schedule) -> RedBeatSchedulerEntry:
        return RedBeatSchedulerEntry(
            name=sched.name,
            task=SCHEDULE_TASK_NAME,
            schedule=sched.beat_schedule(self.app),
            args=[sched.name],
            options={"queue": CONTROL_QUEUE},
            app=self.app,
            # The first firing is the next scheduled time, not "now" (redbeat's default).
            last_run_at=datetime.now(UTC),
        )

    def add(
        self,
        name: str,
        sweep: Sweep,
        *,
        cron: str | None = None,
        every_s: float | None = None,
        source: str = "",
        replace: bool = False,
    ) -> Schedule:
        """Store a schedule and its redbeat entry; an existing name needs `replace`."""
        if not NAME_RE.match(name):
            raise SpecError("name", f"{name!r} must use A-Z, a-z, 0-9, '.', '_', '-' (1-64 characters)")
        if (cron is None) == (every_s is None):
            raise SpecError("cron", "give exactly one of --cron or --every")
        if cron is not None:
            parse_cron(cron)
        if every_s is not None and not (math.isfinite(every_s) and MIN_EVERY_S <= every_s <= MAX_EVERY_S):
            # NaN compares false with everything: test that it lies inside, not that it is not outside
            raise SpecError(
                "every",
                f"must be at least {MIN_EVERY_S:g} s and at most {MAX_EVERY_S:g} s (a finite number), got {every_s:g}",
            )
        now = time.time()
        old = self.store.get_schedule(name)
        if old is not None and not replace:
            raise SpecError("name", f"schedule {name!r} exists; use --replace to overwrite it")
        sched = Schedule(
            name=name,
            sweep=sweep.as_document(),
            cron=cron,
            every_s=every_s,
            source=source,
            created_at=float(old["created_at"]) if old and old.get("created_at") else now,
            updated_at=now,
        )
        self.store.put_schedule(
            name,
            {
                "name": name,
                "cron": cron or "",
                "every_s": "" if every_s is None else repr(float(every_s)),
                "sweep": sched.sweep,
                "sweep_name": sweep.name,
                "source": source,
                "created_at": sched.created_at,
                "updated_at": now,
            },
        )
        entry = self._entry(sched)
        if replace:
            entry.delete()  # a new timetable starts from now
        entry.save()
        return sched

    def get(self, name: str) -> Schedule:
        raw = self.store.get_schedule(name)
        if not raw:
            raise NotFoundError(f"no schedule {name!r} (see `farm schedule list`)")
        return Schedule(
            name=raw["name"],
            sweep=json.loads(raw["sweep"]),
            cron=raw.get("cron") or None,
            every_s=float(raw["every_s"]) if raw.get("every_s") else None,
            source=raw.get("source", ""),
            created_at=float(raw.get("created_at") or 0),
            updated_at=float(raw.get("updated_at") or 0),
        )

    def all(self) -> list[Schedule]:
        """Every schedule, by name, with its next firing time from redbeat."""
        out = []
        for name in self.store.schedule_names():
            try:
                sched = self.get(name)
            except NotFoundError:
                continue
            try:
                due = RedBeatSchedulerEntry.from_key(self._entry_key(name), app=self.app).due_at
            except KeyError:
                due = None
            out.append(Schedule(**{**sched.__dict__, "next_at": due}))
        return out

    def remove(self, name: str) -> None:
        if self.store.get_schedule(name) is None:
            raise NotFoundError(f"no schedule {name!r} (see `farm schedule list`)")
        with contextlib.suppress(KeyError):
            RedBeatSchedulerEntry.from_key(self._entry_key(name), app=self.app).delete()
        self.store.delete_schedule(name)

    def last_tick(self, name: str) -> datetime | None:
        """When `farm beat` last fired the schedule (redbeat's last_run_at), if ever."""
        try:
            meta = RedBeatSchedulerEntry.load_meta(self._entry_key(name), app=self.app)
        except (KeyError, ValueError):
            return None
        tick = meta.get("last_run_at")
        return tick if isinstance(tick, datetime) else None

    def fires(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest firings of a schedule, newest first."""
        return self.store.schedule_fires(name, limit)

    def record(self, firing: Firing) -> None:
        self.store.record_fire(firing.schedule, {"at": time.time(), **firing.__dict__})


def notify_finished(book: ScheduleBook, name: str, settings: Settings) -> list[str]:
    """Judge the schedule's earlier runs that have finished and were not judged yet; POST their
    regressions to `FARM_WEBHOOK_URL` (a `suspect` one, measured while disturbed, is only logged: the
    regression, if any, is the next clean night's). Each run is judged once (a Redis set); returns their ids."""
    if not settings.webhook_url:
        return []
    store = store_for(settings)
    judged = []
    for f in book.fires(name, limit=10):
        run_id = f["run_id"]
        if not f["created"] or book.store.was_judged(name, run_id):
            continue
        jobs = store.get_run(run_id)["jobs"]
        if not jobs or not all(store.has_result(j) for j in jobs):
            continue  # still running: a later firing judges it
        if not book.store.mark_judged(name, run_id):
            continue  # another worker got there first
        results = store.get_results(jobs)
        history = store.query(spec_hashes=sorted({r.spec_hash for r in results}))
        verdicts = check_run(history, run_id)
        suspects = sum(v.kind == "suspect" for v in verdicts)
        if suspects:  # disturbed nights page nobody: the series' next clean night confirms or clears them
            log.info("schedule %s run %s: %d suspect result(s) not sent", name, run_id, suspects)
        notify(settings.webhook_url, verdicts)  # regressions only
        judged.append(run_id)
    return judged


AfterFire = Callable[[Firing, Settings], None]
# Called after every firing, in the process that fired (a worker serving `control`, or `farm schedule
# run`). Layers above register here what nightly cannot import: the CLI registers `farm publish`
# (`farm.reports.publish.install_publish_hook`, active when FARM_PUBLISH_DIR is set).
AFTER_FIRE: list[AfterFire] = []


def fire(
    name: str,
    *,
    settings: Settings | None = None,
    when: datetime | None = None,
    fresh: bool = False,
    from_beat: bool = False,
) -> Firing:
    """Submit a schedule's stored sweep as one run keyed by the night (or interval); record it.

    `from_beat`: the key comes from the tick beat last fired (redbeat's last_run_at), not from
    when a worker got round to the task, so a firing that waited in the queue keeps its night.
    """
    settings = settings or get_settings()
    book = ScheduleBook(settings)
    sched = book.get(name)
    sweep = parse_sweep(sched.sweep, default_name=name)
    when = when or (book.last_tick(name) if from_beat else None) or datetime.now(UTC)
    every = sched.every_s if sched.every_s else (None if daily_at_most(sched.cron or "0 0") else 60.0)
    run_id = nightly_run_id(sweep.name, when, every)
    if fresh:
        run_id = f"{sweep.name}-{when:%Y%m%dT%H%M%S}-manual"
    specs, notes = resolve_wildcards(sweep.specs, settings)
    sub = submit(specs, run_id=run_id, name=sweep.name, tags={"schedule": name}, settings=settings)
    firing = Firing(
        schedule=name,
        run_id=sub.run_id,
        created=sub.created,
        jobs=len(sub.jobs),
        skipped=sweep.problems + notes,
        unserved=list(sub.unserved),
    )
    book.record(firing)
    notify_finished(book, name, settings)
    for hook in AFTER_FIRE:
        try:
            hook(firing, settings)
        except Exception as e:  # the firing is recorded and its jobs queued: a failed hook must not undo that
            log.warning("schedule %s: after-firing hook %s failed: %s", name, getattr(hook, "__name__", hook), e)
    return firing


def fire_from_beat(name: str) -> dict[str, Any]:
    """The body of `farm.fire_schedule`: fire; a firing that cannot submit is recorded with its
    error (`farm schedule list` shows it), then raised so that the worker logs it too."""
    try:
        return fire(name, from_beat=True).__dict__
    except FarmError as e:
        with contextlib.suppress(FarmError, OSError):
            ScheduleBook().record(Firing(name, "", False, 0, [], [], error=str(e)))
        raise


@shared_task(name=SCHEDULE_TASK_NAME, ignore_result=True)
def fire_schedule(name: str) -> dict[str, Any]:
    """Celery task sent by `farm beat` (queue `control`): fire the named schedule."""
    return fire_from_beat(name)


def run_beat(settings: Settings | None = None, *, max_interval: float = 30.0, loglevel: str = "info") -> None:
    """Run `farm beat` in this process: Celery beat with the redbeat scheduler, until stopped.

    redbeat's lock (`<prefix>:redbeat::lock`) lets one beat fire at a time; another waits for it.
    A beat that stops cleanly releases the lock; one that dies holds it for `5 x max_interval`.
    """
    settings = settings or get_settings()
    app = configure_redbeat(get_app(), settings, retry=True)
    app.conf.update(beat_max_loop_interval=max_interval, redbeat_lock_timeout=max(5 * max_interval, 10))
    app.Beat(max_interval=max_interval, scheduler="redbeat.RedBeatScheduler", loglevel=loglevel).run()
