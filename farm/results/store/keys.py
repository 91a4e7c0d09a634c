"""Every Redis key the farm writes, and the only code that spells one: `KEY_TABLE` and `KeyNames`,
through which the rest of the store builds its keys. No expiry but heartbeats; results idempotent
by job id.

Keys (prefix `farm`, see `Settings.key_prefix`); `KEY_TABLE` below lists the same patterns, and a
test checks every key the farm writes against it:

| key | type | holds |
| --- | --- | --- |
| `farm:result:<job_id>` | string | a `JobResult`'s JSON, compressed (`pack_result`), written once (SET NX) |
| `farm:summary:<job_id>` | string | the compact record reports read (`farm.results.records`), written with it |
| `farm:idx:<kind>:<value>` | sorted set | job ids by finish time (epoch s); kinds all, run, machine, |
|  |  | device (the tag the job named, its series device and kind), spec, model |
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
|  |  | `SERIES_VERSION` once the series were built from every stored result (`backfill_series`); |
|  |  | `device_index_version`: `DEVICE_INDEX_VERSION` once every result is in its device indexes |

Celery's broker keys (queues, `unacked`, bindings) are kombu's, not the farm's.
"""

from __future__ import annotations

import json

from farm.results.machine import gpu_ran_on
from farm.results.result import JobResult
from farm.results.store.codec import unpack_result
from farm.spec import series_device

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

# The index (`idx:<kind>:<value>`) of each selector of `ResultStore.query_ids`, in the order it reads them.
INDEX_KINDS = {"runs": "run", "machines": "machine", "devices": "device", "spec_hashes": "spec", "models": "model"}


def redbeat_prefix(prefix: str) -> str:
    """The key prefix celery-redbeat is given for its entries and lock (`<prefix>:redbeat:`)."""
    return f"{prefix}:redbeat:"


class KeyNames:
    """The farm's key names under the prefix `p` (`ResultStore` is one): every key the store reads
    or writes is built by these methods."""

    p: str

    def key(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    def series_key(self, sid: str) -> str:
        """A series' key: `series:<id>`, `%` and `:` in the id percent-encoded (the key has one more segment)."""
        return self.key("series", sid.replace("%", "%25").replace(":", "%3A"))

    @property
    def redbeat_prefix(self) -> str:
        return redbeat_prefix(self.p)

    def _result_key(self, job_id: str) -> str:
        return self.key("result", job_id)

    def _summary_key(self, job_id: str) -> str:
        return self.key("summary", job_id)

    def _meta_key(self) -> str:
        return self.key("meta")

    def _series_meta_key(self) -> str:
        return self.key("series-meta")

    def _all_key(self) -> str:
        """The index of every result (`idx:all`)."""
        return self.key("idx", "all")

    def _index_key(self, kind: str, value: str) -> str:
        """One value's index of one kind (`idx:<kind>:<value>`; kinds: `INDEX_KINDS`' values)."""
        return self.key("idx", kind, value)

    def _spec_index_key(self, spec_hash: str) -> str:
        """The index of one spec hash (`idx:spec:<hash>`)."""
        return self._index_key("spec", spec_hash)

    def _patterns(self) -> dict[str, str]:
        """The SCAN pattern of every key of each kind that holds results (`result_memory`)."""
        return {kind: self.key(kind, "*") for kind in ("result", "summary", "idx", "series")}

    def _index_pattern(self) -> str:
        return self.key("idx", "*")

    def _run_key(self, run_id: str) -> str:
        return self.key("run", run_id)

    def _runs_key(self) -> str:
        return self.key("runs")

    def _job_key(self, job_id: str) -> str:
        return self.key("job", job_id)

    def _worker_key(self, name: str) -> str:
        return self.key("worker", name)

    def _workers_key(self) -> str:
        return self.key("workers")

    def _schedule_key(self, name: str) -> str:
        return self.key("schedule", name)

    def _fires_key(self, name: str) -> str:
        return self.key("schedule", name, "fires")

    def _judged_key(self, name: str) -> str:
        return self.key("schedule", name, "judged")

    def _schedules_key(self) -> str:
        return self.key("schedules")

    def _device_index_keys(self, device: str, machine: str | None, gpu: str | None = None) -> list[str]:
        """The device indexes a result is filed under: the tag its job named, its series device
        (`farm.spec.series_device`) and its kind; for a CPU `cpu:<machine>` too. So `--device cpu`
        and `--device cpu:vm` find a CPU result, and `--device cuda` and `--device cuda:h100` a result
        on an H100, however the job was spelled."""
        canonical = series_device(device, gpu)
        kind = canonical.partition(":")[0]
        tags = [device]
        if canonical != device or kind != device or (machine and kind in ("cpu", "mps")):
            tags += [canonical, kind] + ([f"{kind}:{machine}"] if machine and kind in ("cpu", "mps") else [])
        return [self._index_key("device", t) for t in dict.fromkeys(tags)]

    def _index_keys(self, res: JobResult) -> list[str]:
        machine = res.machine.machine_tag if res.machine is not None else None
        keys = [
            self._all_key(),
            self._index_key("run", res.run_id),
            *self._device_index_keys(res.device, machine, res.gpu_tag()),
            self._spec_index_key(res.spec_hash),
            self._index_key("model", res.model_name),
        ]
        if machine is not None:
            keys.append(self._index_key("machine", machine))
        return keys

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
        machine = doc.get("machine")
        tag = machine.get("machine_tag") if isinstance(machine, dict) else None
        if machine is not None and not isinstance(tag, str):
            return None
        gpus = machine.get("gpus") if isinstance(machine, dict) else None
        gpu = gpu_ran_on(device, doc.get("torch_device"), gpus if isinstance(gpus, list) else [])
        keys = [self._all_key(), self._index_key("run", run_id), *self._device_index_keys(device, tag, gpu)]
        keys += [self._spec_index_key(spec_hash), self._index_key("model", model)]
        if tag is not None:
            keys.append(self._index_key("machine", tag))
        return keys
