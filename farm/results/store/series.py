"""Series (`SeriesMixin`): each (spec hash x machine x device x phase) keeps its points in one
string of fixed-size points (`farm.results.store.points`), read by `series_points`.

Every write also appends one point per phase to its series in the same script or transaction
(`farm.results.store.writes`); a delete or a replacement rebuilds the series it touched from their
results (`rebuild_series`), and results stored before series existed are filed into them once, on
first use (`backfill_series`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pydantic_core
import redis

from farm.errors import BrokerError
from farm.results.records import Record, record_from_dict
from farm.results.store.codec import unpack_result, unreadable
from farm.results.store.connection import _redis
from farm.results.store.points import (
    POINT,
    POINT_BYTES,
    SERIES_VERSION,
    _status_code,
    record_at,
    series_id,
    series_points_of,
)
from farm.results.store.results import ResultsMixin
from farm.spec import device_selector, device_selects


@dataclass
class Series:
    """One series' points in a selection (`ResultStore.series_points`), oldest first."""

    sid: str
    spec_hash: str
    machine: str | None
    device: str
    phase: str
    model: str
    points: np.ndarray  # of POINT
    latest_job: str  # the job id of the latest point in the selection
    latest_at: float


class SeriesMixin(ResultsMixin):
    """Series points: read, rebuilt after a delete or a replacement, backfilled once."""

    def _series_of_raw(self, raw: bytes | None) -> set[str]:
        """The series ids a stored result has points in, read leniently (none when it cannot be read)."""
        if raw is None:
            return set()
        try:
            rec = record_from_dict(pydantic_core.from_json(unpack_result(raw)))
        except (ValueError, KeyError, TypeError, AttributeError):
            return set()
        return {series_id(rec.spec_hash, rec.machine_tag, rec.device, ph) for ph in rec.phases}

    @staticmethod
    def _split_sid(sid: str) -> tuple[str, str, str, str]:
        """(spec hash, machine, device, phase) of a series id (the machine may hold `|`; the others cannot)."""
        spec_hash, rest = sid.split("|", 1)
        machine, device, phase = rest.rsplit("|", 2)
        return spec_hash, machine, device, phase

    def _series_records(self, spec_hash: str, machine: str, device: str) -> list[Record]:
        """The stored records of one (spec, machine, device), oldest first."""
        sel: dict[str, Any] = {"spec_hashes": [spec_hash], "devices": [device]}
        if machine:
            sel["machines"] = [machine]
        return [r for r in self.load_records(self.query_ids(**sel)) if (r.machine_tag or "") == machine]

    @_redis
    def rebuild_series(self, sids: Iterable[str], attempts: int = 5) -> None:
        """Rewrite series from the results stored now (after a delete or a replacement): each in one
        transaction that a concurrent write to it restarts."""
        mkey = self._series_meta_key()
        for sid in sorted(set(sids)):
            spec_hash, machine, device, _ = self._split_sid(sid)
            skey = self.series_key(sid)
            for attempt in range(attempts):
                with self.rb.pipeline(transaction=True) as pipe:
                    pipe.watch(skey)
                    points = [
                        pt
                        for rec in self._series_records(spec_hash, machine, device)
                        for pt in series_points_of(rec, record_at(rec))
                        if pt[0] == sid
                    ]
                    pipe.multi()
                    if points:
                        pipe.set(skey, b"".join(pt[1] for pt in points))
                        pipe.hset(mkey, sid, points[-1][2])
                    else:
                        pipe.delete(skey)
                        pipe.hdel(mkey, sid)
                    try:
                        pipe.execute()
                        break
                    except redis.WatchError:
                        if attempt == attempts - 1:
                            raise BrokerError(f"{skey} kept changing while it was rebuilt; run it again") from None

    def _ensure_series(self) -> None:
        """File every stored result into its series once, if no write has (one HGET per store)."""
        if self._series_current:
            return
        stored = self.r.hget(self._meta_key(), "series_version")
        if stored is None or int(stored) < SERIES_VERSION:
            try:
                self.backfill_series()
            except BrokerError as e:
                if "READONLY" not in str(e):
                    raise
        self._series_current = True

    @_redis
    def backfill_series(self, chunk: int = 5000) -> int:
        """Build every series from the results stored now (their summaries); returns how many series.

        For results stored before series existed: runs by itself on the first `series_points` after
        the upgrade, then records SERIES_VERSION. Idempotent: each series is rewritten whole, and
        series no stored result has any more are removed.
        """
        ids = list(self.r.zrange(self._all_key(), 0, -1))
        blobs: dict[str, list[bytes]] = {}
        metas: dict[str, str] = {}
        for i in range(0, len(ids), chunk):
            for rec in self.load_records(ids[i : i + chunk]):
                for sid, point, meta in series_points_of(rec, record_at(rec)):
                    blobs.setdefault(sid, []).append(point)
                    metas[sid] = meta  # ids come oldest first: the last is the latest
        mkey = self._series_meta_key()
        stale = [sid for sid in self.r.hkeys(mkey) if sid not in blobs]
        pipe = self.rb.pipeline(transaction=False)
        for sid, parts in blobs.items():
            pipe.set(self.series_key(sid), b"".join(parts))
        if metas:
            pipe.hset(mkey, mapping=metas)
        for sid in stale:
            pipe.delete(self.series_key(sid))
            pipe.hdel(mkey, sid)
        pipe.hset(self._meta_key(), "series_version", SERIES_VERSION)
        pipe.execute()
        return len(blobs)

    def _job_at(self, spec_hash: str, machine: str, device: str, phase: str, at: float) -> str | None:
        """The job of a series whose result finished at `at` (the latest of a narrowed window)."""
        ids = list(self.r.zrangebyscore(self._spec_index_key(spec_hash), at, at))
        found = [
            r.job_id
            for r in self.load_records(ids)
            if (r.machine_tag or "") == machine and r.device == device and phase in r.phases
        ]
        return found[-1] if found else None

    @_redis
    def series_points(
        self,
        *,
        machines: Iterable[str] = (),
        devices: Iterable[str] = (),
        models: Iterable[str] = (),
        spec_hashes: Iterable[str] = (),
        phases: Iterable[str] = (),
        statuses: Iterable[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        chunk: int = 1000,
    ) -> list[Series]:
        """Every series with a point in the selection, its points in it (oldest first) and its latest job.

        One HGETALL of the series meta, one MGET per `chunk` series, numpy decoding. A series blob
        that is not a whole number of points, or holds a timestamp that is not finite, is skipped
        with a warning naming its key; so is a meta entry that does not read."""
        self._ensure_current_hashes()
        self._ensure_series()
        # `--device cpu:vm` is the series device `cpu` on machine vm (`farm.spec.device_selector`);
        # `--device cuda` is every CUDA series (`cuda:h100`, `cuda:a100`: `farm.spec.device_selects`).
        picks = [device_selector(d) for d in devices]
        want = [set(x) for x in (machines, (), models, spec_hashes, phases)]
        codes = [_status_code(s) for s in statuses]
        lo = since.timestamp() if since else -np.inf
        hi = until.timestamp() if until else np.inf
        chosen: list[tuple[str, float, str, str, str, str, str, str]] = []
        for sid, raw in self.r.hgetall(self._series_meta_key()).items():
            try:
                at, job, model, spec_hash, machine, device, phase = pydantic_core.from_json(raw)
                if not isinstance(at, int | float) or not all(
                    isinstance(x, str) for x in (job, model, spec_hash, machine, device, phase)
                ):
                    raise ValueError("a field is not of its type")
            except ValueError as e:
                self._skip(self._series_meta_key() + f" {sid[:120]}", unreadable(e))
                continue
            fields_ = (machine, device, model, spec_hash, phase)
            picked = not picks or any(device_selects(d, device) and m in (None, machine) for d, m in picks)
            if picked and all(not w or v in w for w, v in zip(want, fields_, strict=True)):
                chosen.append((sid, float(at), job, model, spec_hash, machine, device, phase))
        out: list[Series] = []
        for i in range(0, len(chosen), chunk):
            part = chosen[i : i + chunk]
            keys = [self.series_key(c[0]) for c in part]
            for key, blob, (sid, at, job, model, spec_hash, machine, device, phase) in zip(
                keys, self.rb.mget(keys), part, strict=True
            ):
                if blob is None:
                    continue
                if len(blob) % POINT_BYTES:
                    self._skip(key, f"is not a whole number of {POINT_BYTES}-byte points ({len(blob)} bytes)")
                    continue
                pts = np.frombuffer(blob, dtype=POINT)
                if not np.isfinite(pts["at"]).all():
                    self._skip(key, "holds a timestamp that is not finite")
                    continue
                mask = (pts["at"] >= lo) & (pts["at"] <= hi)
                if codes:
                    mask &= np.isin(pts["status"], codes)
                pts = pts[mask]
                if not len(pts):
                    continue
                pts = pts[np.argsort(pts["at"], kind="stable")]
                last = float(pts["at"][-1])
                latest = job if last == at else self._job_at(spec_hash, machine, device, phase, last)
                if latest is None:
                    continue
                out.append(Series(sid, spec_hash, machine or None, device, phase, model, pts, latest, last))
        return out
