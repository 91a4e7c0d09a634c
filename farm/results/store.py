"""The farm's Redis schema: the only code that names a Redis key. No expiry but heartbeats;
results idempotent by job id.

Keys (prefix `farm`, see `Settings.key_prefix`); `KEY_TABLE` below lists the same patterns, and a
test checks every key the farm writes against it:

| key | type | holds |
| --- | --- | --- |
| `farm:result:<job_id>` | string | a `JobResult`'s JSON, compressed (`pack_result`), written once (SET NX) |
| `farm:summary:<job_id>` | string | the compact record reports read (`farm.results.records`), written with it |
| `farm:idx:<kind>:<value>` | sorted set | job ids by finish time (epoch s); kinds all, run, machine, |
|  |  | device, spec, model |
| `farm:run:<run_id>` | hash | run_id, created_at, spec or specs (JSON), jobs (JSON list), tags, name |
| `farm:runs` | sorted set | run ids scored by creation time |
| `farm:job:<job_id>` | hash | run_id, device, queue, job (JSON), state, worker, attempts, pid, |
|  |  | phase, done, total, status, started_at, updated_at |
| `farm:worker:<name>` | hash, TTL | a live worker's config, fingerprint and jobs; expires `heartbeat_ttl` |
|  |  | after its last beat |
| `farm:workers` | set | worker names (an expired hash drops its name on the next listing) |
| `farm:schedule:<name>` | hash | name, cron or every_s, sweep (JSON), sweep_name, source, created/updated |
| `farm:schedules` | set | schedule names |
| `farm:schedule:<name>:fires` | list | the newest `FIRES_KEPT` firings (JSON), newest first |
| `farm:schedule:<name>:judged` | set | run ids whose regressions were sent to the webhook |
| `farm:redbeat:*` | (redbeat) | celery-redbeat's entries and lock, under `redbeat_prefix(prefix)` |
| `farm:series:<id>` | string | a series' points (id `<spec>|<machine>|<device>|<phase>`, `:` and `%` |
|  |  | percent-encoded: `series_key`): `POINT_BYTES` each |
|  |  | (little-endian float64 finished_at epoch, median_s, mfu, tokens_per_s, status code; NaN: none), |
|  |  | appended with the result, in the order written (`series_points`) |
| `farm:series-meta` | hash | series id -> JSON [latest finish epoch, its job id, model, spec hash, machine, |
|  |  | device, phase] |
| `farm:meta` | hash | `spec_hash_version`: the `SPEC_HASH_VERSION` the spec indexes follow; `series_version`: |
|  |  | `SERIES_VERSION` once the series were built from every stored result (`backfill_series`) |

Celery's broker keys (queues, `unacked`, bindings) are kombu's, not the farm's.

Redis contents are untrusted too: a reader that meets a record it cannot parse (garbage JSON, a
result that no longer validates, a summary that does not unpack) skips it, logs one warning naming
the key on the `farm.results.store` logger and lists it in `ResultStore.skipped`; a bad summary is
only a cache and is re-derived from its result. `delete_results` removes a bad record with its
summary and index entries; `write_import` writes an import in one transaction (WATCH + MULTI),
only if what the importer judged is still what Redis holds.

A result, its summary and its index entries are written by one Lua script, atomically: a
redelivered job whose result exists changes nothing. A result is stored as raw deflate against a
fixed dictionary (`pack_result`: about 600 bytes instead of 4,000 of JSON); one that does not start
with the format's byte is the plain JSON older versions stored, read as it is (`unpack_result`).
Result keys are read and written through a second, non-decoding client on the same URL (`rb`).
Spec hashes of an older `SPEC_HASH_VERSION` are re-derived once, on the first read after an
upgrade (`migrate_spec_hashes`). Every write also appends one fixed-size point per phase to its
series (spec hash x machine x device x phase) in the same script or transaction; a delete or a
replacement rebuilds the series it touched from their results (`rebuild_series`), and results
stored before series existed are filed into them once, on first use (`backfill_series`). Reports read through
`query_ids` + `load_records`, which read indexes and fetch with MGET or one script call per
1,000, never scanning keys. Every Redis failure becomes a `BrokerError` here
(`BrokerUnavailable` when Redis cannot be reached), so callers never see redis-py's exceptions.
This module never imports torch.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import struct
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pydantic
import pydantic_core
import redis

from farm.errors import BrokerError, BrokerUnavailable, FarmError, NotFoundError
from farm.results.records import (
    Record,
    check_record,
    paused_gc,
    record_from_dict,
    record_from_summary,
    summary_json,
)
from farm.results.result import JobResult
from farm.spec import SPEC_HASH_VERSION, STORED, BenchSpec, Job

log = logging.getLogger(__name__)

FIRES_KEPT = 200  # firings kept per schedule
_SINGULAR = {"run": "runs", "machine": "machines", "device": "devices", "model": "models", "spec_hash": "spec_hashes"}
SOCKET_TIMEOUT_S = 30.0  # a command without an answer for this long: Redis is unreachable (see connect)

# Every key pattern the farm writes, as `<prefix>:` + pattern (`*` one segment, `**` the rest).
KEY_TABLE = (
    "result:*",
    "summary:*",
    "idx:all",
    "idx:run:*",
    "idx:machine:*",
    "idx:device:*",
    "idx:spec:*",
    "idx:model:*",
    "run:*",
    "runs",
    "job:*",
    "worker:*",
    "workers",
    "schedule:*",
    "schedules",
    "schedule:*:fires",
    "schedule:*:judged",
    "redbeat:**",
    "series:**",
    "series-meta",
    "meta",
)

# A series point: five little-endian float64s (NaN where a phase has no such figure).
POINT = np.dtype([("at", "<f8"), ("median_s", "<f8"), ("mfu", "<f8"), ("tokens_per_s", "<f8"), ("status", "<f8")])
POINT_BYTES = POINT.itemsize  # 40
_PACK_POINT = struct.Struct("<5d").pack  # the same layout, for writing one point
STATUS_CODES = ("ok", "unverified", "invalid", "failed", "oom", "timeout", "cancelled")  # code = index; other: 7
SERIES_VERSION = 1  # `farm:meta` series_version once every stored result is filed into its series

# Lua appended to a write script: ARGV[base] the number n of series, then n points, n series ids and
# n meta JSONs (each starting `[<epoch>,`); KEYS[kbase] the meta hash, KEYS[kbase+1..kbase+n] the
# series keys. A meta entry is replaced when its latest finish time is not later than this one.
_ADD_POINTS = """
local function add_points(kbase, base)
  local n = tonumber(ARGV[base])
  for j = 1, n do
    redis.call('APPEND', KEYS[kbase + j], ARGV[base + j])
    local sid, meta = ARGV[base + n + j], ARGV[base + 2 * n + j]
    local cur = redis.call('HGET', KEYS[kbase], sid)
    local at = tonumber(string.match(meta, '^%[([^,]+),'))
    if (not cur) or (tonumber(string.match(cur, '^%[([^,]+),')) or -math.huge) <= at then
      redis.call('HSET', KEYS[kbase], sid, meta)
    end
  end
end
"""
_APPEND_POINTS = _ADD_POINTS + "add_points(1, 1)\nreturn 1\n"

# KEYS[1] result key, KEYS[2] summary key, KEYS[3] `meta`, KEYS[4] the series meta hash, KEYS[5..4+n]
# the series keys, then the index keys (`idx:all` first); ARGV[1] the stored result, ARGV[2] score,
# ARGV[3] job id, ARGV[4] "1" to overwrite, ARGV[5] its summary ("": none), ARGV[6..6+3n] the points
# (`_ADD_POINTS`), then SERIES_VERSION and SPEC_HASH_VERSION (recorded by the first write into an
# empty farm). Returns 1 when written, 0 when a result already existed.
_PUT_RESULT = (
    _ADD_POINTS
    + """
local written
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[1])
  written = 1
else
  written = redis.call('SET', KEYS[1], ARGV[1], 'NX') and 1 or 0
end
if written == 1 then
  if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5]) else redis.call('DEL', KEYS[2]) end
  local n = tonumber(ARGV[6])
  -- The first result of an empty farm: nothing older needs filing into series (`backfill_series`)
  -- or re-hashing (`migrate_spec_hashes`).
  if redis.call('ZCARD', KEYS[5 + n]) == 0 then
    redis.call('HSETNX', KEYS[3], 'series_version', ARGV[7 + 3 * n])
    redis.call('HSETNX', KEYS[3], 'spec_hash_version', ARGV[8 + 3 * n])
  end
  for i = 5 + n, #KEYS do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3]) end
  add_points(4, 6)
end
return written
"""
)

# KEYS[1..n] summary keys, KEYS[n+1..2n] result keys: each summary, or false when absent or stale
# (a summary starts with the byte length of the stored result it was derived from).
_FETCH_SUMMARIES = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local s = redis.call('GET', KEYS[i])
  if s and tonumber(string.match(s, '^%[(%d+),')) ~= redis.call('STRLEN', KEYS[n + i]) then s = false end
  out[i] = s or false
end
return out
"""
# The same, joined into one reply: the summaries (`null` where none) separated by commas, so that
# the client reads one string instead of parsing a thousand replies. A summary that is not one JSON
# value (only a damaged or hostile one) spoils the join; the reader then falls back to the above.
_FETCH_JOINED = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local s = redis.call('GET', KEYS[i])
  if s and tonumber(string.match(s, '^%[(%d+),')) ~= redis.call('STRLEN', KEYS[n + i]) then s = false end
  out[i] = s or 'null'
end
return table.concat(out, ',')
"""

# KEYS[1] result, KEYS[2] idx:spec:<new>, KEYS[3] idx:spec:<old>, KEYS[4] summary; ARGV[1] the result
# as read, ARGV[2] it under the new hash (packed), ARGV[3] score, ARGV[4] job id. Changes nothing (and
# returns 0) when the result was replaced since it was read.
_REHASH_RESULT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
return 1
"""

P = ParamSpec("P")
T = TypeVar("T")

# The stored result format: this byte, then raw deflate (level 1) against `_ZDICT_1`, a typical
# result's JSON with its numbers removed (the keys and common strings every result repeats: about
# 600 bytes a result instead of 1,400 without it). Frozen: stored results depend on these bytes;
# another dictionary would take another first byte.
PACKED_1 = b"\x01"
_ZDICT_1 = (
    b'{"schema_version":,"job_id":"x-001","run_id":"x","device":"cuda","torch_device":"cuda:","status"'
    b':"ok","error":null,"warnings":[],"spec":{"model":"gpt2-tiny","batch":,"seq":,"repeats":,"ci_targ'
    b'et":,"repeat_budget_s":,"max_repeats":,"warmup":,"dtype":"float32","precision_mode":"auto","matm'
    b'ul_precision":"highest","phases":["init","forward","train"],"gen_tokens":,"world_size":,"devices'
    b'":["cuda"],"threads":null,"compile":false,"optimizer":"adamw","seed":,"time_limit_s":null,"check'
    b'point":null,"tags":{}},"spec_hash":"53f19c3e6ea6","model_name":"gpt2-tiny","machine":{"hostname"'
    b':"gpu-box.lab","machine_tag":"gpu-box","os":"Linux 6.1","python":"3.11.7","cpu_model":"Intel(R) '
    b'Xeon(R) Platinum 8480+","cpu_arch":"x86_64","cpu_flags":["amx_bf16","avx512f"],"physical_cores":'
    b',"logical_cores":,"cpu_clock_mhz":null,"cpu_clock_kind":null,"memory_bytes":,"torch_version":"2.'
    b'5.1","cuda_version":"12.4","cudnn_version":null,"gpus":[{"index":,"name":"NVIDIA H100 80GB HBM3"'
    b',"tag":"h100","memory_bytes":,"driver":"550.54","uuid":null,"compute_capability":null,"sm_count"'
    b':null,"max_sm_clock_mhz":null}],"farm_version":"0.1.0","git_commit":"0123456789ab"},"worker":nul'
    b'l,"phases":{"init":{"name":"init","status":"ok","error":null,"times_s":[],"warmup_times_s":[],"s'
    b'tats":{"n":,"median_s":,"mean_s":,"min_s":,"max_s":,"std_s":,"q1_s":,"q3_s":,"iqr_s":,"cv":,"ci_'
    b'low_s":,"ci_high_s":,"ci_coverage":,"noisy":false,"outlier":false,"drift":false},"flops":,"achie'
    b'ved_flops":null,"peak_flops":null,"peak_source":null,"mfu":null,"tokens_per_s":null,"peak_memory'
    b'_bytes":,"memory_kind":"process RSS peak","predicted_memory_bytes":null,"breakdown":{},"invalid_'
    b'reason":null,"roofline_flops":null,"roofline_source":null,"host":null,"repeats_stop":null,"gener'
    b'ate":null,"median_s":},"forward":{"name":"forward","status":"ok","error":null,"times_s":[,],"war'
    b'mup_times_s":[],"stats":{"n":,"median_s":,"mean_s":,"min_s":,"max_s":,"std_s":,"q1_s":,"q3_s":,"'
    b'iqr_s":,"cv":,"ci_low_s":,"ci_high_s":,"ci_coverage":,"noisy":false,"outlier":false,"drift":fals'
    b'e},"flops":,"achieved_flops":,"peak_flops":,"peak_source":"table: h100 float32 dense","mfu":,"to'
    b'kens_per_s":,"peak_memory_bytes":,"memory_kind":"process RSS peak","predicted_memory_bytes":null'
    b',"breakdown":{},"invalid_reason":null,"roofline_flops":null,"roofline_source":null,"host":null,"'
    b'repeats_stop":null,"generate":null,"median_s":},"train":{"name":"train","status":"ok","error":nu'
    b'll,"times_s":[,],"warmup_times_s":[],"stats":{"n":,"median_s":,"mean_s":,"min_s":,"max_s":,"std_'
    b's":,"q1_s":,"q3_s":,"iqr_s":,"cv":,"ci_low_s":,"ci_high_s":,"ci_coverage":,"noisy":false,"outlie'
    b'r":false,"drift":false},"flops":,"achieved_flops":,"peak_flops":,"peak_source":"table: h100 floa'
    b't32 dense","mfu":,"tokens_per_s":,"peak_memory_bytes":,"memory_kind":"process RSS peak","predict'
    b'ed_memory_bytes":null,"breakdown":{},"invalid_reason":null,"roofline_flops":null,"roofline_sourc'
    b'e":null,"host":null,"repeats_stop":null,"generate":null,"median_s":}},"precision":{"dtype":"floa'
    b't32","matmul_precision":"highest","threads":},"threads":,"attempt":,"fresh_process":null,"farm_v'
    b'ersion":"0.1.0","started_at":"2026-11-01T00::Z","finished_at":"2026-11-01T00::Z"}'
)


def pack_result(doc: str) -> bytes:
    """A result's JSON as stored (`PACKED_1` + raw deflate against `_ZDICT_1`)."""
    z = zlib.compressobj(1, zlib.DEFLATED, -15, zdict=_ZDICT_1)
    return PACKED_1 + z.compress(doc.encode()) + z.flush()


def unpack_result(raw: bytes) -> bytes:
    """A stored result's JSON (bytes): unpacked, or as it was stored by an older version (plain JSON).
    ValueError when a packed value does not decompress."""
    if raw[:1] != PACKED_1:
        return raw
    try:
        z = zlib.decompressobj(-15, zdict=_ZDICT_1)
        return z.decompress(raw[1:]) + z.flush()
    except zlib.error as e:
        raise ValueError(f"does not decompress: {e}") from None


def unreadable(e: Exception) -> str:
    """Why a stored record cannot be read, in one short line (never the value itself)."""
    if isinstance(e, pydantic.ValidationError):
        errs = e.errors()
        first = errs[0]
        if first["type"] == "json_invalid":
            return f"is not a readable record: {first['msg'][:200]}"
        loc = ".".join(str(x) for x in first["loc"]) or "record"
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        return f"does not validate: {loc}: {first['msg']}{more}"[:300]
    if isinstance(e, KeyError):
        return f"lacks the field {str(e)[:80]}"
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"is not a readable record: {text[:200]}"


def _run_named(raw: bytes) -> str | None:
    """The run id a stored result names, read leniently (None when it cannot be told)."""
    try:
        doc = json.loads(unpack_result(raw))
    except ValueError:
        return None
    run_id = doc.get("run_id") if isinstance(doc, dict) else None
    return run_id if isinstance(run_id, str) else None


@dataclass(frozen=True)
class Occupancy:
    """What Redis holds for the job and run ids of an import (`ResultStore.occupancy`)."""

    results: frozenset[str]  # job ids with a result key (readable or not)
    jobs: frozenset[str]  # job ids with a job state hash (submitted, queued, running or imported)
    runs: Mapping[str, tuple[str, ...]]  # existing run id -> its job ids
    result_runs: Mapping[str, str | None]  # job id with a result -> the run it names (None: unreadable)


def broker_error(e: redis.RedisError) -> BrokerError:
    """The farm's error for a redis-py exception: the one translation, used by the store and its callers."""
    if isinstance(e, redis.AuthenticationError) or (
        isinstance(e, redis.ResponseError) and ("NOAUTH" in str(e) or "WRONGPASS" in str(e))
    ):
        return BrokerError(f"Redis refused the credentials: {e}")
    if isinstance(e, redis.ConnectionError | redis.TimeoutError):
        return BrokerUnavailable(f"cannot reach Redis: {e}")
    if isinstance(e, redis.ResponseError):
        return BrokerError(f"Redis refused a command (a key of the wrong type or a read-only replica?): {e}")
    return BrokerError(f"Redis failed: {e}")


def _redis(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a store method: any redis-py exception leaves it as a `BrokerError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            raise broker_error(e) from None

    return wrapper


def redbeat_prefix(prefix: str) -> str:
    """The key prefix celery-redbeat is given for its entries and lock (`<prefix>:redbeat:`)."""
    return f"{prefix}:redbeat:"


def connect(url: str) -> redis.Redis:
    """A redis-py client for a farm URL (redis://, rediss:// with TLS, user:password@).

    `socket_timeout`: a Redis host cut off without a TCP reset (a network partition) makes a read
    fail after SOCKET_TIMEOUT_S (BrokerUnavailable, which `wait` rides out for a while) instead of
    blocking until the link comes back. The store issues no blocking commands, and its largest
    script (a report's fetch of 1,000 summaries) takes milliseconds.
    """
    try:
        return redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT_S,
            socket_keepalive=True, health_check_interval=30,
        )  # fmt: skip
    except ValueError as e:
        raise BrokerError(f"invalid Redis URL: {e}") from None


def _binary(client: Any) -> Any:
    """A client on the same server and settings as `client` that returns bytes (for packed results)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def _flat(mapping: Mapping[str, Any]) -> dict[str, str | int | float]:
    """A hash mapping: lists and dicts as JSON, None as the empty string."""
    return {k: json.dumps(v) if isinstance(v, list | dict) else ("" if v is None else v) for k, v in mapping.items()}


def _derive(doc: str | bytes, stored_bytes: int) -> tuple[str, Record | None]:
    """The summary of a result's JSON stored in `stored_bytes` bytes and its record; ("", None) when
    they cannot be derived (the summary is only a cache: the reader re-derives it, or skips the result)."""
    try:
        rec = record_from_dict(pydantic_core.from_json(doc))
        return summary_json(rec, stored_bytes), rec
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", None


def _status_code(status: str) -> float:
    return float(STATUS_CODES.index(status)) if status in STATUS_CODES else float(len(STATUS_CODES))


def _num(v: float | None) -> float:
    return float(v) if isinstance(v, int | float) else float("nan")


def series_id(spec_hash: str, machine: str | None, device: str, phase: str) -> str:
    """A series' id: `<spec_hash>|<machine>|<device>|<phase>` (machine "" when the result names none)."""
    return f"{spec_hash}|{machine or ''}|{device}|{phase}"


def record_at(rec: Record) -> float:
    """A record's finish time (its index score) as epoch seconds; NaN when it does not parse."""
    try:
        return datetime.fromisoformat(rec.finished_at).timestamp()
    except (ValueError, TypeError):
        return float("nan")


def series_points_of(rec: Record, at: float) -> list[tuple[str, bytes, str]]:
    """(series id, packed point, meta JSON) for each phase of a record (none for a record without phases)."""
    if not math.isfinite(at):
        return []  # no finish time to file it under
    out = []
    tail = json.dumps([rec.job_id, rec.model_name, rec.spec_hash, rec.machine_tag or "", rec.device])[1:-1]
    head = f"[{float(at)!r},{tail},"
    for name, ph in rec.phases.items():
        point = _PACK_POINT(at, _num(ph.median_s), _num(ph.mfu), _num(ph.tokens_per_s), _status_code(ph.status))
        out.append((series_id(rec.spec_hash, rec.machine_tag, rec.device, name), point, head + json.dumps(name) + "]"))
    return out


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


class ResultStore:
    """Results, runs, job states, workers and schedules in Redis, behind named methods."""

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

    def _parse_result(self, key: str, raw: bytes) -> JobResult | None:
        """A stored result, or None (skipped, with a warning) when it cannot be read."""
        try:
            return JobResult.model_validate_json(unpack_result(raw), context=STORED)
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            self._skip(key, unreadable(e))
            return None

    @classmethod
    def from_url(cls, url: str, prefix: str = "farm") -> ResultStore:
        return cls(connect(url), prefix)

    # -- keys --------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    def series_key(self, sid: str) -> str:
        """A series' key: `series:<id>`, `%` and `:` in the id percent-encoded (the key has one more segment)."""
        return self.key("series", sid.replace("%", "%25").replace(":", "%3A"))

    @property
    def redbeat_prefix(self) -> str:
        return redbeat_prefix(self.p)

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
        """BrokerError (refused credentials) or BrokerUnavailable (unreachable), else nothing."""
        try:
            self.r.ping()
        except redis.RedisError as e:
            raise broker_error(e) from None

    # -- results -----------------------------------------------------------------------------
    @_redis
    def put_result(self, res: JobResult, *, overwrite: bool = False) -> bool:
        """Store a result and index it; returns False (and changes nothing) if one exists."""
        when = (res.finished_at or res.started_at).timestamp()
        doc = res.model_dump_json()
        stored = pack_result(doc)
        summary, rec = _derive(doc, len(stored))
        points = series_points_of(rec, when) if rec is not None else []
        old = self.rb.get(self.key("result", res.job_id)) if overwrite else None
        keys = [self.key("result", res.job_id), self.key("summary", res.job_id), self.key("meta")]
        keys += [self.key("series-meta"), *(self.series_key(sid) for sid, _, _ in points)]
        keys += self._index_keys(res)
        args: list[Any] = [stored, when, res.job_id, "1" if overwrite else "0", summary, len(points)]
        for part in (1, 0, 2):  # the points, their series ids, their meta (`_ADD_POINTS`)
            args += [pt[part] for pt in points]
        args += [SERIES_VERSION, SPEC_HASH_VERSION]
        written = bool(self._put(keys=keys, args=args))
        if written and old is not None:  # the replaced result's points are still in its series
            self.rebuild_series(self._series_of_raw(old) | {sid for sid, _, _ in points})
        return written

    @_redis
    def get_result(self, job_id: str) -> JobResult:
        """One result; NotFoundError when there is none, or when its record cannot be read (named)."""
        key = self.key("result", job_id)
        raw = self.rb.get(key)
        if raw is None:
            raise NotFoundError(f"no result for job {job_id!r}")
        try:
            return JobResult.model_validate_json(unpack_result(raw), context=STORED)
        except ValueError as e:
            raise NotFoundError(f"no readable result for job {job_id!r}: {key} {unreadable(e)}") from None

    @_redis
    def has_result(self, job_id: str) -> bool:
        return bool(self.r.exists(self.key("result", job_id)))

    @_redis
    def get_results(self, job_ids: Sequence[str], chunk: int = 1000) -> list[JobResult]:
        """Results for job ids (missing ones skipped), fetched with MGET in chunks."""
        out: list[JobResult] = []
        for i in range(0, len(job_ids), chunk):
            keys = [self.key("result", j) for j in job_ids[i : i + chunk]]
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
        groups = [("run", runs), ("machine", machines), ("device", devices), ("spec", spec_hashes), ("model", models)]
        used = [(kind, list(dict.fromkeys(values))) for kind, values in groups]
        used = [(kind, values) for kind, values in used if values]
        if not used or (len(used) == 1 and len(used[0][1]) == 1):
            key = self.key("idx", "all") if not used else self.key("idx", used[0][0], used[0][1][0])
            ids = list(self.r.zrangebyscore(key, lo, hi))
            return ids[-limit:] if limit else ids
        selected: dict[str, float] | None = None
        for kind, values in used:
            pipe = self.r.pipeline(transaction=False)
            for v in values:
                pipe.zrangebyscore(self.key("idx", kind, v), lo, hi, withscores=True)
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
            rkeys = [self.key("result", j) for j in ids]
            skeys = [self.key("summary", j) for j in ids]
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
                        rec = record_from_dict(pydantic_core.from_json(unpack_result(raw)))
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
                recs.append(record_from_summary(row))
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
                rec = record_from_summary(row) if row else None
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
        for kind in ("result", "summary", "idx", "series"):
            keys = list(self.r.scan_iter(match=self.key(kind, "*"), count=1000))
            if kind == "series" and self.r.exists(self.key("series-meta")):
                keys.append(self.key("series-meta"))
            pipe = self.r.pipeline(transaction=False)
            for k in keys:
                pipe.memory_usage(k, samples=0)
            out[kind] = sum(int(x or 0) for x in pipe.execute()) if keys else 0
        return out

    @_redis
    def count_ids(self, **selectors: Any) -> int:
        """How many job ids `query_ids(**selectors)` returns; one ZCOUNT when one index answers it."""
        self._ensure_current_hashes()
        groups = ("runs", "machines", "devices", "spec_hashes", "models")
        used = {k: list(dict.fromkeys(selectors.get(k) or ())) for k in groups}
        used = {k: v for k, v in used.items() if v}
        if not used or (len(used) == 1 and len(next(iter(used.values()))) == 1):
            since, until = selectors.get("since"), selectors.get("until")
            kind = {"runs": "run", "machines": "machine", "devices": "device", "spec_hashes": "spec", "models": "model"}
            key = self.key("idx", "all")
            if used:
                ((name, values),) = used.items()
                key = self.key("idx", kind[name], values[0])
            lo = since.timestamp() if since else "-inf"
            return int(self.r.zcount(key, lo, until.timestamp() if until else "+inf"))
        return len(self.query_ids(**selectors))

    # -- series --------------------------------------------------------------------------------
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
        mkey = self.key("series-meta")
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
        stored = self.r.hget(self.key("meta"), "series_version")
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
        ids = list(self.r.zrange(self.key("idx", "all"), 0, -1))
        blobs: dict[str, list[bytes]] = {}
        metas: dict[str, str] = {}
        for i in range(0, len(ids), chunk):
            for rec in self.load_records(ids[i : i + chunk]):
                for sid, point, meta in series_points_of(rec, record_at(rec)):
                    blobs.setdefault(sid, []).append(point)
                    metas[sid] = meta  # ids come oldest first: the last is the latest
        mkey = self.key("series-meta")
        stale = [sid for sid in self.r.hkeys(mkey) if sid not in blobs]
        pipe = self.rb.pipeline(transaction=False)
        for sid, parts in blobs.items():
            pipe.set(self.series_key(sid), b"".join(parts))
        if metas:
            pipe.hset(mkey, mapping=metas)
        for sid in stale:
            pipe.delete(self.series_key(sid))
            pipe.hdel(mkey, sid)
        pipe.hset(self.key("meta"), "series_version", SERIES_VERSION)
        pipe.execute()
        return len(blobs)

    def _job_at(self, spec_hash: str, machine: str, device: str, phase: str, at: float) -> str | None:
        """The job of a series whose result finished at `at` (the latest of a narrowed window)."""
        ids = list(self.r.zrangebyscore(self.key("idx", "spec", spec_hash), at, at))
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
        want = [set(x) for x in (machines, devices, models, spec_hashes, phases)]
        codes = [_status_code(s) for s in statuses]
        lo = since.timestamp() if since else -np.inf
        hi = until.timestamp() if until else np.inf
        chosen: list[tuple[str, float, str, str, str, str, str, str]] = []
        for sid, raw in self.r.hgetall(self.key("series-meta")).items():
            try:
                at, job, model, spec_hash, machine, device, phase = pydantic_core.from_json(raw)
                if not isinstance(at, int | float) or not all(
                    isinstance(x, str) for x in (job, model, spec_hash, machine, device, phase)
                ):
                    raise ValueError("a field is not of its type")
            except ValueError as e:
                self._skip(self.key("series-meta") + f" {sid[:120]}", unreadable(e))
                continue
            fields_ = (machine, device, model, spec_hash, phase)
            if all(not w or v in w for w, v in zip(want, fields_, strict=True)):
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

    # -- removing and mending records ---------------------------------------------------------
    def _indexes_of(self, raw: bytes | None) -> list[str] | None:
        """The index keys a stored result was filed under, read leniently from its JSON (the
        fields `put_result` indexed by); None when they cannot be told from it."""
        try:
            doc = json.loads(unpack_result(raw)) if raw is not None else None
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        values = [v for k in ("run_id", "device", "spec_hash", "model_name") if isinstance(v := doc.get(k), str)]
        if len(values) != 4:
            return None
        run_id, device, spec_hash, model = values
        keys = [self.key("idx", "all"), self.key("idx", "run", run_id), self.key("idx", "device", device)]
        keys += [self.key("idx", "spec", spec_hash), self.key("idx", "model", model)]
        machine = doc.get("machine")
        if isinstance(machine, dict) and isinstance(machine.get("machine_tag"), str):
            keys.append(self.key("idx", "machine", machine["machine_tag"]))
        elif machine is not None:
            return None
        return keys

    def _all_indexes(self) -> list[str]:
        """Every index key (SCAN): only when a record too broken to name its own indexes is removed."""
        return sorted(k for k in self.r.scan_iter(match=self.key("idx", "*"), count=1000, _type="zset"))

    def _unfile(self, pipe: Any, job_ids: Sequence[str], raws: Sequence[bytes | None]) -> None:
        """Queue on `pipe` the removal of results, their summaries and every index entry."""
        everywhere: list[str] | None = None
        for job_id, raw in zip(job_ids, raws, strict=True):
            keys = self._indexes_of(raw)
            if keys is None:
                everywhere = self._all_indexes() if everywhere is None else everywhere
                keys = everywhere
            pipe.delete(self.key("result", job_id), self.key("summary", job_id))
            for k in keys:
                pipe.zrem(k, job_id)

    @_redis
    def delete_results(self, job_ids: Sequence[str]) -> list[str]:
        """Remove results (readable or not) with their summaries and index entries, in one transaction.

        NotFoundError (and nothing removed) when a job id has neither a result nor an index entry.
        The run and the job's state hash keep their record of the job (it then has no result).
        """
        ids = list(dict.fromkeys(job_ids))
        rkeys = [self.key("result", j) for j in ids]
        with self.rb.pipeline(transaction=True) as pipe:
            pipe.watch(*rkeys)
            raws = pipe.mget(rkeys) if rkeys else []
            indexed = [pipe.zscore(self.key("idx", "all"), j) is not None for j in ids]
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
        raws = dict(zip(job_ids, client.mget([self.key("result", j) for j in job_ids]), strict=True)) if job_ids else {}
        results = {j for j, raw in raws.items() if raw is not None}
        result_runs = {j: _run_named(raws[j]) for j in sorted(results)}
        jobs = {j for j in job_ids if client.exists(self.key("job", j))} if job_ids else set()
        runs: dict[str, tuple[str, ...]] = {}
        for run_id in run_ids:
            raw = client.hget(self.key("run", run_id), "jobs")
            if raw is None and not client.exists(self.key("run", run_id)):
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
        watched = [self.key(kind, j) for j in ids for kind in ("result", "job")]
        watched += [self.key("run", r) for r in run_ids]
        docs = [pack_result(r.model_dump_json()) for r in results]
        with self.rb.pipeline(transaction=True) as pipe:
            pipe.watch(*watched)
            if self._occupancy(pipe, ids, run_ids) != seen:
                raise FarmError("the farm changed while the import was checked: nothing was written; run it again")
            old = [r.job_id for r in results if r.job_id in replace]
            old_raws = [pipe.get(self.key("result", j)) for j in old]
            pipe.multi()
            self._unfile(pipe, old, old_raws)
            for res, doc in zip(results, docs, strict=True):
                when = (res.finished_at or res.started_at).timestamp()
                pipe.set(self.key("result", res.job_id), doc)
                for k in self._index_keys(res):
                    pipe.zadd(k, {res.job_id: when})
                skey, (summary, rec) = self.key("summary", res.job_id), _derive(unpack_result(doc), len(doc))
                if summary:
                    pipe.set(skey, summary)
                else:
                    pipe.delete(skey)
                points = series_points_of(rec, when) if rec is not None else []
                if points:
                    pkeys = [self.key("series-meta"), *(self.series_key(sid) for sid, _, _ in points)]
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
                    touched |= {series_id(res.spec_hash, m, res.device, ph) for ph in res.phases}
            self.rebuild_series(touched)

    # -- spec hash migration -----------------------------------------------------------------
    def _ensure_current_hashes(self) -> None:
        """Migrate the spec indexes once if they follow an older SPEC_HASH_VERSION (one HGET per store)."""
        if self._hashes_current:
            return
        stored = self.r.hget(self.key("meta"), "spec_hash_version")
        if stored is None or int(stored) < SPEC_HASH_VERSION:
            try:
                self.migrate_spec_hashes()
            except BrokerError as e:
                if "READONLY" not in str(e):
                    raise
                # A read-only replica reports what it holds; the primary migrates.
        self._hashes_current = True

    @_redis
    def migrate_spec_hashes(self, chunk: int = 500) -> int:
        """Re-derive every stored result's spec hash from its spec (`BenchSpec.spec_hash`); returns how many moved.

        A result whose hash changed is rewritten with the new one (only that field), moved from
        `idx:spec:<old>` to `idx:spec:<new>` with its finish time, and its summary dropped (the next
        report rebuilds it). Idempotent and safe to run from several processes at once; a result
        replaced meanwhile is left alone, and one whose spec no longer validates keeps its hash.
        Runs by itself on the first read after an upgrade, then records SPEC_HASH_VERSION.
        """
        entries = self.r.zrange(self.key("idx", "all"), 0, -1, withscores=True)
        derived: dict[str, str] = {}  # spec JSON -> hash (a sweep's thousands of results share a few specs)
        moved = 0
        for i in range(0, len(entries), chunk):
            part = entries[i : i + chunk]
            raws = self.rb.mget([self.key("result", job_id) for job_id, _ in part])
            pipe = self.rb.pipeline(transaction=False)
            for (job_id, score), raw in zip(part, raws, strict=True):
                if raw is None:
                    continue
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
                    self.key("result", job_id),
                    self.key("idx", "spec", new),
                    self.key("idx", "spec", old),
                    self.key("summary", job_id),
                ]
                stored = pack_result(text) if raw[:1] == PACKED_1 else text.encode()  # in the format it had
                self._rehash(keys=keys, args=[raw, stored, score, job_id], client=pipe)
            moved += sum(int(x) for x in pipe.execute())
        self.r.hset(self.key("meta"), "spec_hash_version", SPEC_HASH_VERSION)
        return moved

    # -- runs --------------------------------------------------------------------------------
    @_redis
    def create_run(
        self,
        run_id: str,
        specs: Sequence[BenchSpec],
        jobs: Sequence[Job],
        name: str | None = None,
        tags: dict[str, str] | None = None,
        state: str = "queued",
    ) -> None:
        """Record a run and its jobs (state `state`) in one transaction. One spec is stored as
        `spec`; several (a sweep) as `specs`; none (an import) as an empty `spec`."""
        pipe = self.r.pipeline(transaction=True)
        self._run_commands(pipe, run_id, specs, jobs, name, tags, state)
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
        pipe.hset(self.key("run", run_id), mapping=_flat(run))
        pipe.zadd(self.key("runs"), {run_id: now})
        for j in jobs:
            doc = {"run_id": run_id, "device": j.device, "queue": j.queue, "state": state, "worker": "",
                   "attempts": 0, "updated_at": now, "job": j.model_dump_json()}  # fmt: skip
            pipe.hset(self.key("job", j.job_id), mapping=doc)

    @_redis
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

    @_redis
    def run_exists(self, run_id: str) -> bool:
        return bool(self.r.exists(self.key("run", run_id)))

    @_redis
    def list_runs(self, limit: int = 50) -> list[str]:
        """The newest run ids, newest last."""
        return list(reversed(self.r.zrevrange(self.key("runs"), 0, limit - 1)))

    @_redis
    def latest_run(self) -> str:
        runs = self.r.zrevrange(self.key("runs"), 0, 0)
        if not runs:
            raise NotFoundError("no run has been submitted yet")
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
            pipe.hget(self.key("job", j), "job")
        out = []
        for j, doc in zip(run["jobs"], pipe.execute(), strict=True):
            if not doc:
                continue
            try:
                out.append(Job.model_validate_json(doc, context=STORED))
            except ValueError as e:
                self._skip(self.key("job", j), unreadable(e))
        return out

    @_redis
    def job_rows(self, run_id: str) -> list[tuple[str, dict[str, str], str | None]]:
        """(job id, its state hash, the stored result's status or None) for every job of a run."""
        jobs = self.get_run(run_id)["jobs"]
        pipe = self.r.pipeline(transaction=False)
        for j in jobs:
            pipe.hgetall(self.key("job", j))
        hashes = pipe.execute()
        results = self.rb.mget([self.key("result", j) for j in jobs]) if jobs else []
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
            self._skip(self.key("result", job_id), unreadable(e))
            return "unreadable"

    @_redis
    def set_job_state(self, job_id: str, state: str, **fields: Any) -> None:
        self.r.hset(
            self.key("job", job_id),
            mapping={"state": state, "updated_at": time.time(), **{k: v for k, v in fields.items() if v is not None}},
        )

    @_redis
    def set_job_progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        self.r.hset(self.key("job", job_id), mapping={"phase": phase, "done": done, "total": total})

    @_redis
    def job_field(self, job_id: str, field: str) -> str | None:
        """One field of a job's state hash (state, worker, attempts, ...), None when unset."""
        value = self.r.hget(self.key("job", job_id), field)
        return None if value is None else str(value)

    @_redis
    def count_attempt(self, job_id: str) -> int:
        """Count one more delivery of a job; returns the count."""
        return int(self.r.hincrby(self.key("job", job_id), "attempts", 1))

    # -- workers -----------------------------------------------------------------------------
    @_redis
    def beat_worker(self, name: str, doc: Mapping[str, Any], ttl_s: int) -> None:
        """A worker's heartbeat: its hash (lists as JSON), expiring `ttl_s` after this beat."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key("worker", name), mapping=_flat(doc))
        pipe.expire(self.key("worker", name), ttl_s)
        pipe.sadd(self.key("workers"), name)
        pipe.execute()

    @_redis
    def remove_worker(self, name: str) -> None:
        """Forget a worker now (it stopped, or it died and its heartbeat must not count)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.key("worker", name))
        pipe.srem(self.key("workers"), name)
        pipe.execute()

    @_redis
    def worker_alive(self, name: str) -> bool:
        return bool(self.r.exists(self.key("worker", name)))

    @_redis
    def worker_docs(self) -> list[tuple[str, dict[str, str]]]:
        """(name, heartbeat hash) of every worker whose heartbeat has not expired, by name.
        Names whose hash expired are removed from the set."""
        names = sorted(self.r.smembers(self.key("workers")))
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(self.key("worker", n))
        out = []
        for n, raw in zip(names, pipe.execute(), strict=True):
            if not raw:  # heartbeat expired: the worker is gone
                self.r.srem(self.key("workers"), n)
                continue
            out.append((n, raw))
        return out

    # -- schedules ---------------------------------------------------------------------------
    @_redis
    def put_schedule(self, name: str, doc: Mapping[str, Any]) -> None:
        """Store (replace) a schedule's hash and list its name."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.key("schedule", name))
        pipe.hset(self.key("schedule", name), mapping=_flat(doc))
        pipe.sadd(self.key("schedules"), name)
        pipe.execute()

    @_redis
    def get_schedule(self, name: str) -> dict[str, str] | None:
        raw = self.r.hgetall(self.key("schedule", name))
        return dict(raw) if raw else None

    @_redis
    def schedule_names(self) -> list[str]:
        return sorted(self.r.smembers(self.key("schedules")))

    @_redis
    def delete_schedule(self, name: str) -> bool:
        """Remove a schedule with its firings and judged runs; False when there was none."""
        if not self.r.exists(self.key("schedule", name)):
            return False
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(*(self.key("schedule", name, *rest) for rest in ((), ("fires",), ("judged",))))
        pipe.srem(self.key("schedules"), name)
        pipe.execute()
        return True

    @_redis
    def schedule_fires(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest firings of a schedule, newest first."""
        return [json.loads(x) for x in self.r.lrange(self.key("schedule", name, "fires"), 0, limit - 1)]

    @_redis
    def record_fire(self, name: str, doc: Mapping[str, Any]) -> None:
        """Add a firing (newest first), keeping the newest `FIRES_KEPT`."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self.key("schedule", name, "fires"), json.dumps(doc))
        pipe.ltrim(self.key("schedule", name, "fires"), 0, FIRES_KEPT - 1)
        pipe.execute()

    @_redis
    def was_judged(self, name: str, run_id: str) -> bool:
        return bool(self.r.sismember(self.key("schedule", name, "judged"), run_id))

    @_redis
    def mark_judged(self, name: str, run_id: str) -> bool:
        """Mark a run of a schedule judged; False when another process marked it first."""
        return bool(self.r.sadd(self.key("schedule", name, "judged"), run_id))
