"""The three phases on gpt2-tiny (tiny shapes), every clock reading synchronised, and `run_job`."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import torch

from farm.engine.hardware import cpu_peak
from farm.engine.model import GPT
from farm.engine.phases import JobContext, precision_settings, run_forward, run_init, run_train
from farm.engine.runner import check_fits, resolve_device, run_job
from farm.engine.timing import Timer, ci_half_width
from farm.flops import forward_flops, predict_memory, predict_peak, train_flops
from farm.spec import PRESETS, BenchSpec, ModelShape, parse_spec

TINY = PRESETS["gpt2-tiny"]


class CountingTimer(Timer):
    """A real CPU timer that counts its synchronisations and clock readings."""

    def __init__(self) -> None:
        self.syncs = 0
        self.clocks = 0
        super().__init__(sync=self._sync, clock=self._clock)

    def _sync(self) -> None:
        self.syncs += 1

    def _clock(self) -> float:
        self.clocks += 1
        return time.perf_counter()


def _spec(**kw: object) -> BenchSpec:
    return parse_spec({"model": "gpt2-tiny", "batch": 2, "seq": 32, "repeats": 2, "warmup": 1, **kw})


def _ctx(spec: BenchSpec, peak: bool = True) -> JobContext:
    threads = torch.get_num_threads()
    return JobContext(
        spec=spec,
        device=torch.device("cpu"),
        timer=CountingTimer(),
        peak=cpu_peak(spec.dtype, spec.matmul_precision, threads) if peak else None,
    )


def test_init_builds_the_model_on_the_device() -> None:
    spec = _spec()
    ctx = _ctx(spec, peak=False)
    phase = run_init(ctx)
    assert phase.name == "init" and phase.status == "ok"
    assert len(phase.times_s) == 1 and phase.warmup_times_s == []
    assert phase.median_s is not None and phase.median_s > 0
    assert phase.flops == 0 and phase.mfu is None
    assert isinstance(ctx.model, GPT) and ctx.model.device.type == "cpu"
    assert ctx.model.num_parameters() == 1_052_160
    assert phase.memory_kind == "process RSS peak" and phase.peak_memory_bytes
    assert phase.predicted_memory_bytes == predict_memory(spec, "init").total
    assert ctx.timer.syncs == ctx.timer.clocks == 2  # type: ignore[attr-defined]


def test_forward_phase() -> None:
    spec = _spec()
    ctx = _ctx(spec)
    phase = run_forward(ctx)
    assert phase.name == "forward" and phase.status == "ok", phase.invalid_reason
    assert len(phase.times_s) == 2 and len(phase.warmup_times_s) == 1
    assert all(t > 0 for t in phase.times_s)
    assert phase.flops == forward_flops(TINY, 2, 32)
    assert phase.achieved_flops == pytest.approx(phase.flops / phase.median_s)  # type: ignore[operator]
    assert phase.mfu is not None and 0 < phase.mfu < 1
    assert phase.peak_source  # the ceiling is named (farm.engine.hardware.cpu_peak)
    assert phase.tokens_per_s == pytest.approx(64 / phase.median_s)  # type: ignore[operator]
    assert phase.breakdown["transfer_s"] >= 0  # tokens moved to the device, timed apart
    assert ctx.model is not None and not ctx.model.training  # built untimed, in eval mode
    # One synchronised region for the transfer, one per warm-up and one per repeat; two readings each.
    assert ctx.timer.syncs == ctx.timer.clocks == 2 * (1 + 1 + 2)  # type: ignore[attr-defined]


def test_train_phase_learns_and_syncs() -> None:
    spec = _spec()
    ctx = _ctx(spec)
    run_init(ctx)
    assert ctx.model is not None
    before = ctx.model.h[0].mlp.c_fc.weight.detach().clone()
    phase = run_train(ctx)
    assert phase.name == "train" and phase.status == "ok", phase.invalid_reason
    assert len(phase.times_s) == 2 and len(phase.warmup_times_s) == 1
    assert phase.flops == train_flops(TINY, 2, 32)
    assert phase.mfu is not None and 0 < phase.mfu < 1
    assert phase.predicted_memory_bytes == predict_memory(spec, "train").total
    # Three AdamW steps on the same batch: the weights moved and the loss went down.
    assert not torch.equal(before, ctx.model.h[0].mlp.c_fc.weight)
    assert phase.breakdown["loss_last"] < phase.breakdown["loss_first"]
    assert all(p.grad is None for p in ctx.model.parameters())  # zero_grad(set_to_none) afterwards
    assert ctx.timer.syncs == ctx.timer.clocks == 2 + 2 * (1 + 1 + 2)  # type: ignore[attr-defined]


def test_forward_without_init_and_no_warmup() -> None:
    ctx = _ctx(_spec(warmup=0, repeats=2, batch=1, seq=64), peak=False)
    phase = run_forward(ctx)
    assert phase.warmup_times_s == [] and len(phase.times_s) == 2
    assert phase.mfu is None and phase.status == "unverified"  # no ceiling: nothing checks the number


@pytest.mark.parametrize(
    "kw",
    [
        {"optimizer": "sgd"},
        {"dtype": "bfloat16"},
        {"dtype": "bfloat16", "precision_mode": "cast"},
        {"dtype": "float16"},
    ],
)
def test_train_options(kw: dict[str, str]) -> None:
    spec = _spec(repeats=2, warmup=0, **kw)
    ctx = _ctx(spec, peak=False)
    phase = run_train(ctx)
    assert phase.status == "unverified" and len(phase.times_s) == 2  # no peak given: unchecked
    assert ctx.model is not None
    # On a CPU the default ("auto") casts the weights; float16 too.
    want = getattr(torch, kw["dtype"]) if "dtype" in kw else torch.float32
    assert {p.dtype for p in ctx.model.parameters()} == {want}
    assert torch.isfinite(torch.tensor(phase.breakdown["loss_last"]))


def test_precision_settings_apply_and_restore() -> None:
    threads, prec = torch.get_num_threads(), torch.get_float32_matmul_precision()
    spec = _spec(threads=1, matmul_precision="high", dtype="bfloat16")
    with precision_settings(spec) as rec:
        assert torch.get_num_threads() == 1
        assert torch.get_float32_matmul_precision() == "high"
        assert rec["threads"] == 1 and rec["matmul_precision"] == "high"
        assert rec["dtype"] == "bfloat16" and rec["precision_mode"] == "cast"  # "auto" on a CPU
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, prec)


def test_run_job_all_phases() -> None:
    job = _spec(threads=1).expand(run_id="t1")[0]
    progress: list[tuple[str, int, int]] = []
    result = run_job(job, on_progress=lambda p, d, t: progress.append((p, d, t)))
    assert result.status == "ok", result.error
    assert list(result.phases) == ["init", "forward", "train"]
    assert result.threads == 1 and result.precision["threads"] == 1
    assert result.machine is not None and result.torch_device == "cpu"
    assert result.finished_at is not None and result.finished_at >= result.started_at
    assert ("init", 1, 7) in progress and ("forward", 4, 7) in progress and ("train", 7, 7) in progress
    for name in ("forward", "train"):
        p = result.phases[name]
        assert p.median_s and p.median_s > 0 and p.flops > 0 and p.mfu and 0 < p.mfu < 1


def test_run_job_never_raises() -> None:
    no_cuda = run_job(_spec(devices="cuda").expand(run_id="t2")[0])
    assert no_cuda.status == "failed" and "CUDA" in (no_cuda.error or "") and no_cuda.phases == {}
    timeout = run_job(_spec(time_limit_s=1e-6).expand(run_id="t3")[0])
    assert timeout.status == "timeout" and "time limit" in (timeout.error or "")


def test_run_job_refuses_a_job_predicted_not_to_fit() -> None:
    spec = parse_spec({"model": "gpt2-xl", "batch": 64, "seq": 1024})
    if predict_peak(spec).total < psutil.virtual_memory().available:
        pytest.skip("this machine has more memory than gpt2-xl at batch 64 needs")
    result = run_job(spec.expand(run_id="t4")[0])
    assert result.status == "oom" and "refused before running" in (result.error or "")
    assert result.phases == {}


def test_resolve_device_and_check_fits() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu:somebox") == torch.device("cpu")
    check_fits(_spec(), torch.device("cpu"))  # tiny: fits


def test_job_from_a_checkpoint_counts_the_checkpoint_shape(tmp_path: Path) -> None:
    """A checkpoint's own shape defines the work: FLOPs and MFU are not those of the spec's preset."""
    transformers = pytest.importorskip("transformers")
    shape = ModelShape(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=300)
    cfg = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=300, bos_token_id=0, eos_token_id=0
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    # The spec names no model (default gpt2): the checkpoint decides.
    spec = parse_spec({"checkpoint": str(tmp_path), "batch": 1, "seq": 16, "repeats": 2, "warmup": 0})
    result = run_job(spec.expand(run_id="t5")[0])
    assert result.status == "ok", result.error
    assert "load_s" in result.phases["init"].breakdown
    assert result.phases["forward"].flops == forward_flops(shape, 1, 16)
    assert result.phases["train"].flops == train_flops(shape, 1, 16)
    assert result.spec.shape.n_embd == 32


def test_checkpoint_of_a_preset_shape_keeps_its_name_and_a_broken_one_fails(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_layer=TINY.n_layer,
        n_head=TINY.n_head,
        n_embd=TINY.n_embd,
        n_positions=TINY.block_size,
        vocab_size=TINY.vocab_size,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "tiny")
    spec = parse_spec({"checkpoint": str(tmp_path / "tiny"), "batch": 1, "seq": 16, "repeats": 1, "phases": "init"})
    result = run_job(spec.expand(run_id="t6")[0])
    assert result.status == "ok", result.error
    assert result.model_name == "gpt2-tiny"
    (tmp_path / "empty").mkdir()
    broken = run_job(spec.model_copy(update={"checkpoint": str(tmp_path / "empty")}).expand(run_id="t7")[0])
    assert broken.status == "failed" and "config.json" in (broken.error or "")


@pytest.mark.parametrize(
    ("kw", "stop", "n"),
    [
        ({"ci_target": 1e-9, "repeat_budget_s": 1e-3}, "budget", 5),  # budget spent at once: the minimum
        ({"ci_target": 1e-9, "max_repeats": 7}, "max", 7),
    ],
)
def test_repeats_auto_says_what_stopped_it(kw: dict[str, float], stop: str, n: int) -> None:
    phase = run_forward(_ctx(_spec(repeats="auto", **kw)))
    assert phase.status == "ok" and phase.repeats_stop == stop
    assert len(phase.times_s) == n and len(phase.warmup_times_s) == 1


def test_run_job_with_repeats_auto_stops_by_its_rule() -> None:
    """gpt2-tiny forward and train with `repeats: auto`: the recorded times satisfy the stop given."""
    spec = _spec(repeats="auto", ci_target=0.05, repeat_budget_s=3.0, max_repeats=40, threads=1)
    result = run_job(spec.expand(run_id="auto1")[0])
    assert result.status == "ok", result.error
    assert result.phases["init"].repeats_stop is None  # init is one construction
    for name in ("forward", "train"):
        p = result.phases[name]
        assert p.repeats_stop in ("target", "budget", "max") and 5 <= len(p.times_s) <= 40
        if p.repeats_stop == "target":
            assert ci_half_width(p.times_s) <= 0.05
        elif p.repeats_stop == "budget":
            assert sum(p.times_s) >= 3.0 or ci_half_width(p.times_s) > 0.05
        else:
            assert len(p.times_s) == 40
    assert run_job(_spec(repeats=2).expand(run_id="auto2")[0]).phases["forward"].repeats_stop is None
