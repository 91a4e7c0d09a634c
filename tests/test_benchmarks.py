"""The benchmark scripts run (on CPU, smallest settings) and the train step's fused loss is exact.

No assertion here is about speed: the scripts in benchmarks/ measure and print; these tests only
check that they work and that the performance changes kept the numbers the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from farm.engine.loss import lm_head_loss
from farm.engine.model import GPT

ROOT = Path(__file__).resolve().parent.parent


def _run_script(args: list[str], tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FARM_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_gpu_check_runs_on_cpu_and_skips_cuda(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    proc = _run_script(
        [
            "benchmarks/gpu_check.py",
            "--model",
            "gpt2-tiny",
            "--cpu-batch",
            "1",
            "--cpu-seq",
            "32",
            "--cpu-repeats",
            "2",
            "--cpu-train-repeats",
            "1",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    if not torch.cuda.is_available():
        assert "CUDA rows skipped" in text
    assert "| device | model | BxT | precision | phase | timer |" in text  # the final table
    doc = json.loads((out / "gpu_check.json").read_text())
    cpu_rows = [r for r in doc["rows"] if r["device"].startswith("CPU")]
    assert {r["phase"] for r in cpu_rows} >= {"init", "forward", "train"}
    for r in cpu_rows:
        assert r["status"] in ("ok", "noisy"), r
        assert r["model"] == "gpt2-tiny" and r["shape"] == "1x32"
        if r["phase"] != "init":
            assert r["median_s"] > 0 and r["tflops"] > 0
    assert (out / "gpu_check.md").read_text().startswith("| device |")


@pytest.mark.parametrize("chunk", [5, 16, 64])
def test_lm_head_loss_matches_cross_entropy(chunk: int) -> None:
    torch.manual_seed(0)
    N, C, V = 37, 16, 101  # chunk sizes that divide N, don't, and exceed it
    h = torch.randn(N, C, requires_grad=True)
    w = torch.randn(V, C, requires_grad=True)
    t = torch.randint(0, V, (N,))
    t[3] = t[10] = -100  # ignored targets, as F.cross_entropy's ignore_index
    ref = F.cross_entropy(h @ w.t(), t)
    gh, gw = torch.autograd.grad(ref, (h, w))
    loss = lm_head_loss(h, w, t, chunk=chunk)
    fh, fw = torch.autograd.grad(3.0 * loss, (h, w))  # a non-unit incoming gradient
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fh, 3.0 * gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fw, 3.0 * gw, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(lm_head_loss(h, w, t, chunk=chunk), ref, rtol=1e-6, atol=1e-6)


def test_train_path_loss_and_grads_equal_full_logits_path() -> None:
    torch.manual_seed(0)
    model = GPT("gpt2-tiny")
    x = torch.randint(0, 4096, (2, 48))
    y = torch.randint(0, 4096, (2, 48))
    logits, full = model(x, y)
    assert logits is not None and logits.shape == (2, 48, 4096)
    full.backward()
    g_full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    none, fused = model(x, y, return_logits=False)
    assert none is None
    fused.backward()
    torch.testing.assert_close(fused, full, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g_full[n], rtol=1e-4, atol=1e-6, msg=n)


def test_lm_head_loss_under_autocast_matches() -> None:
    torch.manual_seed(0)
    h = torch.randn(20, 16)
    w = torch.randn(50, 16)
    t = torch.randint(0, 50, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w), t)
        loss = lm_head_loss(h, w, t, chunk=8)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref.float(), rtol=1e-3, atol=1e-3)


def test_gpu_mfu_ladder_smoke_on_cpu(tmp_path: Path) -> None:
    """The ladder's rungs run through farm's own run_job; the padded-vocabulary rung counts the real head."""
    out = tmp_path / "ladder"
    args = ["benchmarks/gpu_mfu_ladder.py", "--device", "cpu", "--model", "gpt2-tiny", "--batch", "1"]
    args += ["--seq", "32", "--repeats", "2", "--warmup", "0", "--rungs", "fp32,tf32", "--out", str(out)]
    proc = _run_script(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "ladder.json").read_text())
    assert [r["rung"] for r in doc["rows"]] == ["fp32", "tf32"]
    for r in doc["rows"]:
        assert r["status"] in ("ok", "unverified"), r
        assert r["step_s"] > 0 and 0 < r["mfu"] < 1
    assert "| fp32 | 1 x 32 |" in (out / "ladder.md").read_text()


def test_ladder_padding_keeps_the_real_flops() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_mfu_ladder import padded

    from farm.flops import train_flops
    from farm.spec import resolve_model

    gpt2 = resolve_model("gpt2")
    pad = padded(gpt2)
    assert pad.vocab_size == 50304 and pad.n_embd == gpt2.n_embd
    assert train_flops(pad, 1, 1024) > train_flops(gpt2, 1, 1024)  # the ladder divides the smaller one


def test_cpu_roofline_goal_smoke(tmp_path: Path) -> None:
    """The CPU goal script prints its verdict rows and skips bf16 without a hardware path."""
    out = tmp_path / "roof.json"
    args = ["benchmarks/cpu_roofline_goal.py", "--model", "gpt2-tiny", "--seq", "32", "--repeats", "1"]
    args += ["--shape-repeats", "1", "--threads", "1", "--json", str(out)]
    proc = _run_script(args, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    cases = {(r["case"], r["dtype"]) for r in doc["rows"]}
    assert ("forward", "float32") in cases and ("train step", "float32") in cases
    for r in doc["rows"]:
        assert r["verdict_roofline"] in ("met", "NOT MET") and r["roofline_flops"] > 0
        assert r["of_roofline"] == pytest.approx(r["achieved_flops"] / r["roofline_flops"])
    if "bfloat16" not in {d for _, d in cases}:
        assert any("bf16 has no hardware path" in s for s in doc["skipped"])


def test_step_budget_smoke(tmp_path: Path) -> None:
    """The step-budget script prints the step, every part and the rest, each with its share of the step."""
    args = ["benchmarks/step_budget.py", "--model", "gpt2-tiny", "--seq", "32", "--rounds", "1", "--threads", "1"]
    proc = _run_script([*args, "--dtypes", "float32"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = line.rsplit(maxsplit=3)  # part, ms, share of the step, GFLOP/s or "-"
        try:
            rows[cells[0].strip()] = (float(cells[1]), float(cells[2]))
        except (IndexError, ValueError):
            continue
    for part in ("step", "block linears (fwd, dX, dW)", "attention fwd + bwd", "LM head + loss fwd + bwd"):
        assert part in rows
    assert rows["step"][1] == pytest.approx(1.0)
    assert all(ms > 0 for label, (ms, _) in rows.items() if not label.startswith("rest"))
    assert "AdamW (fused)" in rows and "rest (step less the parts)" in rows
