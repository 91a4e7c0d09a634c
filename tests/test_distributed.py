"""Training over several devices (DDP), for real on the CPU: two gloo processes.

The rank targets at the bottom of this file run inside rank processes started by
`farm.engine.distributed.launch` (this directory is put on their PYTHONPATH); they use the same
helpers as the farm's own rank (`rank_tokens`, `_construct`), so the gradient test checks the code
that runs, not a copy of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from farmproc import WorkerProcess

from farm.engine import distributed
from farm.engine.distributed import RankContext, RankFailure, launch, rank_tokens, threads_per_process
from farm.errors import JobTimeout
from farm.results.peaks import Peak
from farm.spec import BenchSpec, Job, parse_spec

HERE = Path(__file__).resolve().parent
TINY = {"model": "gpt2-tiny", "batch": 2, "seq": 32, "repeats": 2, "warmup": 0, "phases": ["train"], "world_size": 2}
# fp32 gradients of the same sums taken in another order (two shards averaged vs one batch): the
# difference is rounding, well under 1e-5 of the largest gradient on gpt2-tiny.
GRAD_RTOL = 1e-4
GRAD_ATOL = 1e-6


@pytest.fixture()
def rank_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank processes can import this module's targets."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def _no_rank_left(workdir: Path) -> bool:
    """No process running farm.engine.distributed on this workdir's config survives."""
    cfg = str(workdir / "config.json")
    return all(cfg not in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


# -- the CLI, end to end ---------------------------------------------------------------------------
def test_farm_run_world_size_2_runs_two_gloo_processes_and_reports_scaling() -> None:
    cmd = [sys.executable, "-m", "farm.cli.main", "run", "--model", "gpt2-tiny", "--phases", "train"]
    cmd += ["--devices", "cpu", "--world-size", "2", "--seq", "32", "--batch", "2", "--repeats", "3", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.stdout.strip(), p.stderr
    (res,) = json.loads(p.stdout)
    train = res["phases"]["train"]
    assert train["status"] in ("ok", "unverified", "invalid"), (train["error"], p.stderr)
    sc = train["scaling"]
    assert sc["world_size"] == 2 and sc["backend"] == "gloo" and sc["devices"] == ["cpu", "cpu"]
    assert sc["threads_per_process"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert len(train["times_s"]) == 3 and len(sc["single_device_times_s"]) == 3
    assert sc["step_s"] == train["median_s"]
    assert sc["efficiency"] == pytest.approx(sc["single_device_step_s"] / sc["step_s"])
    assert sc["tokens_per_s"] == pytest.approx(2 * 2 * 32 / sc["step_s"])
    assert sc["throughput_speedup"] == pytest.approx(2 * sc["efficiency"])
    assert 0 <= sc["allreduce_share"] < 1 and len(sc["no_sync_times_s"]) == 3
    # The group's FLOPs: two devices' worth, against a ceiling of every rank's cores.
    single = BenchSpec(model="gpt2-tiny", batch=2, seq=32)
    from farm.flops import phase_flops

    assert train["flops"] == 2 * phase_flops(single, "train")
    assert train["tokens_per_s"] == pytest.approx(sc["tokens_per_s"])
    assert train["breakdown"]["loss_last"] > 0
    # Reports show the world size, the efficiency and the all-reduce's share (every format).
    from farm.reports.formats import render
    from farm.reports.report import build_report
    from farm.results.records import records_from_results
    from farm.results.result import JobResult

    report = build_report(records_from_results([JobResult.model_validate(res)]))
    md = render(report, "markdown")
    assert "**Scaling (DDP)**" in md and "world size 2 (gloo" in md and "efficiency" in md and "all-reduce" in md
    assert "| cpu x2 |" in md
    assert "scaling: " in render(report, "terminal") and "Scaling over devices" in render(report, "html")
    (row,) = json.loads(render(report, "json"))["rows"]
    assert row["ddp_world_size"] == 2 and row["ddp_efficiency"] == pytest.approx(sc["efficiency"])
    assert "ddp_allreduce_share" in render(report, "csv").splitlines()[0]


# -- correctness: DDP gradients = one process over the concatenated batch --------------------------
def test_ddp_gradients_equal_single_process_gradients_over_the_concatenated_batch(
    rank_path: None, tmp_path: Path
) -> None:
    spec = parse_spec({**TINY, "batch": 2, "seq": 16})
    outs = launch(
        "test_distributed:gradients_rank",
        {"spec": spec.model_dump(mode="json"), "out": str(tmp_path)},
        devices=["cpu", "cpu"],
        threads=1,
        workdir=tmp_path / "ddp",
    )
    assert [o["rank"] for o in outs] == [0, 1]
    ddp = torch.load(tmp_path / "grads0.pt")
    # One process, no DDP, the two ranks' batches concatenated.
    from farm.engine.phases import _construct

    model = _construct(spec, torch.device("cpu"))
    tokens = torch.cat([rank_tokens(spec, model.config.vocab_size, r) for r in range(2)])
    assert torch.equal(tokens[:, :-1], torch.cat([ddp["x0"], ddp["x1"]]))
    _, loss = model(tokens[:, :-1], tokens[:, 1:], return_logits=False)
    assert loss is not None
    loss.backward()
    compared = 0
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)
        compared += 1
    assert compared == len(ddp["grads"]) > 10
    # The two ranks really had different data (else the test would prove nothing).
    assert not torch.equal(ddp["x0"], ddp["x1"])


# -- failures: a rank that raises, dies or hangs ---------------------------------------------------
def test_a_rank_that_raises_fails_the_phase_with_its_error(rank_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.engine.runner import run_job

    monkeypatch.setattr(distributed, "GRACE_S", 2.0)
    monkeypatch.setattr(distributed, "TRAIN_TARGET", "test_distributed:raise_on_rank_1")
    job = Job(job_id="ddp-raise-000", run_id="ddp-raise", device="cpu", spec=parse_spec({**TINY, "threads": 1}))
    res = run_job(job)
    train = res.phases["train"]
    assert train.status == "failed" and res.status == "failed"
    assert train.error is not None and "rank 1: ValueError: rank 1 cannot train" in train.error
    assert res.error == train.error


def test_a_rank_that_dies_fails_the_launch_and_no_rank_is_left(rank_path: None, tmp_path: Path) -> None:
    with pytest.raises(RankFailure, match="rank 1 killed by signal 9"):
        launch("test_distributed:die_on_rank_1", {}, devices=["cpu", "cpu"], threads=1, workdir=tmp_path)
    assert _no_rank_left(tmp_path)


def test_a_hung_rank_is_killed_at_the_time_limit(rank_path: None, tmp_path: Path) -> None:
    deadline = time.monotonic() + 15.0
    with pytest.raises(JobTimeout, match="time limit"):
        launch(
            "test_distributed:hang_on_rank_1", {}, devices=["cpu", "cpu"], threads=1, workdir=tmp_path,
            deadline=deadline,
        )  # fmt: skip
    assert _no_rank_left(tmp_path)


def test_ddp_scaling_benchmark_prints_world_1_and_2(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, str(HERE.parent / "benchmarks" / "ddp_scaling.py"), "--device", "cpu"]
    cmd += ["--model", "gpt2-tiny", "--batch", "1", "--seq", "16", "--repeats", "2", "--warmup", "0"]
    cmd += ["--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "world  1 (gloo)" in p.stdout and "world  2 (gloo)" in p.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["world_size"] for r in rows] == [1, 2] and rows[0]["efficiency"] == 1.0
    assert rows[1]["tokens_per_s"] == pytest.approx(2 * 16 / rows[1]["step_s"])


def test_without_a_time_limit_a_hung_rank_fails_the_others_collective(
    rank_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distributed, "COLLECTIVE_TIMEOUT_S", 3.0)
    monkeypatch.setattr(distributed, "GRACE_S", 1.0)
    with pytest.raises(RankFailure, match=r"rank 0: .*(?i:timed? ?out)"):
        launch("test_distributed:hang_on_rank_1", {}, devices=["cpu", "cpu"], threads=1, workdir=tmp_path)
    assert _no_rank_left(tmp_path)


# -- threads, ceilings ---------------------------------------------------------------------------
def test_world_size_needs_that_many_gpus_and_cuda_or_cpu() -> None:
    from farm.engine.runner import check_world_size
    from farm.errors import DeviceUnavailableError

    spec = parse_spec({**TINY, "devices": ["cuda"]})
    gpus = torch.cuda.device_count()
    if gpus < 2:
        with pytest.raises(DeviceUnavailableError, match=f"world_size 2 needs 2 local GPUs; this machine has {gpus}"):
            check_world_size(spec, torch.device("cuda", 0))
    with pytest.raises(DeviceUnavailableError, match="cuda \\(NCCL\\) or cpu \\(gloo\\), not mps"):
        check_world_size(spec, torch.device("mps"))
    check_world_size(parse_spec(TINY), torch.device("cpu"))  # any count of CPU processes


def test_worker_plan_subscribes_to_x_queues_up_to_its_max_world_size() -> None:
    from farm.cluster.embedded import EMBEDDED_CPU_MAX_WORLD, embedded_world_size
    from farm.cluster.worker import plan_worker
    from farm.errors import ConfigError

    cfg = plan_worker("cpu", max_world_size=3)
    base = [q for q in cfg.queues if ".x" not in q and q != "control"]
    assert base == ["cpu", f"cpu.{cfg.machine}"] and cfg.max_world_size == 3
    assert sorted(q for q in cfg.queues if ".x" in q) == sorted(f"{b}.x{n}" for b in base for n in (2, 3))
    assert cfg.tags == ["cpu", f"cpu:{cfg.machine}"]
    assert plan_worker("cpu").max_world_size == 1 and not any(".x" in q for q in plan_worker("cpu").queues)
    with pytest.raises(ConfigError, match="--max-world-size"):
        plan_worker("cpu", max_world_size=0)
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    assert embedded_world_size("cpu", None) == max(1, min(cores, EMBEDDED_CPU_MAX_WORLD))


def test_threads_per_process_default_and_override() -> None:
    assert threads_per_process(parse_spec({**TINY, "world_size": 2}), cores=8) == 4
    assert threads_per_process(parse_spec({**TINY, "world_size": 4}), cores=2) == 1
    assert threads_per_process(parse_spec({**TINY, "world_size": 2, "threads": 3}), cores=8) == 3


def test_an_impossible_group_figure_is_still_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The group is judged against n x a device's ceiling: a step faster than that is `invalid`."""
    spec = parse_spec({**TINY, "world_size": 2, "devices": ["cuda"]})
    from farm.flops import min_phase_flops

    per_device = 1e12
    monkeypatch.setattr(distributed, "gpu_ceiling", lambda *a: Peak(flops=per_device, source="test: 1 TFLOP/s"))
    monkeypatch.setattr(distributed, "cuda_gpu_info", lambda i: None)
    least = 2 * min_phase_flops(spec.shape, spec.batch, spec.seq, "train")
    too_fast = least / (2 * per_device) / 1.5  # 1.5x the group's ceiling
    plausible = least / (2 * per_device) * 4
    rank = {"times_s": [too_fast] * 3, "warmup_times_s": [], "memory_kind": "cuda max allocated"}
    single = {"times_s": [plausible] * 3}
    res = distributed.ddp_result(spec, ["cuda:0", "cuda:1"], None, single, [rank, rank])
    assert res.status == "invalid" and res.peak_source == "2 x test: 1 TFLOP/s"
    assert res.peak_flops == 2 * per_device
    ok = distributed.ddp_result(spec, ["cuda:0", "cuda:1"], None, single, [{**rank, "times_s": [plausible] * 3}] * 2)
    assert ok.status == "ok" and ok.scaling is not None and ok.scaling.efficiency == pytest.approx(1.0)


def test_cpu_group_ceiling_is_every_ranks_threads_capped_at_the_machines_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from farm.engine.hardware import cpu_peak

    asked: list[int] = []
    monkeypatch.setattr(distributed, "cpu_ceiling", lambda spec, threads: asked.append(threads) or None)
    spec = parse_spec({**TINY, "threads": 4})
    distributed.group_peak(spec, ["cpu", "cpu"], 4)
    assert asked == [8]  # two ranks of 4 threads
    cores = psutil.cpu_count(logical=False) or 1
    over, exact = cpu_peak("float32", "highest", 8 * cores), cpu_peak("float32", "highest", cores)
    if over is None or exact is None:
        pytest.skip("no CPU ceiling known on this machine")
    assert over.flops == exact.flops  # oversubscribed ranks are never credited with cores the machine lacks


# -- the farm: a worker that gives two devices, a job nobody can serve ---------------------------
def _start_worker(redis_url: str, max_world_size: int) -> WorkerProcess:
    name = f"test-ddp-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "FARM_REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "farm.cli.main", "worker", "--device", "cpu", "--name", name]
    cmd += ["--max-world-size", str(max_world_size)]
    log_path = Path(tempfile.mkdtemp(prefix="farm-worker-")) / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return WorkerProcess(proc, name, redis_url, log_path, "farm")


@pytest.mark.integration
def test_worker_with_max_world_size_2_serves_cpu_x2_and_a_world_size_4_job_is_unserved(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from farm.cli.main import app
    from farm.settings import get_settings

    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    w = _start_worker(redis_url, 2).wait_ready()
    try:
        runner = CliRunner()
        res = runner.invoke(app, ["workers", "--json"])
        assert res.exit_code == 0, res.stderr
        (doc,) = json.loads(res.stdout)
        assert "cpu.x2" in doc["queues"] and "cpu.x3" not in doc["queues"] and doc["max_world_size"] == 2
        assert "cpu:x2" not in doc["tags"]
        # A world_size 4 job: no live worker gives 4 devices, so it is unserved (dry run and status).
        args = ["--model", "gpt2-tiny", "--phases", "train", "--devices", "cpu", "--seq", "16", "--batch", "1"]
        args += ["--repeats", "2", "--warmup", "0", "--threads", "1"]
        res = runner.invoke(app, ["submit", "--dry-run", *args, "--world-size", "4", "--json"])
        assert res.exit_code == 0, res.stderr
        plan = json.loads(res.stdout)
        assert [j["queue"] for j in plan["jobs"]] == ["cpu.x4"] and plan["unserved"] == ["cpu.x4"]
        res = runner.invoke(app, ["submit", "--dry-run", *args, "--world-size", "2", "--json"])
        assert json.loads(res.stdout)["unserved"] == []
        # `cpu:*` expands to tags, never to the x2 queue.
        res = runner.invoke(app, ["submit", "--dry-run", *args, "--devices", "cpu:*", "--json"])
        assert res.exit_code == 0, res.stderr
        assert all(".x" not in j["queue"] for j in json.loads(res.stdout)["jobs"])
        # A world_size 2 job runs on it: two gloo ranks, scaling stored.
        res = runner.invoke(app, ["submit", *args, "--world-size", "2", "--wait", "--json"])
        assert res.exit_code in (0, 1), res.stderr
        (result,) = json.loads(res.stdout)["results"]
        assert result["worker"] == w.name
        sc = result["phases"]["train"]["scaling"]
        assert result["phases"]["train"]["status"] != "failed", result["error"]
        assert sc["world_size"] == 2 and sc["threads_per_process"] == 1
        res = runner.invoke(app, ["submit", *args, "--world-size", "4", "--wait", "--unserved-after", "1", "--json"])
        assert res.exit_code == 5 and "cpu.x4" in res.stderr
    finally:
        w.stop()
        get_settings.cache_clear()


# -- rank targets (run inside rank processes) -------------------------------------------------------
def gradients_rank(rc: RankContext) -> dict[str, Any]:
    """One DDP backward on this rank's shard; rank 0 saves the all-reduced gradients."""
    from farm.engine.phases import _construct

    spec = parse_spec(rc.args["spec"])
    model = _construct(spec, rc.device)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    tokens = rank_tokens(spec, model.config.vocab_size, rc.rank)
    _, loss = ddp(tokens[:, :-1], tokens[:, 1:], return_logits=False)
    loss.backward()
    xs = [torch.zeros_like(tokens[:, :-1]) for _ in range(rc.world_size)]
    torch.distributed.all_gather(xs, tokens[:, :-1].contiguous())
    if rc.rank == 0:
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "x0": xs[0], "x1": xs[1]}, Path(rc.args["out"]) / "grads0.pt")
    return {"rank": rc.rank}


def raise_on_rank_1(rc: RankContext) -> dict[str, Any]:
    if rc.rank == 1:
        raise ValueError("rank 1 cannot train")
    return distributed.train_rank(rc)


def die_on_rank_1(rc: RankContext) -> dict[str, Any]:
    if rc.rank == 1:
        os.kill(os.getpid(), 9)
    torch.distributed.barrier()
    return {}


def hang_on_rank_1(rc: RankContext) -> dict[str, Any]:
    if rc.rank == 1:
        time.sleep(3600)
    torch.distributed.barrier()
    return {}
