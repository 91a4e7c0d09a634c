"""What every part of the store shares (`StoreBase`): the two clients, the prefix, the registered
scripts, and the record of what a read skipped (`skipped`, `_skip`, on the `farm.results.store`
logger).

Result keys are read and written through a second, non-decoding client on the same URL (`rb`);
every other key through the decoding one (`r`).
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from farm.results.store.connection import _binary, broker_error
from farm.results.store.keys import KeyNames
from farm.results.store.lua import (
    _APPEND_POINTS,
    _FETCH_JOINED,
    _FETCH_SUMMARIES,
    _PUT_RESULT,
    _REHASH_RESULT,
)

# The store's one logger, named for the package (what `farm.cli.repair_cmds` listens on).
log = logging.getLogger("farm.results.store")


class StoreBase(KeyNames):
    """The clients, prefix and scripts of a store; the parts of `ResultStore` build on it."""

    def __init__(self, client: redis.Redis, prefix: str = "farm") -> None:
        # redis-py types every reply as bytes | str whatever the client decodes; this client decodes
        # (decode_responses=True in `connect`), so its replies are handled as the strs they are.
        self.r: Any = client
        self.rb: Any = _binary(client)  # result keys: packed bytes
        self.p = prefix
        self._put = self.rb.register_script(_PUT_RESULT)
        self._fetch = self.r.register_script(_FETCH_SUMMARIES)
        self._fetch_joined = self.r.register_script(_FETCH_JOINED)
        self._rehash = self.rb.register_script(_REHASH_RESULT)
        self._append_points = self.rb.register_script(_APPEND_POINTS)
        self._series_current = False  # every stored result is known to be filed into its series
        self._hashes_current = False  # the spec indexes are known to follow SPEC_HASH_VERSION
        self.skipped: dict[str, str] = {}  # key -> why, for every record a read skipped

    def _skip(self, key: str, why: str) -> None:
        """A record a read skipped: logged (with its key and job id) each time, and kept in `skipped`."""
        self.skipped[key] = why
        kind, _, job_id = key[len(self.p) + 1 :].partition(":")  # result, summary or job; the job id
        extra = {"farm_key": key, "farm_kind": kind, "farm_job": job_id, "farm_why": why}
        log.warning("skipped %s: it %s", key, why, extra=extra)

    def ping(self) -> None:
        """BrokerError (refused credentials) or BrokerUnavailable (unreachable), else nothing."""
        try:
            self.r.ping()
        except redis.RedisError as e:
            raise broker_error(e) from None
