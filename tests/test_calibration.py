"""The measured GEMM roofline beside the CPU's ceiling: cached per host, re-measured when it was
taken under load or a phase beat it; never the ceiling an honest result is judged against."""

from __future__ import annotations

import json
import socket
import time

import torch

from farm.engine.hardware import cpu_peak
from farm.engine.roofline import _roofline_file, _roofline_key, roofline, roofline_shapes
from farm.engine.runner import run_job
from farm.spec import parse_spec


def _spec():
    return parse_spec(
        {"model": "gpt2-tiny", "batch": 1, "seq": 32, "repeats": 2, "warmup": 0, "phases": ["forward"], "threads": 1}
    )


def _cache() -> dict:
    return json.loads(_roofline_file().read_text())


def _set(key: str, **fields: object) -> None:
    cache = _cache()
    cache[key].update(fields)
    _roofline_file().write_text(json.dumps(cache))


def test_roofline_is_the_best_model_gemm_cached_with_host_and_load() -> None:
    spec = _spec()
    first = roofline(spec, 1)
    assert first.flops > 0
    host = socket.gethostname()
    assert first.source.startswith("measured: best GEMM of 5 model shapes") and f"on {host} at load" in first.source
    key = _roofline_key(spec, 1)
    assert key.startswith(f"{host}|") and f"|{torch.__version__}|1|float32|highest|" in key
    entry = _cache()[key]
    # The model's own shapes: M = batch x seq tokens, d = 128, vocab 4096.
    assert roofline_shapes(spec) == [
        ("qkv", 32, 128, 384),
        ("attn proj", 32, 128, 128),
        ("mlp fc", 32, 128, 512),
        ("mlp proj", 32, 512, 128),
        ("lm head", 32, 128, 4096),
    ]
    assert set(entry["shapes"]) == {label for label, *_ in roofline_shapes(spec)}
    assert entry["flops"] == max(s["flops"] for s in entry["shapes"].values())  # the best shape, not a mean
    assert entry["hostname"] == host and isinstance(entry["load_avg_1m"], float) and "loaded" in entry
    # Cached: the same figure comes back without measuring again.
    _set(key, flops=12345.0, loaded=False)
    assert roofline(spec, 1).flops == 12345.0


def test_roofline_taken_under_load_is_measured_again() -> None:
    spec = _spec()
    roofline(spec, 1)
    key = _roofline_key(spec, 1)
    _set(key, flops=1.0, loaded=True, measured_at=time.time() - 3600)
    again = roofline(spec, 1)
    assert again.flops > 1.0 and _cache()[key]["flops"] == again.flops
    # A figure taken under load but recently is kept (the cost stays bounded on a busy host).
    _set(key, flops=2.0, loaded=True, measured_at=time.time())
    assert roofline(spec, 1).flops == 2.0


def test_a_phase_beating_a_low_cached_roofline_remeasures_it_and_keeps_the_ceiling() -> None:
    spec = _spec()
    roofline(spec, 1)
    key = _roofline_key(spec, 1)
    _set(key, flops=1e6, loaded=False, measured_at=time.time())  # 1 MFLOP/s: as if the machine was saturated

    result = run_job(spec.expand()[0])

    assert result.status == "ok", result.error
    fwd = result.phases["forward"]
    ceiling = cpu_peak(spec.dtype, spec.matmul_precision, 1)
    assert ceiling is not None and fwd.peak_flops == ceiling.flops  # the theoretical ceiling, not the roofline
    assert fwd.peak_source is not None and fwd.peak_source.startswith("theoretical:")
    assert fwd.mfu is not None and 0 < fwd.mfu < 1
    assert fwd.roofline_flops is not None and fwd.roofline_flops > 1e6
    assert any("roofline re-measured" in w for w in result.warnings)
    assert _cache()[key]["flops"] == fwd.roofline_flops


def test_roofline_restores_torch_settings() -> None:
    threads, prec = torch.get_num_threads(), torch.get_float32_matmul_precision()
    bf16 = parse_spec({"model": "gpt2-tiny", "batch": 1, "seq": 8, "dtype": "bfloat16", "matmul_precision": "high"})
    roofline(bf16, 1, refresh=True)
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, prec)
