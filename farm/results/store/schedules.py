"""Schedules (`SchedulesMixin`): a schedule's hash and the set of names, its newest firings
(`FIRES_KEPT`) and the runs whose regressions were sent to the webhook (judged marks). The
celery-redbeat entry that fires a schedule lives under `redbeat_prefix` (`farm.nightly.schedule`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from farm.results.store.base import StoreBase
from farm.results.store.codec import _flat
from farm.results.store.connection import _redis

FIRES_KEPT = 200  # firings kept per schedule


class SchedulesMixin(StoreBase):
    """Schedules, their firings and their judged runs."""

    @_redis
    def put_schedule(self, name: str, doc: Mapping[str, Any]) -> None:
        """Store (replace) a schedule's hash and list its name."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._schedule_key(name))
        pipe.hset(self._schedule_key(name), mapping=_flat(doc))
        pipe.sadd(self._schedules_key(), name)
        pipe.execute()

    @_redis
    def get_schedule(self, name: str) -> dict[str, str] | None:
        raw = self.r.hgetall(self._schedule_key(name))
        return dict(raw) if raw else None

    @_redis
    def schedule_names(self) -> list[str]:
        return sorted(self.r.smembers(self._schedules_key()))

    @_redis
    def delete_schedule(self, name: str) -> bool:
        """Remove a schedule with its firings and judged runs; False when there was none."""
        if not self.r.exists(self._schedule_key(name)):
            return False
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._schedule_key(name), self._fires_key(name), self._judged_key(name))
        pipe.srem(self._schedules_key(), name)
        pipe.execute()
        return True

    @_redis
    def schedule_fires(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest firings of a schedule, newest first."""
        return [json.loads(x) for x in self.r.lrange(self._fires_key(name), 0, limit - 1)]

    @_redis
    def record_fire(self, name: str, doc: Mapping[str, Any]) -> None:
        """Add a firing (newest first), keeping the newest `FIRES_KEPT`."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self._fires_key(name), json.dumps(doc))
        pipe.ltrim(self._fires_key(name), 0, FIRES_KEPT - 1)
        pipe.execute()

    @_redis
    def was_judged(self, name: str, run_id: str) -> bool:
        return bool(self.r.sismember(self._judged_key(name), run_id))

    @_redis
    def mark_judged(self, name: str, run_id: str) -> bool:
        """Mark a run of a schedule judged; False when another process marked it first."""
        return bool(self.r.sadd(self._judged_key(name), run_id))
