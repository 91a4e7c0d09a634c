"""Worker heartbeats and the worker registry (`WorkersMixin`): a live worker's hash expires
`heartbeat_ttl` after its last beat; the set of names drops a name whose hash expired on the next
listing. Heartbeats are the only keys with an expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farm.results.store.base import StoreBase
from farm.results.store.codec import _flat
from farm.results.store.connection import _redis


class WorkersMixin(StoreBase):
    """Workers' heartbeats: beat, remove, alive, list."""

    @_redis
    def beat_worker(self, name: str, doc: Mapping[str, Any], ttl_s: int) -> None:
        """A worker's heartbeat: its hash (lists as JSON), expiring `ttl_s` after this beat."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._worker_key(name), mapping=_flat(doc))
        pipe.expire(self._worker_key(name), ttl_s)
        pipe.sadd(self._workers_key(), name)
        pipe.execute()

    @_redis
    def remove_worker(self, name: str) -> None:
        """Forget a worker now (it stopped, or it died and its heartbeat must not count)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._worker_key(name))
        pipe.srem(self._workers_key(), name)
        pipe.execute()

    @_redis
    def worker_alive(self, name: str) -> bool:
        return bool(self.r.exists(self._worker_key(name)))

    @_redis
    def worker_docs(self) -> list[tuple[str, dict[str, str]]]:
        """(name, heartbeat hash) of every worker whose heartbeat has not expired, by name.
        Names whose hash expired are removed from the set."""
        names = sorted(self.r.smembers(self._workers_key()))
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(self._worker_key(n))
        out = []
        for n, raw in zip(names, pipe.execute(), strict=True):
            if not raw:  # heartbeat expired: the worker is gone
                self.r.srem(self._workers_key(), n)
                continue
            out.append((n, raw))
        return out
