"""One-off index migrations (`SpecHashesMixin`), each run once on the first read after an upgrade:
spec hashes of an older `SPEC_HASH_VERSION` are re-derived (`migrate_spec_hashes`) and the result
moved to the spec index of its new hash; results stored before DEVICE_INDEX_VERSION are filed
under their series device too (`migrate_device_indexes`: `cpu` and `cpu:<machine>`, whatever tag
their job named; `cuda`, `cuda:<gpu>` of the GPU a CUDA result ran on).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pydantic_core

from farm.errors import BrokerError
from farm.results.store.base import StoreBase
from farm.results.store.codec import PACKED_1, pack_result, unpack_result
from farm.results.store.connection import _redis
from farm.spec import SPEC_HASH_VERSION, STORED, BenchSpec

DEVICE_INDEX_VERSION = 2  # `farm:meta` device_index_version once every result is in its device indexes
# 2: a CUDA result is filed under `cuda`, and `cuda:<gpu>` of the GPU it ran on, too


class SpecHashesMixin(StoreBase):
    """The spec indexes kept on the current `SPEC_HASH_VERSION`; every reader calls `_ensure_current_hashes`."""

    def _ensure_current_hashes(self) -> None:
        """Migrate the spec indexes once if they follow an older SPEC_HASH_VERSION (one HGET per store)."""
        if self._hashes_current:
            return
        stored = self.r.hget(self._meta_key(), "spec_hash_version")
        devices = self.r.hget(self._meta_key(), "device_index_version")
        try:
            if stored is None or int(stored) < SPEC_HASH_VERSION:
                self.migrate_spec_hashes()
            if devices is None or int(devices) < DEVICE_INDEX_VERSION:
                self.migrate_device_indexes()
        except BrokerError as e:
            if "READONLY" not in str(e):
                raise
            # A read-only replica reports what it holds; the primary migrates.
        self._hashes_current = True

    def _stored_chunks(self, chunk: int) -> Iterator[list[tuple[str, float, bytes]]]:
        """Every stored result as (job id, finish time, stored bytes), `chunk` at a time (one MGET each);
        a result deleted meanwhile is left out."""
        entries = self.r.zrange(self._all_key(), 0, -1, withscores=True)
        for i in range(0, len(entries), chunk):
            part = entries[i : i + chunk]
            raws = self.rb.mget([self._result_key(job_id) for job_id, _ in part])
            yield [(job_id, score, raw) for (job_id, score), raw in zip(part, raws, strict=True) if raw is not None]

    @_redis
    def migrate_device_indexes(self, chunk: int = 1000) -> int:
        """File every stored result under the device indexes `put_result` files it under today
        (`KeyNames._device_index_keys`), with its finish time; returns how many results were read.
        Idempotent (ZADD of the same member and score), safe beside writers."""
        done = 0
        for part in self._stored_chunks(chunk):
            pipe = self.r.pipeline(transaction=False)
            for job_id, score, raw in part:
                keys = self._indexes_of(raw)
                if keys is None:
                    continue  # not a result this version can read: left as it is
                for key in keys:
                    if key != self._all_key():
                        pipe.zadd(key, {job_id: score})
                done += 1
            pipe.execute()
        self.r.hset(self._meta_key(), "device_index_version", DEVICE_INDEX_VERSION)
        return done

    @_redis
    def migrate_spec_hashes(self, chunk: int = 500) -> int:
        """Re-derive every stored result's spec hash from its spec (`BenchSpec.spec_hash`); returns how many moved.

        A result whose hash changed is rewritten with the new one (only that field), moved from
        `idx:spec:<old>` to `idx:spec:<new>` with its finish time, and its summary dropped (the next
        report rebuilds it). Idempotent and safe to run from several processes at once; a result
        replaced meanwhile is left alone, and one whose spec no longer validates keeps its hash.
        Runs by itself on the first read after an upgrade, then records SPEC_HASH_VERSION.
        """
        derived: dict[str, str] = {}  # spec JSON -> hash (a sweep's thousands of results share a few specs)
        moved = 0
        for part in self._stored_chunks(chunk):
            pipe = self.rb.pipeline(transaction=False)
            for job_id, score, raw in part:
                try:
                    plain = unpack_result(raw).decode()
                    doc = pydantic_core.from_json(plain)
                    old = doc["spec_hash"]
                    key = json.dumps(doc["spec"], sort_keys=True)
                    if key not in derived:
                        derived[key] = BenchSpec.model_validate(doc["spec"], context=STORED).spec_hash()
                except (ValueError, KeyError, TypeError):
                    continue  # not a result this version can read: left as it is
                new = derived[key]
                if new == old:
                    continue
                needle = f'"spec_hash":"{old}"'
                text = plain.replace(needle, f'"spec_hash":"{new}"') if plain.count(needle) == 1 else None
                if text is None:
                    text = json.dumps({**doc, "spec_hash": new}, separators=(",", ":"))
                keys = [
                    self._result_key(job_id),
                    self._spec_index_key(new),
                    self._spec_index_key(old),
                    self._summary_key(job_id),
                ]
                stored = pack_result(text) if raw[:1] == PACKED_1 else text.encode()  # in the format it had
                self._rehash(keys=keys, args=[raw, stored, score, job_id], client=pipe)
            moved += sum(int(x) for x in pipe.execute())
        self.r.hset(self._meta_key(), "spec_hash_version", SPEC_HASH_VERSION)
        return moved
