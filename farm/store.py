"""The results store: the farm's own Redis keys, no expiry, idempotent by job id.

Keys (prefix `farm`, see `Settings.key_prefix`):

| key | type | holds |
| --- | --- | --- |
| `farm:result:<job_id>` | string | a `JobResult` as JSON, written once (SET NX) |
| `farm:idx:<kind>:<value>` | sorted set | job ids scored by finish time (epoch s); kinds: all, run, |
|  |  | machine, device, spec (hash), model |
| `farm:run:<run_id>` | hash | run_id, created_at, spec (JSON), jobs (JSON list of job ids), tags (JSON), name |
| `farm:runs` | sorted set | run ids scored by creation time |
| `farm:job:<job_id>` | hash | run_id, device, queue, state, worker, attempts, updated_at |

A result and its index entries are written by one Lua script, atomically: a redelivered job
whose result exists changes nothing. Reports read through `query`, which intersects indexes and
fetches with MGET, never scanning keys. This module never imports torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import redis

from farm.errors import BrokerError, NotFoundError
from farm.result import JobResult
from farm.spec import BenchSpec, Job

JOB_STATES = ("queued", "running", "done", "cancelled", "unserved")

# KEYS[1] result key, KEYS[2..] index keys; ARGV[1] JSON, ARGV[2] score, ARGV[3] job id,
# ARGV[4] "1" to overwrite. Returns 1 when written, 0 when a result already existed.
_PUT_RESULT = """
local written
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[1])
  written = 1
else
  written = redis.call('SET', KEYS[1], ARGV[1], 'NX') and 1 or 0
end
if written == 1 then
  for i = 2, #KEYS do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3]) end
end
return written
"""


def connect(url: str) -> redis.Redis:
    """A redis-py client for a farm URL (redis://, rediss:// with TLS, user:password@)."""
    try:
        return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30)
    except ValueError as e:
        raise BrokerError(f"invalid Redis URL: {e}") from None


class ResultStore:
    """Results, runs and job states in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "farm") -> None:
        self.r = client
        self.p = prefix
        self._put = self.r.register_script(_PUT_RESULT)

    @classmethod
    def from_url(cls, url: str, prefix: str = "farm") -> ResultStore:
        return cls(connect(url), prefix)

    # -- keys --------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    def _index_keys(self, res: JobResult) -> list[str]:
        keys = [
            self.key("idx", "all"),
            self.key("idx", "run", res.run_id),
            self.key("idx", "device", res.device),
            self.key("idx", "spec", res.spec_hash),
            self.key("idx", "model", res.model_name),
        ]
        if res.machine is not None:
            keys.append(self.key("idx", "machine", res.machine.machine_tag))
        return keys

    def ping(self) -> None:
        try:
            self.r.ping()
        except redis.AuthenticationError as e:
            raise BrokerError(f"Redis refused the credentials: {e}") from None
        except redis.RedisError as e:
            raise BrokerError(f"cannot reach Redis: {e}") from None

    # -- results -----------------------------------------------------------------------------
    def put_result(self, res: JobResult, *, overwrite: bool = False) -> bool:
        """Store a result and index it; returns False (and changes nothing) if one exists."""
        when = (res.finished_at or res.started_at).timestamp()
        keys = [self.key("result", res.job_id), *self._index_keys(res)]
        doc = res.model_dump_json()
        written = bool(self._put(keys=keys, args=[doc, when, res.job_id, "1" if overwrite else "0"]))
        if written:
            self._put_summary(res.job_id, doc)
        return written

    def _put_summary(self, job_id: str, doc: str) -> None:
        """The compact summary reports read (farm.records), written with the result so that even the
        first report over many results reads summaries. Only a cache: a failure here is harmless."""
        import pydantic_core

        from farm.records import record_from_dict, summary_json

        try:
            rec = record_from_dict(pydantic_core.from_json(doc))
            self.r.set(self.key("summary", job_id), summary_json(rec, len(doc.encode())))
        except (redis.RedisError, ValueError, KeyError, TypeError):
            pass

    def get_result(self, job_id: str) -> JobResult:
        raw = self.r.get(self.key("result", job_id))
        if raw is None:
            raise NotFoundError(f"no result for job {job_id!r}")
        return JobResult.model_validate_json(raw)

    def has_result(self, job_id: str) -> bool:
        return bool(self.r.exists(self.key("result", job_id)))

    def get_results(self, job_ids: Sequence[str], chunk: int = 1000) -> list[JobResult]:
        """Results for job ids (missing ones skipped), fetched with MGET in chunks."""
        out: list[JobResult] = []
        for i in range(0, len(job_ids), chunk):
            keys = [self.key("result", j) for j in job_ids[i : i + chunk]]
            out.extend(JobResult.model_validate_json(raw) for raw in self.r.mget(keys) if raw is not None)
        return out

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
        """Job ids matching every given selector (values of one selector are OR-ed), oldest first."""
        lo = since.timestamp() if since else "-inf"
        hi = until.timestamp() if until else "+inf"
        groups = [("run", runs), ("machine", machines), ("device", devices), ("spec", spec_hashes), ("model", models)]
        selected: dict[str, float] | None = None
        for kind, values in groups:
            values = list(values)
            if not values:
                continue
            pipe = self.r.pipeline(transaction=False)
            for v in values:
                pipe.zrangebyscore(self.key("idx", kind, v), lo, hi, withscores=True)
            found: dict[str, float] = {}
            for rows in pipe.execute():
                found.update(dict(rows))
            selected = found if selected is None else {k: s for k, s in selected.items() if k in found}
        if selected is None:
            selected = dict(self.r.zrangebyscore(self.key("idx", "all"), lo, hi, withscores=True))
        ids = sorted(selected, key=lambda j: (selected[j], j))
        return ids[-limit:] if limit else ids

    def query(self, **selectors: Any) -> list[JobResult]:
        """Results matching the selectors of `query_ids`, oldest first."""
        return self.get_results(self.query_ids(**selectors))

    # -- runs and job states -----------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        spec: BenchSpec | None,
        jobs: Sequence[Job],
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            self.key("run", run_id),
            mapping={
                "run_id": run_id,
                "created_at": now,
                "spec": spec.model_dump_json() if spec is not None else "",
                "jobs": json.dumps([j.job_id for j in jobs]),
                "tags": json.dumps(tags or {}),
                "name": name or "",
            },
        )
        pipe.zadd(self.key("runs"), {run_id: now})
        for j in jobs:
            pipe.hset(
                self.key("job", j.job_id),
                mapping={
                    "run_id": run_id,
                    "device": j.device,
                    "queue": j.queue,
                    "state": "queued",
                    "worker": "",
                    "attempts": 0,
                    "updated_at": now,
                    "job": j.model_dump_json(),
                },
            )
        pipe.execute()

    def get_run(self, run_id: str) -> dict[str, Any]:
        raw = self.r.hgetall(self.key("run", run_id))
        if not raw:
            raise NotFoundError(f"no run {run_id!r}")
        return {
            **raw,
            "jobs": json.loads(raw["jobs"]),
            "tags": json.loads(raw.get("tags") or "{}"),
            "created_at": float(raw["created_at"]),
        }

    def list_runs(self, limit: int = 50) -> list[str]:
        """The newest run ids, newest last."""
        return list(reversed(self.r.zrevrange(self.key("runs"), 0, limit - 1)))

    def latest_run(self) -> str:
        runs = self.r.zrevrange(self.key("runs"), 0, 0)
        if not runs:
            raise NotFoundError("no run has been submitted yet")
        return runs[0]

    def set_job_state(self, job_id: str, state: str, **fields: Any) -> None:
        self.r.hset(
            self.key("job", job_id),
            mapping={"state": state, "updated_at": time.time(), **{k: v for k, v in fields.items() if v is not None}},
        )

    def job_states(self, run_id: str) -> dict[str, dict[str, str]]:
        """job id -> its state hash, for every job of a run."""
        run = self.get_run(run_id)
        pipe = self.r.pipeline(transaction=False)
        for j in run["jobs"]:
            pipe.hgetall(self.key("job", j))
        return dict(zip(run["jobs"], pipe.execute(), strict=True))
