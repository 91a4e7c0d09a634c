"""benchmarks/gpu_farm_check.sh runs on this GPU-less machine: the CUDA steps are skipped with a message,
the rest (embedded farm, the seed's submit on the CPU, kill -9 of a job's process, the HTML report)
really runs, and everything lands in $OUT. The GPU run itself is for a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.engine.hardware import nvml_gpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_farm_check.sh"


@pytest.mark.skipif(bool(nvml_gpus()), reason="this machine has a GPU: run the script itself")
def test_gpu_farm_check_on_cpu_skips_the_cuda_steps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(
        OUT=str(out),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        FARM_CHECK_MODEL="gpt2-tiny",
        FARM_CHECK_BATCH="1",
        FARM_CHECK_SEQ="64",
        FARM_CHECK_REPEATS="2",
        FARM_CHECK_KILL_REPEATS="300",  # some seconds of forward passes: time to kill it mid-job
    )
    p = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no CUDA worker here: skipping the CUDA steps" in p.stdout
    table = (out / "gpu_farm_check.md").read_text()
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in table.splitlines()[2:]}
    assert rows == {"up": "ok", "seed": "ok", "fanout": "skipped", "kill9": "ok", "report": "ok"}, table
    seed = json.loads((out / "seed.out").read_text())
    assert [r["device"] for r in seed["results"]] == ["cpu"]
    assert "1 result(s)" in (out / "kill9.out").read_text()
    assert "killed pid" in (out / "kill9.log").read_text()
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    # The embedded farm it started is gone again.
    assert not (out / "home" / "embedded.json").exists() or "stopped" in (out / "down.log").read_text()
