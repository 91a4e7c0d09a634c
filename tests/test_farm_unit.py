"""Unit tests of the farm backbone: Celery configuration, limits, worker plans, wildcards, the
embedded device filter, CSV, and the task body's bookkeeping (against a real redis-server, with
no Celery worker: the paths tested here never run a model)."""

from __future__ import annotations

import json

import pytest

from farm.cluster import controller, embedded, queue, worker
from farm.engine.hardware import machine_tag
from farm.errors import BrokerError, ConfigError, SpecError
from farm.results.machine import GpuInfo
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import Settings, get_settings
from farm.spec import CONTROL_QUEUE, parse_spec

TINY = {"model": "gpt2-tiny", "batch": 1, "seq": 32, "repeats": 2, "warmup": 0}


def test_celery_app_is_json_only_acks_late_and_limits_below_visibility() -> None:
    s = Settings(task_soft_time_limit=50, task_time_limit=60, visibility_timeout=90)
    app = queue.make_app(s, broker_url="redis://127.0.0.1:1/0")
    c = app.conf
    assert c.accept_content == ["json"] and c.task_serializer == "json" and c.result_accept_content == ["json"]
    assert c.task_acks_late and c.task_reject_on_worker_lost and c.worker_prefetch_multiplier == 1
    assert c.task_soft_time_limit == 50 < c.task_time_limit == 60
    assert c.broker_transport_options["visibility_timeout"] == 90
    assert c.result_backend_transport_options["visibility_timeout"] == 90
    assert c.visibility_timeout == 90
    assert c.broker_connection_retry_on_startup and c.broker_connection_max_retries is None
    assert c.worker_cancel_long_running_tasks_on_connection_loss and c.worker_deduplicate_successful_tasks
    app.loader.import_default_modules()  # what a worker does at start: the `include` task modules
    assert queue.TASK_NAME in app.tasks and queue.SCHEDULE_TASK_NAME in app.tasks
    assert c.task_routes["farm.fire_schedule"]["queue"] == CONTROL_QUEUE


def test_hard_limit_at_or_above_visibility_timeout_is_refused() -> None:
    bad = Settings.model_construct(task_soft_time_limit=10.0, task_time_limit=100.0, visibility_timeout=100.0)
    with pytest.raises(ConfigError, match="visibility timeout"):
        queue.check_limits(bad)
    with pytest.raises(ConfigError):
        queue.make_app(bad, broker_url="redis://127.0.0.1:1/0")


def test_job_time_limits_take_the_spec_limit_capped_by_settings() -> None:
    s = Settings(task_soft_time_limit=100, task_time_limit=120, visibility_timeout=200)
    assert queue.job_time_limits(None, s) == (100, 120)
    assert queue.job_time_limits(10, s) == (10, 40)
    assert queue.job_time_limits(500, s) == (100, 120)
    soft, hard = queue.job_time_limits(95, s)
    assert soft == 95 and soft < hard <= 120


def test_plan_worker_cpu_serves_cpu_and_its_machine_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "nvml_gpus", lambda: ())
    cfg = worker.plan_worker("auto", name="w")
    assert cfg.device == "cpu" and cfg.max_tasks_per_child is None
    assert cfg.queues == ["cpu", f"cpu.{machine_tag()}", "control"]
    assert cfg.tags == ["cpu", f"cpu:{machine_tag()}"]
    assert worker.plan_worker("cpu", queues=["cpu.box2"], name="w").queues == ["cpu.box2", "control"]


def test_plan_worker_gpu_one_job_per_gpu_fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = (
        GpuInfo(index=0, name="NVIDIA A100-SXM4-40GB", tag="a100"),
        GpuInfo(index=1, name="NVIDIA H100", tag="h100"),
    )
    monkeypatch.setattr(worker, "nvml_gpus", lambda: gpus)
    cfg = worker.plan_worker("auto", gpu=1, concurrency=4, name="g")
    assert cfg.device == "cuda" and cfg.gpu_index == 1 and cfg.concurrency == 1 and cfg.max_tasks_per_child == 1
    assert cfg.queues == ["cuda", "cuda.h100", "control"]
    with pytest.raises(ConfigError):
        worker.plan_worker("cuda", gpu=5)
    with pytest.raises(ConfigError):
        worker.plan_worker("tpu")
    with pytest.raises(ConfigError):
        worker.plan_worker("cpu", name="bad name!")


def test_plan_worker_cuda_without_gpus_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "nvml_gpus", lambda: ())
    with pytest.raises(ConfigError, match="no usable CUDA device"):
        worker.plan_worker("cuda", name="n")
    cfg = worker.plan_worker("cuda", queues=["cuda"], name="n")  # explicit queues: no device check
    assert cfg.queues == ["cuda", "control"] and cfg.gpu_index is None


H100 = GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", tag="h100")


@pytest.mark.parametrize(("gpu", "usable"), [(None, 0), (0, 0), (1, 1)])
def test_plan_worker_cuda_refuses_when_cuda_can_use_fewer_gpus_than_asked(
    monkeypatch: pytest.MonkeyPatch, gpu: int | None, usable: int
) -> None:
    """A broken driver or runtime: NVML sees a GPU but torch's CUDA can use none (or fewer than --gpu
    asks for): a one-line ConfigError naming both counts, before the worker takes a job."""
    monkeypatch.setattr(worker, "nvml_gpus", lambda: (H100,))
    monkeypatch.setattr(worker, "cuda_device_count", lambda: usable)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError) as info:
        worker.plan_worker("cuda", gpu=gpu, name="g")
    message = str(info.value)
    assert "\n" not in message and message.endswith("the worker did not start"), message
    assert f"NVML finds 1 GPU(s) but CUDA can use {usable}" in message
    assert message.startswith("--device cuda" + ("" if gpu is None else f" --gpu {gpu}") + ":"), message
    assert "CUDA_VISIBLE_DEVICES='0'" in message


def test_plan_worker_cuda_starts_when_cuda_can_use_enough_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "nvml_gpus", lambda: (H100,))
    monkeypatch.setattr(worker, "cuda_device_count", lambda: 1)
    cfg = worker.plan_worker("cuda", name="g")
    assert cfg.device == "cuda" and cfg.gpu_index == 0 and cfg.gpu_names == [H100.name]
    assert cfg.queues == ["cuda", "cuda.h100", "control"] and cfg.max_tasks_per_child == 1
    a100 = GpuInfo(index=1, name="NVIDIA A100-SXM4-40GB", tag="a100")
    monkeypatch.setattr(worker, "nvml_gpus", lambda: (H100, a100))
    monkeypatch.setattr(worker, "cuda_device_count", lambda: 2)
    cfg = worker.plan_worker("cuda", gpu=1, name="g")
    assert cfg.gpu_index == 1 and cfg.queues == ["cuda", "cuda.a100", "control"]


def test_plan_worker_cuda_with_explicit_queues_skips_the_cuda_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe() -> int:
        raise AssertionError("explicit queues are the operator's word: no CUDA probe")

    monkeypatch.setattr(worker, "nvml_gpus", lambda: (H100,))
    monkeypatch.setattr(worker, "cuda_device_count", probe)
    assert worker.plan_worker("cuda", queues=["cuda.h100"], name="g").queues == ["cuda.h100", "control"]


def test_wildcards_fan_out_to_live_worker_tags() -> None:
    workers = [{"queues": ["cuda", "cuda.h100", "control"]}, {"queues": ["cuda", "cuda.a100"]}, {"queues": ["cpu"]}]
    spec = parse_spec({**TINY, "devices": ["cpu", "cuda:*"]})
    assert controller.expand_wildcards(spec, workers).devices == ("cpu", "cuda:a100", "cuda:h100")
    with pytest.raises(SpecError, match="matches no live worker"):
        controller.expand_wildcards(parse_spec({**TINY, "devices": ["cuda:*"]}), [{"queues": ["cpu"]}])


def test_a_sweep_is_one_run_with_unique_job_ids() -> None:
    a = parse_spec({**TINY, "devices": ["cpu", "cuda"]})
    b = parse_spec({**TINY, "batch": 2, "devices": ["cpu"]})
    jobs = controller.plan_jobs([a, b], "run1")
    assert [j.job_id for j in jobs] == ["run1-000", "run1-001", "run1-002"]
    assert [j.queue for j in jobs] == ["cpu", "cuda", "cpu"]
    assert jobs[2].spec.batch == 2 and all(j.run_id == "run1" for j in jobs)


def test_embedded_default_skips_devices_this_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "nvml_gpus", lambda: ())
    spec, skipped = embedded.local_only(parse_spec({**TINY, "devices": ["cpu", "cuda", "cpu:elsewhere"]}))
    assert spec.devices == ("cpu",) and [d.device for d in skipped] == ["cuda", "cpu:elsewhere"]
    assert skipped[0].line() == "cuda: asked for, skipped: no CUDA device on this machine"
    assert skipped[1].reason.startswith("the CPU of another machine")
    with pytest.raises(SpecError):
        embedded.local_only(parse_spec({**TINY, "devices": ["cuda"]}))
    monkeypatch.setattr(embedded, "nvml_gpus", lambda: (GpuInfo(index=0, name="NVIDIA L4", tag="l4"),))
    spec, skipped = embedded.local_only(parse_spec({**TINY, "devices": ["cuda:l4", "cuda:h100"]}))
    assert spec.devices == ("cuda:l4",) and [(d.device, d.reason) for d in skipped] == [
        ("cuda:h100", "no h100 GPU on this machine (it has l4)")
    ]


def test_without_redis_url_or_embedded_farm_commands_say_what_to_do() -> None:
    with pytest.raises(BrokerError, match="farm up"):
        embedded.resolve_redis_url(get_settings())


# -- the task body, against a real redis-server ------------------------------------------------
@pytest.fixture()
def job_store(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ResultStore:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    monkeypatch.setenv("FARM_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    monkeypatch.setattr(worker, "_stores", {})
    return ResultStore.from_url(redis_url)


def _queued_job(store: ResultStore):  # -> Job
    job = parse_spec({**TINY, "devices": ["cpu"]}).expand()[0]
    store.create_run(job.run_id, [job.spec], [job])
    return job


def test_job_delivered_too_often_is_quarantined_without_running(job_store: ResultStore) -> None:
    job = _queued_job(job_store)
    job_store.r.hset(job_store.key("job", job.job_id), "attempts", 2)  # two deliveries died already
    out = worker.execute_job(job.model_dump(mode="json"))
    assert out["status"] == "failed"
    res = job_store.get_result(job.job_id)
    assert res.status == "failed" and "quarantined after 2 attempts" in (res.error or "")
    assert res.phases == {} and res.attempt == 3
    assert job_store.r.hget(job_store.key("job", job.job_id), "state") == "done"


def test_redelivered_job_with_a_stored_result_is_skipped(job_store: ResultStore) -> None:
    job = _queued_job(job_store)
    job_store.put_result(JobResult.failure(job, "cancelled", "cancelled"))
    assert worker.execute_job(job.model_dump(mode="json"))["status"] == "skipped"
    assert job_store.r.hget(job_store.key("job", job.job_id), "attempts") == "0"  # not counted, not run


def test_malformed_job_message_is_dropped_not_looped(job_store: ResultStore) -> None:
    assert worker.execute_job({"job_id": "x", "spec": {"batch": -1}})["status"] == "rejected"
    assert worker.execute_job(json.loads('{"not": "a job"}'))["status"] == "rejected"


def test_hard_time_limit_in_the_parent_stores_timeout(job_store: ResultStore) -> None:
    from celery.exceptions import TimeLimitExceeded

    job = _queued_job(job_store)
    worker.FarmTask.on_failure(
        worker.FarmTask(), TimeLimitExceeded(60), job.job_id, [job.model_dump(mode="json")], {}, None
    )
    res = job_store.get_result(job.job_id)
    assert res.status == "timeout" and "hard time limit" in (res.error or "")


def test_cli_against_a_password_protected_redis(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from farm.cli.main import app
    from farm.cluster.redisproc import RedisProcess

    rp = RedisProcess(tmp_path / "redis", password="s3cret-pw").start()
    try:
        for url, code in ((rp.url.replace(":s3cret-pw@", ""), 3), (rp.url, 0)):
            monkeypatch.setenv("FARM_REDIS_URL", url)
            get_settings.cache_clear()
            res = CliRunner().invoke(app, ["workers", "--json"])
            assert res.exit_code == code, res.output
            assert "s3cret-pw" not in res.output + res.stderr
        assert json.loads(res.stdout) == []
    finally:
        rp.kill9()


def test_workers_says_where_the_farm_is_with_its_password_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """`farm workers` ends with the farm's URL and how a second worker joins (the two-machine
    workflow needed `embedded.json` before); a password in the URL is never printed."""
    from farm.cli import farm_cmds

    monkeypatch.setenv("FARM_REDIS_URL", "redis://:hunter2@10.0.0.5:6390/0")
    get_settings.cache_clear()
    line = farm_cmds._farm_line()
    assert "hunter2" not in line and "redis://:***@10.0.0.5:6390/0, from FARM_REDIS_URL" in line
    assert "farm worker --machine NAME" in line
    monkeypatch.setenv("FARM_REDIS_URL", "redis://farm:s3cret@db:6379/1")
    get_settings.cache_clear()
    assert "s3cret" not in farm_cmds._farm_line() and "redis://farm:***@db:6379/1" in farm_cmds._farm_line()
