"""The farm's Redis schema: the only code that names a Redis key. No expiry but heartbeats;
results idempotent by job id. Callers use `ResultStore` and the names below; each module holds one
concern, and imports only modules listed before it:

| module | holds |
| --- | --- |
| `lua` | the Lua scripts: a result's atomic write, the points of an import, a report's summary fetch, a rehash |
| `codec` | how values are stored: `pack_result` / `unpack_result`, hash fields, summaries derived, `unreadable` |
| `keys` | the key table (docstring and `KEY_TABLE`) and `KeyNames`, the only code that spells a key; `redbeat_prefix` |
| `points` | a series point's format (`POINT`, `STATUS_CODES`, `SERIES_VERSION`) and a record's points |
| `connection` | `connect`, `broker_error` and the `_redis` decorator (every Redis failure a `BrokerError`) |
| `base` | `StoreBase`: the two clients, the prefix, the registered scripts, skipped records and their log |
| `spec_hashes` | the one-off re-derivation of spec hashes after a `SPEC_HASH_VERSION` upgrade |
| `results` | reading results: by job id, the job ids a selection matches, report records and their summaries |
| `series` | series points: read (`series_points`), rebuilt after a delete or replace, backfilled once |
| `runs` | runs and their jobs: job state, progress, attempts |
| `workers` | worker heartbeats and the worker registry |
| `schedules` | schedules, their firings and judged marks |
| `writes` | writing results (`put_result`), deleting them, imports (`occupancy`, `write_import`) |
| `facade` | `ResultStore`, which combines the mixins above |

Redis contents are untrusted: a reader skips a record it cannot parse, logs one warning naming its
key on the `farm.results.store` logger and lists it in `ResultStore.skipped`. Every Redis failure
becomes a `BrokerError` (`BrokerUnavailable` when Redis cannot be reached), so callers never see
redis-py's exceptions. This package never imports torch.
"""

from farm.results.store.codec import PACKED_1, pack_result, unpack_result
from farm.results.store.connection import broker_error, connect
from farm.results.store.facade import ResultStore
from farm.results.store.keys import KEY_TABLE, redbeat_prefix
from farm.results.store.points import POINT, POINT_BYTES, SERIES_VERSION, STATUS_CODES, series_id
from farm.results.store.series import Series
from farm.results.store.writes import Occupancy

__all__ = [
    "KEY_TABLE",
    "PACKED_1",
    "POINT",
    "POINT_BYTES",
    "SERIES_VERSION",
    "STATUS_CODES",
    "Occupancy",
    "ResultStore",
    "Series",
    "broker_error",
    "connect",
    "pack_result",
    "redbeat_prefix",
    "series_id",
    "unpack_result",
]
