"""Reading results (`ResultsMixin`): one result or many (`get_result`, `get_results`), the job ids
a selection matches (`query_ids`, `count_ids`, `query`), and the compact records reports read
(`load_records`), with the summaries they cache.

Reports read through `query_ids` + `load_records`, which read indexes and fetch with MGET or one
script call per 1,000, never scanning keys. A record a reader cannot parse is skipped with a
warning (`StoreBase._skip`); a bad summary is re-derived from its result. Every read re-checks what
it reads against its own raw times (`farm.results.verify`): a result, and a record derived from one,
in full; a record from a cached summary, its statistics. What does not follow reads back `invalid`
with the reason; the stored bytes stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import pydantic_core
import redis

from farm.errors import NotFoundError
from farm.results.records import Record, check_record, paused_gc, record_from_dict, record_from_summary, summary_json
from farm.results.result import JobResult
from farm.results.store.codec import unpack_result, unreadable
from farm.results.store.connection import _redis
from farm.results.store.keys import INDEX_KINDS
from farm.results.store.spec_hashes import SpecHashesMixin
from farm.results.verify import verify_document, verify_record
from farm.spec import STORED


def read_result(data: bytes) -> JobResult:
    """A stored result's JSON as it reads back: validated, then re-checked against its own raw times
    (`farm.results.verify`): the same object when every figure follows, else one that says `invalid`."""
    doc = pydantic_core.from_json(data)  # parsed once: the check reads the document, the model is built from it
    return JobResult.model_validate(verify_document(doc), context=STORED)


def _checked(rec: Record | None) -> Record | None:
    """A record from a cached summary, its statistics re-checked against its times (`verify_record`)."""
    return verify_record(rec) if rec is not None else None


_SINGULAR = {"run": "runs", "machine": "machines", "device": "devices", "model": "models", "spec_hash": "spec_hashes"}


class ResultsMixin(SpecHashesMixin):
    """Results and their records, read by job id or through the indexes."""

    def _parse_result(self, key: str, raw: bytes) -> JobResult | None:
        """A stored result as the read check sees it, or None (skipped, with a warning) when it cannot be read."""
        try:
            return read_result(unpack_result(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # pydantic's ValidationError is a ValueError
            self._skip(key, unreadable(e))
            return None

    @_redis
    def get_result(self, job_id: str) -> JobResult:
        """One result; NotFoundError when there is none, or when its record cannot be read (named)."""
        key = self._result_key(job_id)
        raw = self.rb.get(key)
        if raw is None:
            raise NotFoundError(f"no result for job {job_id!r}")
        try:
            return read_result(unpack_result(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise NotFoundError(f"no readable result for job {job_id!r}: {key} {unreadable(e)}") from None

    @_redis
    def has_result(self, job_id: str) -> bool:
        return bool(self.r.exists(self._result_key(job_id)))

    @_redis
    def get_results(self, job_ids: Sequence[str], chunk: int = 1000) -> list[JobResult]:
        """Results for job ids (missing ones skipped), fetched with MGET in chunks."""
        out: list[JobResult] = []
        for i in range(0, len(job_ids), chunk):
            keys = [self._result_key(j) for j in job_ids[i : i + chunk]]
            for key, raw in zip(keys, self.rb.mget(keys), strict=True):
                res = None if raw is None else self._parse_result(key, raw)
                if res is not None:
                    out.append(res)
        return out

    @_redis
    def query_ids(
        self,
        *,
        runs: Iterable[str] = (),
        machines: Iterable[str] = (),
        devices: Iterable[str] = (),
        spec_hashes: Iterable[str] = (),
        models: Iterable[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Job ids matching every given selector (values of one selector are OR-ed), oldest first.

        One index (everything, or one value of one selector) is read directly without scores: Redis
        already orders it by (finish time, job id), the order returned, and 10,000 ids then cost a
        quarter of the time.
        """
        self._ensure_current_hashes()
        lo = since.timestamp() if since else "-inf"
        hi = until.timestamp() if until else "+inf"
        given = {"runs": runs, "machines": machines, "devices": devices, "spec_hashes": spec_hashes, "models": models}
        used = [(INDEX_KINDS[name], list(dict.fromkeys(values))) for name, values in given.items()]
        used = [(kind, values) for kind, values in used if values]
        if not used or (len(used) == 1 and len(used[0][1]) == 1):
            key = self._all_key() if not used else self._index_key(used[0][0], used[0][1][0])
            ids = list(self.r.zrangebyscore(key, lo, hi))
            return ids[-limit:] if limit else ids
        selected: dict[str, float] | None = None
        for kind, values in used:
            pipe = self.r.pipeline(transaction=False)
            for v in values:
                pipe.zrangebyscore(self._index_key(kind, v), lo, hi, withscores=True)
            found: dict[str, float] = {}
            for rows in pipe.execute():
                found.update(dict(rows))
            selected = found if selected is None else {k: s for k, s in selected.items() if k in found}
        assert selected is not None
        ids = sorted(selected, key=lambda j: (selected[j], j))
        return ids[-limit:] if limit else ids

    def query(self, **selectors: Any) -> list[JobResult]:
        """Results matching the selectors of `query_ids`, oldest first. The singular spellings
        (`run`, `machine`, `device`, `model`, `spec_hash`) take one value or several, like the plural."""
        for one, many in _SINGULAR.items():
            if one in selectors:
                value = selectors.pop(one)
                selectors[many] = [*selectors.get(many, ()), *([value] if isinstance(value, str) else value)]
        return self.get_results(self.query_ids(**selectors))

    def load_records(self, job_ids: Sequence[str], chunk: int = 1000, cache: bool = True) -> list[Record]:
        """Report records for job ids (missing and unreadable ones skipped), in order.

        Cached summaries come back from one script call per chunk and one parse; results without a
        (current, readable) summary are fetched with MGET, parsed by pydantic-core, checked
        (`check_record`), and their summaries written. A result that cannot be read is skipped.
        """
        with paused_gc():
            return self._load_records(job_ids, chunk, cache)

    @_redis
    def _load_records(self, job_ids: Sequence[str], chunk: int, cache: bool) -> list[Record]:
        self._ensure_current_hashes()
        out: list[Record] = []
        for i in range(0, len(job_ids), chunk):
            ids = job_ids[i : i + chunk]
            rkeys = [self._result_key(j) for j in ids]
            skeys = [self._summary_key(j) for j in ids]
            recs = self._joined(ids, skeys, rkeys) if cache else None
            if recs is None:
                cached = self._fetch(keys=[*skeys, *rkeys]) if cache else [None] * len(ids)
                recs = self._summaries(ids, skeys, cached)
            missing = [k for k, rec in enumerate(recs) if rec is None]
            if missing:
                pipe = self.r.pipeline(transaction=False)
                for k, raw in zip(missing, self.rb.mget([rkeys[k] for k in missing]), strict=True):
                    if raw is None:
                        continue
                    try:
                        rec = record_from_dict(verify_document(pydantic_core.from_json(unpack_result(raw))))
                        check_record(rec)
                    except (ValueError, KeyError, TypeError, AttributeError) as e:
                        self._skip(rkeys[k], unreadable(e))
                        continue
                    recs[k] = rec
                    if cache:
                        pipe.set(skeys[k], summary_json(rec, len(raw)))
                try:
                    pipe.execute()
                except redis.RedisError:
                    pass  # a read-only replica still reports; the summaries are only a cache
            out.extend(r for r in recs if r is not None)
        return out

    def _joined(self, ids: Sequence[str], skeys: Sequence[str], rkeys: Sequence[str]) -> list[Record | None] | None:
        """Records from the chunk's summaries fetched as one joined reply (None where a result has no
        current summary); None for the whole chunk when the reply does not parse as one summary (or
        null) per job, each naming its own job: the caller then reads them one by one, naming the bad."""
        try:
            rows = pydantic_core.from_json("[" + self._fetch_joined(keys=[*skeys, *rkeys]) + "]")
        except ValueError:
            return None
        if len(rows) != len(ids):
            return None
        recs: list[Record | None] = []
        for job_id, row in zip(ids, rows, strict=True):
            if row is None:
                recs.append(None)
                continue
            if not isinstance(row, list) or len(row) < 3 or row[2] != job_id:
                return None
            try:
                recs.append(_checked(record_from_summary(row)))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return None
        return recs

    def _summaries(self, ids: Sequence[str], skeys: Sequence[str], cached: Sequence[str | None]) -> list[Record | None]:
        """Records from cached summaries (one parse for the chunk); a summary that does not parse,
        unpack or name its own job is skipped with a warning and re-derived from its result (None here)."""
        try:
            rows = pydantic_core.from_json("[" + ",".join(c or "null" for c in cached) + "]")
        except ValueError:
            rows = []
            for key, c in zip(skeys, cached, strict=True):
                try:
                    rows.append(pydantic_core.from_json(c) if c else None)
                except ValueError as e:
                    self._skip(key, unreadable(e) + " (re-derived from its result)")
                    rows.append(None)
        recs: list[Record | None] = []
        for job_id, key, row in zip(ids, skeys, rows, strict=True):
            try:
                rec = _checked(record_from_summary(row)) if row else None
                if rec is not None and rec.job_id != job_id:
                    raise ValueError(f"it names another job ({str(rec.job_id)[:80]!r})")
                recs.append(rec)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                self._skip(key, unreadable(e) + " (re-derived from its result)")
                recs.append(None)
        return recs

    @_redis
    def result_memory(self) -> dict[str, int]:
        """Bytes Redis holds for results, by kind (`result`, `summary`, `idx`, `series` with its meta
        hash): MEMORY USAGE (every sample) over every such key, found with SCAN. For measuring
        (benchmarks/store_scale.py), not for a hot path."""
        out: dict[str, int] = {}
        for kind, pattern in self._patterns().items():
            keys = list(self.r.scan_iter(match=pattern, count=1000))
            if kind == "series" and self.r.exists(self._series_meta_key()):
                keys.append(self._series_meta_key())
            pipe = self.r.pipeline(transaction=False)
            for k in keys:
                pipe.memory_usage(k, samples=0)
            out[kind] = sum(int(x or 0) for x in pipe.execute()) if keys else 0
        return out

    @_redis
    def count_ids(self, **selectors: Any) -> int:
        """How many job ids `query_ids(**selectors)` returns; one ZCOUNT when one index answers it."""
        self._ensure_current_hashes()
        used = {k: list(dict.fromkeys(selectors.get(k) or ())) for k in INDEX_KINDS}
        used = {k: v for k, v in used.items() if v}
        if not used or (len(used) == 1 and len(next(iter(used.values()))) == 1):
            since, until = selectors.get("since"), selectors.get("until")
            key = self._all_key()
            if used:
                ((name, values),) = used.items()
                key = self._index_key(INDEX_KINDS[name], values[0])
            lo = since.timestamp() if since else "-inf"
            return int(self.r.zcount(key, lo, until.timestamp() if until else "+inf"))
        return len(self.query_ids(**selectors))
