"""The generate phase: cached decoding equals a full recompute, its counts, its figures through the
real CLI, and the bandwidth check (an impossible decode is `invalid`)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from farm.cli.main import app
from farm.engine.generate import greedy_step, run_generate
from farm.engine.hardware import _size_bytes, last_level_cache
from farm.engine.kvcache import KVCache
from farm.engine.model import GPT
from farm.engine.phases import JobContext
from farm.engine.timing import Timer
from farm.flops import (
    decode_flops,
    decode_step_bytes,
    decode_step_flops,
    forward_flops,
    generate_flops,
    kv_cache_bytes,
    min_phase_flops,
    param_count,
    phase_flops,
    predict_memory,
    prefill_flops,
)
from farm.results.decode import Generation, derive_generation, step_bytes
from farm.results.peaks import CACHE_MARGIN, GPU_BANDWIDTH_GBS, Bandwidth, Peak, gpu_bandwidth
from farm.results.result import judge
from farm.spec import MAX_GEN_TOKENS, PRESETS, ModelShape, parse_spec

# Cached and recomputed logits differ only by float32 rounding (another summation order in
# attention): 1e-4 absolute is ~100x the largest difference seen (5e-7 on gpt2-tiny).
ATOL = 1e-4
TWO_LAYER = ModelShape(name="two-layer", n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)


def _model(shape: ModelShape | str) -> GPT:
    torch.manual_seed(0)
    return GPT(shape).eval()


@pytest.mark.parametrize("shape", ["gpt2-tiny", TWO_LAYER], ids=["gpt2-tiny", "two-layer"])
@pytest.mark.parametrize("batch", [1, 3])
def test_cached_logits_equal_a_full_recompute(shape: ModelShape | str, batch: int) -> None:
    """Prefill, then a chunk of 3 tokens over the cache (the masked path), then one token at a time:
    every position's logits equal those of one forward over the whole sequence."""
    model = _model(shape)
    prompt, total = 10, 20
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (batch, total), generator=g)
    with torch.inference_mode():
        full, _ = model(idx)
        cache = KVCache(model.config, batch, total, torch.float32, model.device)
        parts = [model.forward_cached(idx[:, :prompt], cache), model.forward_cached(idx[:, prompt : prompt + 3], cache)]
        parts += [model.forward_cached(idx[:, i : i + 1], cache) for i in range(prompt + 3, total)]
        cached = torch.cat(parts, dim=1)
    assert cache.length == total
    assert cached.shape == full.shape == (batch, total, model.config.vocab_size)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)


def test_greedy_decoding_equals_greedy_recompute() -> None:
    """The tokens greedy decoding picks with the cache are those a full recompute per token picks."""
    model = _model("gpt2-tiny")
    batch, prompt, new = 2, 12, 8
    idx = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        cache = KVCache(model.config, batch, prompt + new, torch.float32, model.device)
        tok = greedy_step(model, idx, cache)
        cached = [tok]
        for _ in range(new - 1):
            tok = greedy_step(model, tok, cache)
            cached.append(tok)
        seq = idx
        recomputed = []
        for _ in range(new):
            logits, _ = model(seq)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            recomputed.append(nxt)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(torch.cat(cached, 1), torch.cat(recomputed, 1))


def test_the_cache_refuses_positions_past_its_capacity() -> None:
    model = _model(TWO_LAYER)
    cache = KVCache(model.config, 1, 4, torch.float32, model.device)
    assert cache.nbytes == kv_cache_bytes(TWO_LAYER, 1, 4, 4)
    with torch.inference_mode():
        model.forward_cached(torch.zeros(1, 4, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="cannot hold position 4"):
            model.forward_cached(torch.zeros(1, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="above the context"):
        KVCache(model.config, 1, 65, torch.float32, model.device)


def test_generate_counts() -> None:
    gpt2 = PRESETS["gpt2"]
    C, L, V = gpt2.n_embd, gpt2.n_layer, gpt2.vocab_size
    # A decode step reads every weight once (the position table: one row) and each sequence's cache.
    weights = (param_count(gpt2) - 1023 * C) * 4
    assert decode_step_bytes(gpt2, 2, 256, 4, 4) == weights + 2 * L * 2 * 256 * C * 4
    # Its one query reads all 256 cached positions: attention at the full count, 4 * L * n * C.
    assert decode_step_flops(gpt2, 1, 256) == 2 * (12 * L * C * C + C * V) + 4 * L * 256 * C
    # The prefill's LM head runs on the last position only.
    assert prefill_flops(gpt2, 1, 128) == forward_flops(gpt2, 1, 128) - 127 * 2 * C * V
    spec = parse_spec({"model": "gpt2", "batch": 2, "seq": 128, "gen_tokens": 5, "phases": ["generate"]})
    steps = sum(decode_step_flops(gpt2, 2, 128 + i) for i in range(1, 5))
    assert decode_flops(gpt2, 2, 128, 5) == steps
    assert phase_flops(spec, "generate") == generate_flops(gpt2, 2, 128, 5) == prefill_flops(gpt2, 2, 128) + steps
    least = min_phase_flops(gpt2, 2, 128, "generate", gen_tokens=5)
    assert least == prefill_flops(gpt2, 2, 128, causal=True) + steps < phase_flops(spec, "generate")
    pred = predict_memory(spec, "generate")
    assert pred.kv_cache == kv_cache_bytes(gpt2, 2, 133, 4) and pred.total > pred.weights + pred.kv_cache
    assert "kv_cache" in pred.describe()


def _spec_gpt2(**kw: object):
    return parse_spec({"model": "gpt2", "batch": 1, "seq": 128, "gen_tokens": 5, "phases": ["generate"], **kw})


def test_derived_figures() -> None:
    spec = _spec_gpt2()
    tokens = [0.04, 0.05, 0.06, 0.10]
    bw = Bandwidth(bytes_per_s=20e9, source="fixed", tolerance=2.0, cache_bytes=32 << 20, cache_source="fixed")
    gen = derive_generation(spec, [0.2, 0.3, 0.25], [0.3, 0.25, 0.2], tokens, kv_cache_bytes_observed=7, bandwidth=bw)
    assert gen.decode_steps == 4 and gen.prefill_s == 0.25 and gen.decode_s == 0.25
    assert gen.decode_tokens_per_s == pytest.approx(4 / 0.25)
    assert gen.token_p50_s == pytest.approx(0.055) and gen.token_p90_s == pytest.approx(0.088)
    assert gen.token_p99_s == pytest.approx(0.0988)
    total = sum(step_bytes(spec, i) for i in range(1, 5))
    assert gen.bytes_per_step == total / 4 == gen.bytes_per_token  # batch 1
    assert gen.achieved_bandwidth == pytest.approx(total / 0.25)
    assert gen.mbu == pytest.approx(total / 0.25 / 20e9)
    assert gen.kv_cache_bytes_predicted == kv_cache_bytes(spec.shape, 1, 133, 4)
    assert gen.bandwidth_check == "checked" and gen.bandwidth_note is None


def _judged(spec, step_s: float, bandwidth: Bandwidth | None, peak: Peak | None = None):
    steps = spec.gen_tokens - 1
    raw = Generation(
        gen_tokens=spec.gen_tokens,
        decode_steps=steps,
        prefill_times_s=[0.1],
        decode_times_s=[step_s * steps],
        token_times_s=[step_s] * steps,
    )
    peak = peak or Peak(flops=1e15, source="a high fixed peak")
    return judge(
        spec, "generate", [0.1 + step_s * steps], [], peak=peak, peak_memory_bytes=None, memory_kind=None,
        breakdown={}, generation=raw, bandwidth=bandwidth,
    )  # fmt: skip


def test_a_decode_faster_than_the_bandwidth_allows_is_invalid() -> None:
    """gpt2 fp32 moves ~514 MB a step, far above a 32 MiB cache: at 20 GB/s a step takes at least
    25.7 ms, and the uncertain ceiling (x 2) allows 12.9 ms. 1 ms is impossible (invalid), 30 ms
    plausible (ok), 17 ms within the tolerance (unverified). The FLOP check passes at all three."""
    spec = _spec_gpt2()
    bw = Bandwidth(bytes_per_s=20e9, source="fixed 20 GB/s", tolerance=2.0, cache_bytes=32 << 20, cache_source="fixed")
    least = step_bytes(spec, 1)
    assert least > CACHE_MARGIN * bw.cache_bytes
    fast = _judged(spec, 1e-3, bw)
    assert fast.status == "invalid"
    assert "above the memory bandwidth 20 GB/s (fixed 20 GB/s) x 2" in (fast.invalid_reason or "")
    assert fast.generate is not None and fast.generate.mbu is not None and fast.generate.mbu > 2
    assert _judged(spec, 30e-3, bw).status == "ok"
    within = _judged(spec, least / 30e9, bw)
    assert within.status == "unverified" and "within x 2" in (within.invalid_reason or "")
    exact = bw.model_copy(update={"tolerance": 1.0})  # a published GPU figure: no tolerance
    assert _judged(spec, least / 30e9, exact).status == "invalid"


def test_below_the_cache_or_without_a_ceiling_the_decode_cannot_be_ruled_out() -> None:
    spec = parse_spec({"model": "gpt2-tiny", "batch": 1, "seq": 32, "gen_tokens": 5, "phases": ["generate"]})
    bw = Bandwidth(bytes_per_s=1e9, source="fixed", tolerance=2.0, cache_bytes=32 << 20, cache_source="fixed")
    small = _judged(spec, 1e-6, bw)  # 3.5 MB a step in 1 us would be 3.5 PB/s: but the cache may hold it all
    assert small.status == "ok" and small.generate is not None
    assert small.generate.bandwidth_check == "below cache" and "cannot rule" in (small.generate.bandwidth_note or "")
    none = _judged(spec, 1e-3, None)
    assert none.status == "unverified" and "no memory-bandwidth ceiling" in (none.invalid_reason or "")
    one = _judged(parse_spec({**spec.model_dump(mode="json"), "gen_tokens": 1}), 1e-3, bw)
    assert one.generate is not None and one.generate.bandwidth_check == "no decode" and one.status == "ok"
    assert one.generate.decode_tokens_per_s is None


class FakeClock:
    """Every reading 10 us after the last: each decode step takes 10 us, whatever it did."""

    def __init__(self) -> None:
        self.t = itertools.count()

    def __call__(self) -> float:
        return next(self.t) * 1e-5


def test_the_phase_with_a_fake_clock_on_a_shape_above_the_cache_is_invalid() -> None:
    """run_generate for real (model, cache, this CPU's measured bandwidth) but with a clock that
    says 10 us a step: on a 257 MB model that is 25 TB/s, impossible for any CPU."""
    llc = last_level_cache()
    shape = ModelShape(name="wide", n_layer=1, n_head=4, n_embd=1024, block_size=64, vocab_size=50257)
    if llc is None or param_count(shape) * 4 < CACHE_MARGIN * llc[0]:
        pytest.skip("this machine's last-level cache is not known or too large for the check to apply")
    spec = parse_spec(
        {"model": shape.model_dump(), "batch": 1, "seq": 8, "gen_tokens": 3, "phases": ["generate"],
         "repeats": 1, "warmup": 0}
    )  # fmt: skip
    ctx = JobContext(spec=spec, device=torch.device("cpu"), timer=Timer(clock=FakeClock()), peak=None)
    result = run_generate(ctx)
    assert result.status == "invalid", result.invalid_reason
    assert "above the memory bandwidth" in (result.invalid_reason or "")
    assert result.generate is not None and result.generate.token_times_s == pytest.approx([1e-5, 1e-5])


def test_generate_through_the_real_cli() -> None:
    """The issue's command: every figure of the phase is there, and consistent."""
    args = ["run", "--model", "gpt2-tiny", "--phases", "generate", "--devices", "cpu", "--seq", "32"]
    result = CliRunner().invoke(app, [*args, "--gen-tokens", "16", "--json"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)[0]
    assert job["status"] in ("ok", "unverified"), job["error"]
    assert list(job["phases"]) == ["generate"]
    p = job["phases"]["generate"]
    spec = parse_spec(job["spec"])
    assert len(p["times_s"]) == spec.repeats and p["median_s"] > 0 and p["flops"] == phase_flops(spec, "generate")
    assert p["mfu"] > 0 and p["tokens_per_s"] > 0 and p["peak_memory_bytes"] > 0 and p["predicted_memory_bytes"] > 0
    g = p["generate"]
    assert g["gen_tokens"] == 16 and g["decode_steps"] == 15 and len(g["token_times_s"]) == 15
    assert len(g["prefill_times_s"]) == len(g["decode_times_s"]) == spec.repeats
    for key in ("prefill_s", "decode_s", "decode_tokens_per_s", "token_p50_s", "token_p90_s", "token_p99_s",
                "bytes_per_step", "bytes_per_token", "achieved_bandwidth", "bandwidth_peak", "mbu"):  # fmt: skip
        assert isinstance(g[key], float) and math.isfinite(g[key]) and g[key] > 0, key
    assert g["token_p50_s"] <= g["token_p90_s"] <= g["token_p99_s"]
    assert g["kv_cache_bytes_observed"] == g["kv_cache_bytes_predicted"] == kv_cache_bytes(spec.shape, 8, 48, 4)
    assert g["bandwidth_source"].startswith("measured: read (torch.sum)")
    assert g["bytes_per_token"] == pytest.approx(g["bytes_per_step"] / spec.batch)
    assert g["bandwidth_check"] in ("below cache", "checked")
    # Each generation's time is at least its prefill and decode, timed inside it.
    for whole, pre, dec in zip(p["times_s"], g["prefill_times_s"], g["decode_times_s"], strict=True):
        assert whole >= pre + dec


def test_generation_lists_are_bounded_and_finite() -> None:
    with pytest.raises(ValidationError):
        Generation(gen_tokens=2, decode_steps=1, token_times_s=[0.1] * (MAX_GEN_TOKENS + 1))
    with pytest.raises(ValidationError):
        Generation(gen_tokens=2, decode_steps=1, token_times_s=[float("nan")])
    with pytest.raises(ValidationError):
        Generation(gen_tokens=2, decode_steps=1, extra=1)  # type: ignore[call-arg]


def test_gpu_bandwidth_table() -> None:
    h100 = gpu_bandwidth("NVIDIA H100 80GB HBM3")
    assert h100 is not None and h100.bytes_per_s == 3350e9 and h100.tolerance == 1.0
    assert h100.cache_bytes == 50 << 20 and h100.source == "table: h100 memory 3350 GB/s"
    cases = {"NVIDIA H100 PCIe": 2000, "NVIDIA H100 NVL": 3900, "NVIDIA H200": 4800, "NVIDIA A100-SXM4-40GB": 1555,
             "NVIDIA A100-SXM4-80GB": 2039, "NVIDIA L4": 300, "Tesla T4": 320, "Tesla V100-SXM2-32GB": 900,
             "NVIDIA A10G": 600, "NVIDIA L40S": 864, "NVIDIA GeForce RTX 4090": 1008}  # fmt: skip
    for name, gbs in cases.items():
        bw = gpu_bandwidth(name)
        assert bw is not None and bw.bytes_per_s == gbs * 1e9, name
    assert gpu_bandwidth("NVIDIA A100-SXM4-80GB", l2_bytes=40 << 20).cache_source == "L2 as the device reports it"  # type: ignore[union-attr]
    assert gpu_bandwidth("AMD Instinct MI300X") is None and gpu_bandwidth("NVIDIA B200") is None
    assert all(v > 0 for v in GPU_BANDWIDTH_GBS.values())


def test_cache_sizes_from_sysfs_text() -> None:
    assert _size_bytes("32768K\n") == 32 << 20 and _size_bytes("1M") == 1 << 20 and _size_bytes("512") == 512
    assert _size_bytes("lots") is None
    llc = last_level_cache()
    assert llc is None or (llc[0] > 0 and llc[1].endswith("(sysfs)"))


def test_reports_show_the_generate_figures_in_every_format() -> None:
    """A generate result (judged from fixed raw times) in the terminal, Markdown, CSV, JSON and HTML
    report; a phase without them shows none."""
    from farm.reports.formats import render
    from farm.reports.report import build_report
    from farm.results.records import records_from_results
    from farm.results.result import JobResult

    spec = _spec_gpt2()
    bw = Bandwidth(bytes_per_s=20e9, source="fixed 20 GB/s", tolerance=2.0, cache_bytes=32 << 20, cache_source="fixed")
    result = JobResult.for_job(spec.expand()[0], phases={"generate": _judged(spec, 40e-3, bw)}).settle_status()
    report = build_report(records_from_results([result]), title="generate")
    assert "\ngeneration: cpu, run " in render(report, "terminal")
    text = render(report, "markdown")  # not wrapped
    assert "**Generation**" in text
    assert "time to first token 100 ms, decode 25.0 tokens/s" in text
    assert "per token p50 40 ms / p90 40 ms / p99 40 ms" in text and "MBU 63.0% of 20 GB/s" in text
    assert "(fixed 20 GB/s, bandwidth check: checked)" in text and "KV cache 9.35 MiB predicted, - observed" in text
    assert "<h2>Generation</h2>" in render(report, "html")
    row = json.loads(render(report, "json"))["rows"][0]
    assert row["gen_decode_tokens_per_s"] == pytest.approx(25.0) and row["gen_bandwidth_check"] == "checked"
    assert row["gen_mbu"] == pytest.approx(0.63, abs=0.005)
    csv_text = render(report, "csv")
    assert "gen_mbu" in csv_text.splitlines()[0]
    other = JobResult.for_job(spec.expand()[0], phases={"forward": _judged(spec, 40e-3, bw).model_copy(update={
        "name": "forward", "generate": None})})  # fmt: skip
    assert "generation:" not in render(build_report(records_from_results([other]), title="f"), "terminal")
