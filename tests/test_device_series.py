"""One device, one history (issue: `cpu`, `cpu:<machine>` and `cpu:*` on one machine were two series):
records carry the series device (`farm.spec.series_device`), the store files a CPU result under
`cpu` and `cpu:<machine>` whatever its job named, and results stored before are migrated once."""

from __future__ import annotations

import socket

import pytest

from farm.errors import ConfigError, SpecError
from farm.reports.compare import parse_baseline
from farm.reports.report import Selection, select
from farm.results import synthetic as syn
from farm.results.records import records_from_results
from farm.results.store import ResultStore
from farm.results.store.points import SERIES_VERSION
from farm.results.store.spec_hashes import DEVICE_INDEX_VERSION
from farm.spec import device_selector, device_selects, series_device


@pytest.mark.parametrize(
    ("tag", "series", "selector"),
    [
        ("cpu", "cpu", ("cpu", None)),
        ("cpu:vm", "cpu", ("cpu", "vm")),
        ("cpu:*", "cpu", ("cpu", None)),
        ("cuda", "cuda", ("cuda", None)),
        ("cuda:h100", "cuda:h100", ("cuda:h100", None)),
        ("cuda:1", "cuda", ("cuda", None)),
        ("mps:mini", "mps", ("mps", "mini")),
    ],
)
def test_series_device_and_selector(tag: str, series: str, selector: tuple[str, str | None]) -> None:
    assert series_device(tag) == series and device_selector(tag) == selector


def _results() -> list:  # type: ignore[type-arg]
    vm, box = syn.machine("vm"), syn.machine("box7")
    return [
        syn.result("r1", 0, "cpu", {"forward": [0.1] * 5}, fingerprint=vm),
        syn.result("r2", 0, "cpu:vm", {"forward": [0.11] * 5}, fingerprint=vm),
        syn.result("r3", 0, "cpu:box7", {"forward": [0.2] * 5}, fingerprint=box),
    ]


def test_three_spellings_of_one_cpu_are_one_series(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    results = _results()
    assert len({r.spec_hash for r in results}) == 1  # the device is not part of the spec hash
    for res in results:
        assert store.put_result(res)
    assert {r.device for r in records_from_results(results)} == {"cpu"}
    by = {d: sorted(r.run_id for r in store.query(devices=[d])) for d in ("cpu", "cpu:vm", "cpu:box7")}
    assert by == {"cpu": ["r1", "r2", "r3"], "cpu:vm": ["r1", "r2"], "cpu:box7": ["r3"]}
    series = store.series_points(phases=["forward"])
    assert sorted((s.machine, s.device, len(s.points)) for s in series) == [("box7", "cpu", 1), ("vm", "cpu", 2)]
    narrowed = store.series_points(devices=["cpu:vm"], phases=["forward"])
    assert [(s.machine, len(s.points)) for s in narrowed] == [("vm", 2)]
    rep = select(store, Selection(devices=("cpu:vm",)), parse_baseline("device=cpu:vm"))
    assert {r.record.run_id for r in rep.rows} == {"r1", "r2"}
    assert parse_baseline("device=cpu:vm").machine == "vm"


def test_results_stored_before_are_migrated_once(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    old = syn.result("r0", 0, "cpu:vm", {"forward": [0.1] * 5}, fingerprint=syn.machine("vm"))
    assert store.put_result(old)
    # As an older farm left it: only the tag the job named, no migration recorded, series of v1.
    store.r.zrem(store._index_key("device", "cpu"), old.job_id)
    store.r.hdel(store._meta_key(), "device_index_version")
    assert store.r.zscore(store._index_key("device", "cpu"), old.job_id) is None
    fresh = ResultStore.from_url(redis_url)
    assert [r.job_id for r in fresh.query(devices=["cpu"])] == [old.job_id]
    assert fresh.r.hget(fresh._meta_key(), "device_index_version") == str(DEVICE_INDEX_VERSION)


@pytest.mark.parametrize(
    ("named", "gpu", "series"),
    [
        ("cuda", "h100", "cuda:h100"),
        ("cuda:*", "h100", "cuda:h100"),
        ("cuda:h100", "h100", "cuda:h100"),
        ("cuda:0", "a100", "cuda:a100"),
        ("cuda:mi300", "amd", "cuda:mi300"),  # a model tag the job named stands (its queue chose the GPU)
    ],
)
def test_a_cuda_result_is_filed_under_the_gpu_it_ran_on(named: str, gpu: str, series: str) -> None:
    assert series_device(named, gpu) == series
    assert device_selects("cuda", series) and device_selects(series, series)
    assert not device_selects("cuda:a100", "cuda:h100") and not device_selects("cpu", series)


def _gpu_results() -> list:  # type: ignore[type-arg]
    h100 = syn.machine("gpu1", gpu="NVIDIA H100 80GB HBM3")
    a100 = syn.machine("gpu2", gpu="NVIDIA A100-SXM4-40GB")
    return [
        syn.result("g1", 0, "cuda", {"forward": [0.01] * 5}, fingerprint=h100),
        syn.result("g2", 0, "cuda:h100", {"forward": [0.011] * 5}, fingerprint=h100),
        syn.result("g3", 0, "cuda", {"forward": [0.02] * 5}, fingerprint=a100),
    ]


def test_cuda_and_cuda_h100_on_one_h100_are_one_series(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    results = _gpu_results()
    for res in results:
        assert store.put_result(res)
    assert [r.device for r in records_from_results(results)] == ["cuda:h100", "cuda:h100", "cuda:a100"]
    by = {d: sorted(r.run_id for r in store.query(devices=[d])) for d in ("cuda", "cuda:h100", "cuda:a100")}
    assert by == {"cuda": ["g1", "g2", "g3"], "cuda:h100": ["g1", "g2"], "cuda:a100": ["g3"]}
    every = store.series_points(devices=["cuda"], phases=["forward"])
    assert sorted((s.device, len(s.points)) for s in every) == [("cuda:a100", 1), ("cuda:h100", 2)]
    one = store.series_points(devices=["cuda:h100"], phases=["forward"])
    assert [(s.device, s.machine, len(s.points)) for s in one] == [("cuda:h100", "gpu1", 2)]
    rep = select(store, Selection(devices=("cuda:h100",)), parse_baseline(None))
    assert {r.record.run_id for r in rep.rows} == {"g1", "g2"}


def test_cuda_results_stored_before_join_their_gpus_series(redis_url: str) -> None:
    store = ResultStore.from_url(redis_url)
    old = _gpu_results()[0]  # `cuda` on an H100
    assert store.put_result(old)
    # As a farm before DEVICE_INDEX_VERSION 2 and SERIES_VERSION 3 left it: indexed under `cuda` only,
    # its series under the device its job named.
    for tag in ("cuda:h100",):
        store.r.zrem(store._index_key("device", tag), old.job_id)
    store.r.hset(store._meta_key(), mapping={"device_index_version": 1, "series_version": 2})
    for sid in store.r.hkeys(store._series_meta_key()):
        store.r.delete(store.series_key(sid))
    store.r.delete(store._series_meta_key())
    legacy = f"{old.spec_hash}|gpu1|cuda|forward"
    store.r.hset(
        store._series_meta_key(), legacy, f'[0,"{old.job_id}","gpt2","{old.spec_hash}","gpu1","cuda","forward"]'
    )
    store.r.set(store.series_key(legacy), b"")
    fresh = ResultStore.from_url(redis_url)
    assert [r.job_id for r in fresh.query(devices=["cuda:h100"])] == [old.job_id]
    series = fresh.series_points(devices=["cuda"])
    assert [(s.device, s.phase, len(s.points)) for s in series] == [("cuda:h100", "forward", 1)]
    meta = fresh.r.hmget(fresh._meta_key(), ["device_index_version", "series_version"])
    assert meta == [str(DEVICE_INDEX_VERSION), str(SERIES_VERSION)]
    assert legacy not in fresh.r.hkeys(fresh._series_meta_key())


def test_a_worker_with_a_machine_tag_serves_and_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.cluster import worker
    from farm.engine.hardware import fingerprint, machine_tag
    from farm.settings import get_settings

    monkeypatch.setattr(worker, "nvml_gpus", lambda: ())
    monkeypatch.setenv("FARM_MACHINE", "box7")
    get_settings.cache_clear()
    try:
        cfg = worker.plan_worker("cpu", name="w")
        assert cfg.machine == "box7" and cfg.tags == ["cpu", "cpu:box7"]
        assert cfg.queues == ["cpu", "cpu.box7", "control"]
        assert machine_tag() == "box7" and fingerprint(with_torch=False).machine_tag == "box7"
        assert machine_tag("Other.lab") == "other"  # a host name given is still that host's tag
        monkeypatch.setenv("FARM_MACHINE", "Bad Tag!")
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="FARM_MACHINE"):
            get_settings()
    finally:
        monkeypatch.delenv("FARM_MACHINE")
        get_settings.cache_clear()


def test_the_embedded_farm_accepts_tags_its_live_workers_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.cluster import embedded
    from farm.spec import parse_spec

    monkeypatch.setattr(embedded, "nvml_gpus", lambda: ())
    tiny = {"model": "gpt2-tiny", "batch": 1, "seq": 8, "repeats": 1, "warmup": 0}
    spec = parse_spec({**tiny, "devices": ["cpu", "cpu:box7", "cpu:elsewhere"]})
    kept, skipped = embedded.local_only(spec, {"cpu", "cpu:box7"})
    assert kept.devices == ("cpu", "cpu:box7") and [d.device for d in skipped] == ["cpu:elsewhere"]
    with pytest.raises(SpecError, match="this machine has none"):
        embedded.local_only(parse_spec({**tiny, "devices": ["cpu:box7"]}))
    monkeypatch.setattr(embedded, "running_url", lambda settings=None: None)
    assert embedded.live_tags() == set()  # no embedded farm running: nothing but this machine's own


def test_live_tags_reads_the_workers_heartbeats(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from farm.cluster import embedded

    store = ResultStore.from_url(redis_url)
    store.r.sadd(store._workers_key(), "w2")
    store.r.hset(store._worker_key("w2"), mapping={"tags": json.dumps(["cpu", "cpu:box7"])})
    monkeypatch.setattr(embedded, "running_url", lambda settings=None: redis_url)
    assert embedded.live_tags() == {"cpu", "cpu:box7"}


@pytest.mark.real
def test_two_real_workers_one_with_machine_three_spellings_one_series(redis_url: str) -> None:
    """Two real `farm worker`s on this host, the second with `--machine box7` (two machines on one
    box): `cpu:box7`, `cpu:*` and `cpu` all land in one `cpu` series per machine."""
    import os
    import subprocess
    import sys

    from farmproc import start_worker, stop_all

    from farm.engine.hardware import machine_tag

    here = machine_tag(socket.gethostname())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_REDIS_URL=redis_url, FARM_HOME=os.environ["FARM_HOME"])
    tiny = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]
    cmd = [sys.executable, "-m", "farm.cli.main", "submit", *tiny, "--phases", "forward", "--wait", "--json"]
    workers = [start_worker(redis_url), start_worker(redis_url, machine="box7")]
    try:
        for w in workers:
            w.wait_ready()
        for devices in ("cpu:box7", "cpu:*", "cpu"):
            p = subprocess.run(
                [*cmd, "--devices", devices],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert p.returncode == 0, p.stderr
    finally:
        stop_all(workers)
    store = ResultStore.from_url(redis_url)
    results = store.query()
    assert len(results) == 4 and {r.machine.machine_tag for r in results if r.machine} == {here, "box7"}
    assert {r.device for r in results} == {"cpu", "cpu:box7", f"cpu:{here}"}  # as each job named it
    series = store.series_points(phases=["forward"])
    assert sorted(s.machine or "" for s in series) == sorted([here, "box7"]) and {s.device for s in series} == {"cpu"}
    assert sum(len(s.points) for s in series) == 4
    on_box7 = {r.job_id for r in store.query(devices=["cpu:box7"])}
    assert on_box7 == {r.job_id for r in results if r.machine and r.machine.machine_tag == "box7"} and len(on_box7) >= 2
