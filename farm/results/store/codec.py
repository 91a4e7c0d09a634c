"""How values are stored: a result's JSON packed against a fixed dictionary (`pack_result`,
`unpack_result`), a hash's fields (`_flat`), a result's summary derived from its JSON (`_derive`),
and the one line that says why a stored record cannot be read (`unreadable`).

A result is stored as raw deflate against a fixed dictionary (`pack_result`: about 600 bytes
instead of 4,000 of JSON); one that does not start with the format's byte is the plain JSON older
versions stored, read as it is (`unpack_result`).

Redis contents are untrusted too: a reader that meets a record it cannot parse (garbage JSON, a
result that no longer validates, a summary that does not unpack) skips it, logs one warning naming
the key on the `farm.results.store` logger and lists it in `ResultStore.skipped` (`StoreBase._skip`,
with the reason `unreadable` gives); a bad summary is only a cache and is re-derived from its result.
A record that reads but whose figures do not follow from its raw times is not skipped: it reads back
`invalid`, with the reason (`farm.results.verify`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

import pydantic
import pydantic_core

from farm.results.records import Record, record_from_dict, summary_json
from farm.results.verify import verify_document

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


def _flat(mapping: Mapping[str, Any]) -> dict[str, str | int | float]:
    """A hash mapping: lists and dicts as JSON, None as the empty string."""
    return {k: json.dumps(v) if isinstance(v, list | dict) else ("" if v is None else v) for k, v in mapping.items()}


def _derive(doc: str | bytes, stored_bytes: int) -> tuple[str, Record | None]:
    """The summary of a result's JSON stored in `stored_bytes` bytes and its record, as the read check
    sees it (`farm.results.verify.verify_document`: what does not follow from its raw times is
    `invalid` there, never in the stored result); ("", None) when they cannot be derived (the summary
    is only a cache: the reader re-derives it, or skips the result)."""
    try:
        rec = record_from_dict(verify_document(pydantic_core.from_json(doc)))
        return summary_json(rec, stored_bytes), rec
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", None
