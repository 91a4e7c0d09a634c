"""`farm sweep --dry-run`: one job count (points x devices), and a time per point and in total, a
lower bound at 100 % MFU, or the measured median where results of that spec hash exist.

The unit tests use GPU tags (their ceilings come from the published table, no machine facts); the
CLI tests run the real CLI against a real redis-server, one with a real `farm worker` that stores
the history the estimate then uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from farmproc import start_worker

from farm.cli.sweep_plan import count_line
from farm.flops import phase_flops
from farm.nightly.estimate import LONG_S, device_ceiling, estimate_job, fmt_duration, runs_of
from farm.results.peaks import GPU_PEAKS_TFLOPS, gpu_peak
from farm.spec import AUTO_MIN_REPEATS, parse_spec


def test_lower_bound_is_the_phases_flops_at_the_table_peak() -> None:
    spec = parse_spec({"model": "gpt2", "batch": 8, "seq": 1024, "phases": ["init", "forward", "train"]})
    est = estimate_job(spec, "cuda:h100")
    peak = gpu_peak("h100", spec.dtype, spec.matmul_precision)
    assert peak is not None and est.ceiling == peak.source and not est.measured
    runs = spec.warmup + int(spec.repeats)
    flops = phase_flops(spec, "forward") + phase_flops(spec, "train")  # init counts no FLOPs
    assert est.seconds == pytest.approx(runs * flops / peak.flops)


def test_plain_cuda_is_bounded_by_the_fastest_gpu_in_the_table() -> None:
    spec = parse_spec({"model": "gpt2", "dtype": "bfloat16", "phases": ["forward"]})
    ceiling = device_ceiling(spec, "cuda")
    fastest = max(v["bfloat16"] for v in GPU_PEAKS_TFLOPS.values()) * 1e12
    assert ceiling is not None and ceiling.flops == fastest and "fastest GPU in the table" in ceiling.source
    # A tag the table does not know is bounded the same way (the bound holds on any GPU in it).
    unknown = device_ceiling(spec, "cuda:b300x")
    assert unknown is not None and unknown.flops == fastest


def test_auto_repeats_count_their_minimum_and_init_alone_is_free() -> None:
    auto = parse_spec({"model": "gpt2-tiny", "repeats": "auto", "warmup": 2})
    assert runs_of(auto) == 2 + AUTO_MIN_REPEATS
    init = estimate_job(parse_spec({"model": "gpt2", "phases": ["init"]}), "cuda:a100")
    assert init.seconds == 0.0 and not init.measured


def test_count_line_says_points_times_devices() -> None:
    two = parse_spec({"model": "gpt2-tiny", "devices": ["cpu", "cuda"]})
    one = parse_spec({"model": "gpt2-tiny", "devices": ["cpu"]})
    assert count_line([two, two, two, two], 4) == "4 points x 2 devices = 8 jobs"
    assert count_line([two, None, two], 3) == "2 of 3 points x 2 devices = 4 jobs"
    assert count_line([one], 1) == "1 point x 1 device = 1 job"
    assert count_line([two, one], 2) == "3 jobs (each point x its devices) from 2 points"


def test_durations_read_in_their_unit() -> None:
    assert [fmt_duration(s) for s in (0.0123, 42, 750, 3 * 3600, 3 * 86400)] == [
        "12.3 ms",
        "42 s",
        "12.5 min",
        "3.0 h",
        "3.0 days",
    ]


# -- the real CLI ----------------------------------------------------------------------------------
def cli(*args: str, url: str | None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=os.environ["FARM_HOME"], COLUMNS="80")
    if url:
        env["FARM_REDIS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "farm.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def sweep_file(tmp_path: Path, **doc: object) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_a_long_cpu_sweep_is_a_lower_bound_and_warned(redis_url: str, tmp_path: Path) -> None:
    # gpt2-medium 8 x 1024 training, 200 repeats on one thread: hours on any CPU core at 100 % MFU.
    f = sweep_file(
        tmp_path, name="long", model="gpt2-medium", phases=["train"], devices=["cpu"], threads=1,
        repeats=200, seq=1024, grid={"batch": [1, 8]},
    )  # fmt: skip
    p = cli("sweep", str(f), "--dry-run", url=redis_url)
    assert p.returncode == 0, p.stderr
    assert "sweep long: 2 points x 1 device = 2 jobs" in p.stdout
    assert "would queue 2 job(s) on cpu; no live worker on cpu; nothing queued" in p.stderr
    assert "≥ " in p.stdout and "at 100 % MFU" in p.stderr and "ceiling: this machine's CPU" in p.stderr
    assert "warning: the cpu jobs alone take at least" in p.stderr
    doc = json.loads(cli("sweep", str(f), "--dry-run", "--json", url=redis_url).stdout)
    assert doc["jobs"] == 2 and doc["estimate"]["lower_bound"] is True
    assert doc["estimate"]["total_s"] > LONG_S
    assert doc["estimate"]["total_s"] == pytest.approx(sum(pt["estimate_s"] for pt in doc["points"]))


def test_the_measured_median_replaces_the_bound_once_history_exists(redis_url: str, tmp_path: Path) -> None:
    f = sweep_file(
        tmp_path, name="tiny", model="gpt2-tiny", phases=["forward"], devices=["cpu"], threads=1,
        repeats=3, warmup=1, seq=16, grid={"batch": [1, 2]},
    )  # fmt: skip
    before = json.loads(cli("sweep", str(f), "--dry-run", "--json", url=redis_url).stdout)
    assert [pt["measured"] for pt in before["points"]] == [False, False]
    w = start_worker(redis_url, device="cpu").wait_ready()
    try:
        run = cli("sweep", str(f), "--wait", "--json", url=redis_url)
        assert run.returncode == 0, run.stderr
    finally:
        w.stop()
    medians = {
        r["spec"]["batch"]: r["phases"]["forward"]["stats"]["median_s"] for r in json.loads(run.stdout)["results"]
    }
    after = json.loads(cli("sweep", str(f), "--dry-run", "--json", url=redis_url).stdout)
    for pt in after["points"]:
        assert pt["measured"] is True and pt["jobs"][0]["history"] == 1
        assert pt["estimate_s"] == pytest.approx((1 + 3) * medians[pt["params"]["batch"]])
    assert after["estimate"]["lower_bound"] is False
    text = cli("sweep", str(f), "--dry-run", url=redis_url)
    assert "≥" not in text.stdout and "from the median of stored results" in text.stderr


@pytest.mark.integration  # reads this machine's facts (git, NVML): a subprocess
def test_the_embedded_default_counts_what_submission_would_queue(tmp_path: Path) -> None:
    f = sweep_file(tmp_path, name="e", model="gpt2-tiny", phases=["forward"], devices=["cpu", "cuda"],
                   grid={"batch": [1, 2]})  # fmt: skip
    p = cli("sweep", str(f), "--dry-run", "--json", url=None)
    assert p.returncode == 0, p.stderr
    from farm.engine.hardware import nvml_gpus

    per_point = 2 if nvml_gpus() else 1  # the embedded farm serves only this machine's devices
    assert json.loads(p.stdout)["jobs"] == 2 * per_point
    if not per_point - 1:
        assert "skipping device 'cuda': no CUDA device on this machine (embedded farm)" in p.stderr
