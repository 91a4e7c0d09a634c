"""Runs and their jobs (`RunsMixin`): a run's record and its jobs' state hashes (`create_run`), the
runs listed newest first, each job's state, progress and delivery attempts.

A run's record keeps the devices it asked for that the embedded farm skipped, with why
(`skipped_devices`, a JSON list; a run recorded before it has none).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from farm.errors import NotFoundError
from farm.results.store.base import StoreBase
from farm.results.store.codec import _flat, unpack_result, unreadable
from farm.results.store.connection import _redis
from farm.spec import STORED, BenchSpec, Job, SkippedDevice


def _json_list(raw: str | None) -> list[Any]:
    """A stored JSON list; [] when absent (a run recorded before the field) or not a JSON list."""
    try:
        doc = json.loads(raw or "[]")
    except ValueError:
        return []
    return doc if isinstance(doc, list) else []


class RunsMixin(StoreBase):
    """Runs, and the state hash of each of their jobs."""

    @_redis
    def create_run(
        self,
        run_id: str,
        specs: Sequence[BenchSpec],
        jobs: Sequence[Job],
        name: str | None = None,
        tags: dict[str, str] | None = None,
        state: str = "queued",
        skipped: Sequence[SkippedDevice] = (),
    ) -> None:
        """Record a run and its jobs (state `state`) in one transaction. One spec is stored as
        `spec`; several (a sweep) as `specs`; none (an import) as an empty `spec`. `skipped`: the
        devices asked for that the embedded farm left out, with why."""
        pipe = self.r.pipeline(transaction=True)
        self._run_commands(pipe, run_id, specs, jobs, name, tags, state, skipped)
        pipe.execute()

    def _run_commands(
        self,
        pipe: Any,
        run_id: str,
        specs: Sequence[BenchSpec],
        jobs: Sequence[Job],
        name: str | None,
        tags: dict[str, str] | None,
        state: str,
        skipped: Sequence[SkippedDevice] = (),
    ) -> None:
        """Queue on `pipe` the writes that record a run and its jobs (`create_run`, `write_import`)."""
        now = time.time()
        run: dict[str, Any] = {
            "run_id": run_id,
            "created_at": now,
            "spec": specs[0].model_dump_json() if len(specs) == 1 else "",
            "jobs": [j.job_id for j in jobs],
            "tags": tags or {},
            "name": name or "",
        }
        if len(specs) > 1:
            run["specs"] = [s.model_dump(mode="json") for s in specs]
        if skipped:
            run["skipped_devices"] = [d.model_dump(mode="json") for d in skipped]
        pipe.hset(self._run_key(run_id), mapping=_flat(run))
        pipe.zadd(self._runs_key(), {run_id: now})
        for j in jobs:
            doc = {"run_id": run_id, "device": j.device, "queue": j.queue, "state": state, "worker": "",
                   "attempts": 0, "updated_at": now, "job": j.model_dump_json()}  # fmt: skip
            pipe.hset(self._job_key(j.job_id), mapping=doc)

    @_redis
    def get_run(self, run_id: str) -> dict[str, Any]:
        raw = self.r.hgetall(self._run_key(run_id))
        if not raw:
            raise NotFoundError(f"no run {run_id!r}")
        return {
            **raw,
            "jobs": json.loads(raw["jobs"]),
            "tags": json.loads(raw.get("tags") or "{}"),
            "created_at": float(raw["created_at"]),
            "skipped_devices": _json_list(raw.get("skipped_devices")),
        }

    def skipped_devices(self, run_id: str) -> list[SkippedDevice]:
        """The devices run `run_id` asked for that the embedded farm skipped, with why ([] for a run
        recorded before they were kept, or one that skipped none). NotFoundError for no such run."""
        out = []
        for d in self.get_run(run_id)["skipped_devices"]:
            with contextlib.suppress(ValidationError):  # an entry no reader can parse is left out
                out.append(SkippedDevice.model_validate(d))
        return out

    @_redis
    def run_exists(self, run_id: str) -> bool:
        return bool(self.r.exists(self._run_key(run_id)))

    @_redis
    def list_runs(self, limit: int = 50) -> list[str]:
        """The newest run ids, newest last."""
        return list(reversed(self.r.zrevrange(self._runs_key(), 0, limit - 1)))

    @_redis
    def latest_run(self) -> str:
        runs = self.r.zrevrange(self._runs_key(), 0, 0)
        if not runs:
            raise NotFoundError(
                "no run has been submitted yet: `farm submit` queues one; `farm workers` shows the farm"
            )
        return str(runs[0])

    def resolve_run(self, run_id: str) -> str:
        """`latest` is the newest run; any other id is returned as given."""
        return self.latest_run() if run_id == "latest" else run_id

    # -- jobs --------------------------------------------------------------------------------
    @_redis
    def stored_jobs(self, run_id: str) -> list[Job]:
        """The jobs of a run as submitted (NotFoundError for an unknown run)."""
        run = self.get_run(run_id)
        pipe = self.r.pipeline(transaction=False)
        for j in run["jobs"]:
            pipe.hget(self._job_key(j), "job")
        out = []
        for j, doc in zip(run["jobs"], pipe.execute(), strict=True):
            if not doc:
                continue
            try:
                out.append(Job.model_validate_json(doc, context=STORED))
            except ValueError as e:
                self._skip(self._job_key(j), unreadable(e))
        return out

    @_redis
    def job_rows(self, run_id: str) -> list[tuple[str, dict[str, str], str | None]]:
        """(job id, its state hash, the stored result's status or None) for every job of a run."""
        jobs = self.get_run(run_id)["jobs"]
        pipe = self.r.pipeline(transaction=False)
        for j in jobs:
            pipe.hgetall(self._job_key(j))
        hashes = pipe.execute()
        results = self.rb.mget([self._result_key(j) for j in jobs]) if jobs else []
        return [
            (job_id, h, self._status_of(job_id, res) if res else None)
            for job_id, h, res in zip(jobs, hashes, results, strict=True)
        ]

    def _status_of(self, job_id: str, raw: bytes) -> str:
        """A stored result's status, "unreadable" (with a warning) when its record cannot be read."""
        try:
            status = json.loads(unpack_result(raw))["status"]
            if isinstance(status, str):
                return status
            raise ValueError("its status is not a string")
        except (ValueError, KeyError, TypeError) as e:
            self._skip(self._result_key(job_id), unreadable(e))
            return "unreadable"

    @_redis
    def set_job_state(self, job_id: str, state: str, **fields: Any) -> None:
        self.r.hset(
            self._job_key(job_id),
            mapping={"state": state, "updated_at": time.time(), **{k: v for k, v in fields.items() if v is not None}},
        )

    @_redis
    def set_job_progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        self.r.hset(self._job_key(job_id), mapping={"phase": phase, "done": done, "total": total})

    @_redis
    def job_field(self, job_id: str, field: str) -> str | None:
        """One field of a job's state hash (state, worker, attempts, ...), None when unset."""
        value = self.r.hget(self._job_key(job_id), field)
        return None if value is None else str(value)

    @_redis
    def count_attempt(self, job_id: str) -> int:
        """Count one more delivery of a job; returns the count."""
        return int(self.r.hincrby(self._job_key(job_id), "attempts", 1))
