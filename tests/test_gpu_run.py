"""benchmarks/gpu_run.sh, the one call on a lent GPU machine, checked here where there is no GPU: its
step limits add up to the 420 s it promises, every script it calls exists and takes every option it
passes (a typo would otherwise cost the session's only device call), and it runs end to end with the
CUDA steps skipped (and, in its CPU smoke mode, with them run at toy sizes through the summary)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.engine.hardware import nvml_gpus

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
FARM_CHECK = ROOT / "benchmarks" / "gpu_farm_check.sh"
BUDGET_S = 420  # issue 23: one call of at most 420 s of wall time
CUDA_STEPS = ("ladder", "generate_b1", "generate_b8", "telemetry")


def _text() -> str:
    return SCRIPT.read_text().replace("\\\n", " ")  # continuation lines joined: one command per line


def _vars(text: str) -> dict[str, str]:
    """Plain assignments (`A=1 B="x y"`, `export A=1`) at the start of a line: the script's settings."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.removeprefix("export ").strip()
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            for name, quoted, bare in re.findall(r'([A-Z_][A-Z0-9_]*)=(?:"([^"]*)"|(\S*))', line.split("#")[0]):
                out.setdefault(name, quoted or bare)
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "GPU_RUN_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", COLUMNS="200", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def test_step_limits_add_up_to_the_budget() -> None:
    text = _text()
    v = _vars(text)
    caps = {k: int(v[k]) for k in ("FARM_S", "LADDER_S", "GENERATE_S", "TELEMETRY_S")}
    n_gen = len(v["GEN_BATCHES"].split())
    assert n_gen == 2
    total = caps["FARM_S"] + caps["LADDER_S"] + n_gen * caps["GENERATE_S"] + caps["TELEMETRY_S"]
    assert int(v["TOTAL_S"]) <= BUDGET_S
    assert total + int(v["RESERVE_S"]) <= int(v["TOTAL_S"]), (total, v["RESERVE_S"])
    assert int(v["SUMMARY_S"]) < int(v["RESERVE_S"])
    # Every step runs under one of these caps (no step without one, no cap outside the sum), in order of value.
    steps = re.findall(r'^\s*run_step (\S+) "[^"]*" "\$(\w+)"', text, re.M)
    assert [s for s, _ in steps] == ["farm", "ladder", '"generate_b$b"', "telemetry"], steps
    assert {c for _, c in steps} == set(caps)
    assert 'timeout "$cap"' in text and re.search(r"limit\(\) \{.*TOTAL_S - SUMMARY_S - SECONDS", text)
    # The farm step's own limits (up + seed + html and Markdown report + down + 10 s `farm workers`) fit in it.
    inner = sum(int(v[f"FARM_CHECK_{k}_S"]) for k in ("UP", "SEED", "DOWN")) + 2 * int(v["FARM_CHECK_REPORT_S"])
    assert inner + 10 <= caps["FARM_S"], inner
    farm_check = FARM_CHECK.read_text()
    for name in ("FARM_CHECK_UP_S", "FARM_CHECK_SEED_S", "FARM_CHECK_REPORT_S", "FARM_CHECK_DOWN_S", "FARM_CHECK_SKIP"):
        assert "${" + name + ":-" in farm_check, name
    assert "timeout 10" in farm_check  # the `farm workers` call the 10 s above stand for
    for step in v["FARM_CHECK_SKIP"].split():
        assert f"if skipped {step}; then" in farm_check, step


def _help(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, *args, "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (args, proc.stderr[-1000:])
    return proc.stdout


def test_called_scripts_exist_and_take_the_options_passed() -> None:
    text = _text()
    calls = re.findall(r"(benchmarks/\w+\.(?:py|sh)|-m farm\.cli\.main \w+)([^\n]*)", text)
    called = {c for c, _ in calls}
    scripts = ("gpu_farm_check.sh", "gpu_mfu_ladder.py", "telemetry_overhead.py")
    assert {f"benchmarks/{s}" for s in scripts} <= called
    assert "-m farm.cli.main run" in called
    helps: dict[str, str] = {}
    for target, rest in calls:
        if target.endswith(".sh"):
            path = ROOT / target
            assert path.exists() and path.stat().st_mode & 0o111, target
            continue
        args = target.split() if target.startswith("-m") else [target]
        assert args[0] == "-m" or (ROOT / target).exists(), target
        helps.setdefault(target, _help(args))
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", rest):
            assert opt in helps[target], (target, opt)
    # The rungs it climbs on the GPU are rungs the ladder has.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_mfu_ladder import RUNGS

    rungs = _vars(text)["RUNGS"].split(",")
    assert rungs == ["fp32", "bf16", "bf16+compile", "best"]
    assert set(rungs) <= {n for n, _ in RUNGS}
    # The farm commands gpu_farm_check.sh runs for it: the seed's submit and the report.
    farm_check = FARM_CHECK.read_text()
    seed = " ".join(re.findall(r"^seed\+?=\((.*)\)", farm_check, re.M))
    submit = _help(["-m", "farm.cli.main", "submit"])
    for opt in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", seed):
        assert opt in submit, ("submit", opt)
    report = _help(["-m", "farm.cli.main", "report"])
    for line in re.findall(r'report "\$seed_run"([^\n;]*)', farm_check):
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line):
            assert opt in report, ("report", opt)


def test_ladder_refuses_an_unknown_rung() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_mfu_ladder.py", "--rungs", "fp32,bf16+compil"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown rung(s) bf16+compil" in proc.stderr, proc.stderr


@pytest.mark.parametrize("script", [SCRIPT, FARM_CHECK], ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    assert script.read_text().startswith("#!/usr/bin/env bash\n") and script.stat().st_mode & 0o111
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run([exe, "--shell=bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _run(tmp_path: Path, **extra: str) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=_env(OUT=str(out), TMPDIR=str(scratch), **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 1 <= len(files) <= 8, files
    summary = (out / "summary.md").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())  # the summary is the last thing printed
    assert not list(scratch.glob("gpu_run.*"))  # its scratch directory (the farm's home, its files) is gone
    return proc, out, wall


@pytest.mark.skipif(bool(nvml_gpus()), reason="this machine has a GPU: run the script itself")
def test_gpu_run_without_a_gpu_skips_the_cuda_steps(tmp_path: Path) -> None:
    proc, out, wall = _run(tmp_path)
    for step in CUDA_STEPS:
        assert f"gpu_run: {step}: skipped: no GPU here" in proc.stdout, step
    summary = (out / "summary.md").read_text()
    assert "| farm | seed through the farm (fanout kill9 left out) | 0 |" in summary
    assert "| seed | ok |" in summary and "| report | ok |" in summary  # the farm's own table
    assert "| cpu | forward |" in summary  # the farm's report table of the seed run
    for step in CUDA_STEPS:
        assert re.search(rf"\| {step} \| [^|]+ \| skipped \|", summary), step
    assert sorted(p.name for p in out.iterdir()) == ["farm_seed.json", "gpu_run.log", "report.html", "summary.md"]
    assert wall < 90, wall  # under a minute on an idle machine; margin for a shared one


@pytest.mark.skipif(bool(nvml_gpus()), reason="this machine has a GPU: run the script itself")
def test_gpu_run_cpu_smoke_fills_every_table(tmp_path: Path) -> None:
    """GPU_RUN_CPU_SMOKE=1: the CUDA steps on the CPU at toy sizes, so the summary's parsing of each
    step's output is exercised here rather than first on the device."""
    proc, out, _ = _run(tmp_path, GPU_RUN_CPU_SMOKE="1")
    summary = (out / "summary.md").read_text()
    for step in CUDA_STEPS:
        assert f"gpu_run: {step}: rc=0" in proc.stdout, step
    assert "| fp32 | 1 x 32 |" in summary and "| bf16 | 1 x 32 |" in summary
    assert re.search(r"\| 1 \| cpu \| ok \| [0-9.]+ \| [0-9.,]+ \|", summary), summary
    assert re.search(r"\| 8 \| cpu \| ok \| [0-9.]+ \| [0-9.,]+ \|", summary), summary
    assert "- fake NVML (the sampler's Python cost):" in summary
    expected = ["farm_seed.json", "generate_b1.json", "generate_b8.json", "gpu_run.log"]
    expected += ["ladder.json", "report.html", "summary.md"]
    assert sorted(p.name for p in out.iterdir()) == expected
