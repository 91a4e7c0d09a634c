"""Writing results (`WritesMixin`): one result with its summary, indexes and series points in one
Lua script (`put_result`), removing results (`delete_results`), and an import's results and runs in
one transaction (`occupancy`, `write_import`).

A result, its summary and its index entries are written by one Lua script, atomically: a
redelivered job whose result exists changes nothing. `delete_results` removes a bad record with its
summary and index entries; `write_import` writes an import in one transaction (WATCH + MULTI), only
if what the importer judged is still what Redis holds. Either rebuilds the series it touched
(`SeriesMixin.rebuild_series`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from farm.errors import FarmError, NotFoundError
from farm.results.result import JobResult
from farm.results.store.codec import _derive, _run_named, pack_result, unpack_result
from farm.results.store.connection import _redis
from farm.results.store.points import SERIES_VERSION, series_id, series_points_of
from farm.results.store.runs import RunsMixin
from farm.results.store.series import SeriesMixin
from farm.results.store.spec_hashes import DEVICE_INDEX_VERSION
from farm.spec import SPEC_HASH_VERSION, Job


@dataclass(frozen=True)
class Occupancy:
    """What Redis holds for the job and run ids of an import (`ResultStore.occupancy`)."""

    results: frozenset[str]  # job ids with a result key (readable or not)
    jobs: frozenset[str]  # job ids with a job state hash (submitted, queued, running or imported)
    runs: Mapping[str, tuple[str, ...]]  # existing run id -> its job ids
    result_runs: Mapping[str, str | None]  # job id with a result -> the run it names (None: unreadable)


class WritesMixin(SeriesMixin, RunsMixin):
    """Results written, removed and imported (an import also records its runs: `RunsMixin`)."""

    @_redis
    def put_result(self, res: JobResult, *, overwrite: bool = False) -> bool:
        """Store a result and index it; returns False (and changes nothing) if one exists."""
        when = (res.finished_at or res.started_at).timestamp()
        doc = res.model_dump_json()
        stored = pack_result(doc)
        summary, rec = _derive(doc, len(stored))
        points = series_points_of(rec, when) if rec is not None else []
        old = self.rb.get(self._result_key(res.job_id)) if overwrite else None
        keys = [self._result_key(res.job_id), self._summary_key(res.job_id), self._meta_key()]
        keys += [self._series_meta_key(), *(self.series_key(sid) for sid, _, _ in points)]
        keys += self._index_keys(res)
        args: list[Any] = [stored, when, res.job_id, "1" if overwrite else "0", summary, len(points)]
        for part in (1, 0, 2):  # the points, their series ids, their meta (`_ADD_POINTS`)
            args += [pt[part] for pt in points]
        args += [SERIES_VERSION, SPEC_HASH_VERSION, DEVICE_INDEX_VERSION]
        written = bool(self._put(keys=keys, args=args))
        if written and old is not None:  # the replaced result's points are still in its series
            self.rebuild_series(self._series_of_raw(old) | {sid for sid, _, _ in points})
        return written

    def _all_indexes(self) -> list[str]:
        """Every index key (SCAN): only when a record too broken to name its own indexes is removed."""
        return sorted(k for k in self.r.scan_iter(match=self._index_pattern(), count=1000, _type="zset"))

    def _unfile(self, pipe: Any, job_ids: Sequence[str], raws: Sequence[bytes | None]) -> None:
        """Queue on `pipe` the removal of results, their summaries and every index entry."""
        everywhere: list[str] | None = None
        for job_id, raw in zip(job_ids, raws, strict=True):
            keys = self._indexes_of(raw)
            if keys is None:
                everywhere = self._all_indexes() if everywhere is None else everywhere
                keys = everywhere
            pipe.delete(self._result_key(job_id), self._summary_key(job_id))
            for k in keys:
                pipe.zrem(k, job_id)

    @_redis
    def delete_results(self, job_ids: Sequence[str]) -> list[str]:
        """Remove results (readable or not) with their summaries and index entries, in one transaction.

        NotFoundError (and nothing removed) when a job id has neither a result nor an index entry.
        The run and the job's state hash keep their record of the job (it then has no result).
        """
        ids = list(dict.fromkeys(job_ids))
        rkeys = [self._result_key(j) for j in ids]
        with self.rb.pipeline(transaction=True) as pipe:
            pipe.watch(*rkeys)
            raws = pipe.mget(rkeys) if rkeys else []
            indexed = [pipe.zscore(self._all_key(), j) is not None for j in ids]
            absent = [j for j, raw, seen in zip(ids, raws, indexed, strict=True) if raw is None and not seen]
            if absent:
                raise NotFoundError(f"no result for job {', '.join(repr(j) for j in absent[:5])}: nothing deleted")
            pipe.multi()
            self._unfile(pipe, ids, raws)
            pipe.execute()
        touched: set[str] = set()
        for raw in raws:
            touched |= self._series_of_raw(raw)
        self.rebuild_series(touched)
        return ids

    @_redis
    def occupancy(self, job_ids: Collection[str], run_ids: Collection[str]) -> Occupancy:
        """Which of these job ids have a result or a job hash, and which runs exist (with their jobs)."""
        return self._occupancy(self.rb, list(job_ids), list(run_ids))

    def _occupancy(self, client: Any, job_ids: list[str], run_ids: list[str]) -> Occupancy:
        """`occupancy` through `client` (the non-decoding client, or a pipeline of it)."""
        raws = dict(zip(job_ids, client.mget([self._result_key(j) for j in job_ids]), strict=True)) if job_ids else {}
        results = {j for j, raw in raws.items() if raw is not None}
        result_runs = {j: _run_named(raws[j]) for j in sorted(results)}
        jobs = {j for j in job_ids if client.exists(self._job_key(j))} if job_ids else set()
        runs: dict[str, tuple[str, ...]] = {}
        for run_id in run_ids:
            raw = client.hget(self._run_key(run_id), "jobs")
            if raw is None and not client.exists(self._run_key(run_id)):
                continue
            try:
                listed = json.loads(raw) if raw else []
            except ValueError:
                listed = []
            runs[run_id] = tuple(str(j) for j in listed) if isinstance(listed, list) else ()
        return Occupancy(frozenset(results), frozenset(jobs), runs, result_runs)

    @_redis
    def write_import(
        self,
        results: Sequence[JobResult],
        new_runs: Mapping[str, Sequence[Job]],
        seen: Occupancy,
        *,
        replace: Collection[str] = (),
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Store imported results and create their new runs in one transaction (WATCH + MULTI).

        `seen` is what the importer judged (`occupancy`); if Redis holds anything else by the time
        of writing, nothing is written (FarmError). Results in `replace` overwrite the stored one,
        whose summary and index entries are removed first; every other result must be new.
        """
        ids = [r.job_id for r in results]
        run_ids = sorted({r.run_id for r in results} | set(new_runs))
        watched = [k for j in ids for k in (self._result_key(j), self._job_key(j))]
        watched += [self._run_key(r) for r in run_ids]
        docs = [pack_result(r.model_dump_json()) for r in results]
        with self.rb.pipeline(transaction=True) as pipe:
            pipe.watch(*watched)
            if self._occupancy(pipe, ids, run_ids) != seen:
                raise FarmError("the farm changed while the import was checked: nothing was written; run it again")
            old = [r.job_id for r in results if r.job_id in replace]
            old_raws = [pipe.get(self._result_key(j)) for j in old]
            pipe.multi()
            self._unfile(pipe, old, old_raws)
            for res, doc in zip(results, docs, strict=True):
                when = (res.finished_at or res.started_at).timestamp()
                pipe.set(self._result_key(res.job_id), doc)
                for k in self._index_keys(res):
                    pipe.zadd(k, {res.job_id: when})
                skey, (summary, rec) = self._summary_key(res.job_id), _derive(unpack_result(doc), len(doc))
                if summary:
                    pipe.set(skey, summary)
                else:
                    pipe.delete(skey)
                points = series_points_of(rec, when) if rec is not None else []
                if points:
                    pkeys = [self._series_meta_key(), *(self.series_key(sid) for sid, _, _ in points)]
                    pargs: list[Any] = [len(points)]
                    for part in (1, 0, 2):  # the points, their series ids, their meta (`_ADD_POINTS`)
                        pargs += [pt[part] for pt in points]
                    self._append_points(keys=pkeys, args=pargs, client=pipe)
            for run_id, jobs in new_runs.items():
                self._run_commands(pipe, run_id, [], jobs, name, tags, "done")
            try:
                pipe.execute()
            except redis.WatchError:
                raise FarmError(
                    "the farm changed while the import was written: nothing was written; run it again"
                ) from None
        if old:  # the replaced results' points are still in their series (and the new ones' too)
            touched: set[str] = set()
            for raw in old_raws:
                touched |= self._series_of_raw(raw)
            for res in results:
                if res.job_id in replace:
                    m = res.machine.machine_tag if res.machine else None
                    touched |= {series_id(res.spec_hash, m, res.series_device(), ph) for ph in res.phases}
            self.rebuild_series(touched)
