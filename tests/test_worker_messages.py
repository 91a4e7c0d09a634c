"""A worker survives any message it cannot decode (a real redis-server, a real `farm worker`).

Entries are pushed with redis-py LPUSH onto the worker's `cpu` list, the way kombu's Redis transport
stores a message (a JSON envelope: body, headers, properties with delivery tag and info). Envelopes
are kombu's own: sent with the farm's app to a queue nobody serves and popped from there. Each
undecodable entry is logged in one line naming the queue and dropped (never delivered, so never
acked or redelivered); a `farm.run_job` message whose job fails validation is stored as a `failed`
result when its job id names a job of the farm, else dropped. The worker keeps serving: a real
gpt2-tiny job afterwards completes with exactly one result.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

import pytest
import redis
from farmproc import WorkerProcess, start_worker

from farm.cluster.queue import GuardedChannel, make_app
from farm.cluster.redisproc import RedisProcess
from farm.results.store import ResultStore
from farm.settings import Settings
from farm.spec import BenchSpec, Job, new_run_id

pytestmark = pytest.mark.integration

TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]
PARKING = "parking"  # a queue no worker serves: kombu's envelopes are taken from here


class Farm:
    def __init__(self, rp: RedisProcess, worker: WorkerProcess) -> None:
        self.url = rp.url
        self.worker = worker
        self.r = redis.Redis.from_url(rp.url)
        self.app = make_app(Settings(), broker_url=rp.url)
        self.store = ResultStore.from_url(rp.url)

    def envelope(self, task: str, args: list[Any], task_id: str | None = None) -> dict[str, Any]:
        """A message exactly as kombu stores it for `task` on `cpu` (sent with the farm's app to a queue
        nobody serves, popped again, its routing key then the one a message sent to `cpu` has)."""
        self.app.send_task(task, args=args, task_id=task_id, queue=PARKING)
        raw = self.r.rpop(PARKING)
        assert raw is not None
        doc = dict(json.loads(raw))
        assert doc["properties"]["delivery_info"] == {"exchange": "", "routing_key": PARKING}
        doc["properties"]["delivery_info"]["routing_key"] = "cpu"
        return doc

    def push(self, entry: bytes | str | dict[str, Any]) -> None:
        self.r.lpush("cpu", json.dumps(entry) if isinstance(entry, dict) else entry)

    def drops(self) -> list[str]:
        return re.findall(r"queue cpu: dropped .*", self.worker.log())

    def wait_log(self, count: int, pattern: str, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.worker.log())
            if len(found) >= count or time.monotonic() > deadline:
                return found
            assert self.worker.proc.poll() is None, self.worker.log()[-3000:]
            time.sleep(0.2)

    def submit_tiny(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(FARM_REDIS_URL=self.url, FARM_HOME=os.environ["FARM_HOME"])
        cmd = [sys.executable, "-m", "farm.cli.main", "submit", *TINY, "--phases", "forward", "--devices", "cpu"]
        p = subprocess.run([*cmd, "--wait", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert p.stdout.strip(), p.stderr
        return dict(json.loads(p.stdout))


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    rp = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    home = str(tmp_path_factory.getbasetemp() / "farm-home")  # the session's farm home (CPU peak cached)
    os.environ["FARM_HOME"] = home
    w = start_worker(rp.url, queues=["cpu"], name="msg-worker", env={"FARM_HOME": home})
    try:
        w.wait_ready()
        yield Farm(rp, w)
    finally:
        w.stop()
        rp.kill9()


def assert_keeps_serving(farm: Farm) -> None:
    """The worker is alive, holds no message, and the next real job completes with one result."""
    assert farm.worker.proc.poll() is None, farm.worker.log()[-3000:]
    doc = farm.submit_tiny()
    assert len(doc["results"]) == 1
    res = doc["results"][0]
    assert res["status"] in ("ok", "invalid"), res["error"]
    assert res["worker"] == "msg-worker"
    assert farm.store.query_ids(runs=[doc["run_id"]]) == [res["job_id"]]
    assert farm.r.llen("cpu") == 0
    assert farm.r.hlen("unacked") == 0  # kombu's unacked hash: nothing left in flight


def test_undecodable_entries_are_logged_dropped_and_the_worker_keeps_serving(farm: Farm) -> None:
    good = farm.envelope("farm.run_job", [{"job_id": "x"}])
    bad_entries: list[bytes | str | dict[str, Any]] = [
        b"not json at all",  # the entry that used to end the worker (JSONDecodeError)
        b"\xff\xfe\x00binary",
        "[1, 2]",  # JSON that is not a kombu message
        '{"hello": "world"}',
        {**good, "properties": {**good["properties"], "delivery_info": None}},
        {**good, "body": "!!!not base64"},
        {**good, "properties": {**good["properties"], "body_encoding": "rot13"}},
        {**good, "body": base64.b64encode(b"not json").decode()},  # a body that is not JSON
        {**good, "headers": {**good["headers"], "task": ["farm.run_job"]}},  # unhashable task name
        farm.envelope("nope.unknown_task", [1]),  # a Celery message for a task nobody registered
    ]
    for entry in bad_entries:
        farm.push(entry)
    drops = farm.wait_log(len(bad_entries), r"queue cpu: dropped .*")
    assert len(drops) == len(bad_entries), farm.worker.log()[-4000:]
    assert any("not JSON" in d for d in drops)
    assert any("is not one this worker runs" in d for d in drops)
    assert "Unrecoverable error" not in farm.worker.log()
    assert_keeps_serving(farm)


def test_a_job_message_that_fails_validation_is_stored_as_failed_or_dropped(farm: Farm) -> None:
    # A job the farm knows (its run and job recorded as a submission does) whose message is tampered.
    spec = BenchSpec(model="gpt2-tiny", batch=1, seq=32, repeats=2, warmup=0)
    job = Job(job_id="tampered-job-1", run_id=new_run_id(), device="cpu", spec=spec)
    farm.store.create_run(job.run_id, [spec], [job])
    doc = job.model_dump(mode="json")
    doc["spec"]["repeats"] = -5
    farm.push(farm.envelope("farm.run_job", [doc], task_id=job.job_id))
    # A message whose job id no farm job has: nothing to fail, so it is dropped.
    farm.push(farm.envelope("farm.run_job", [{"job_id": "nobody-knows", "run_id": 3}], task_id="nobody-knows"))
    # Not even a job id: dropped.
    farm.push(farm.envelope("farm.run_job", [["not", "a", "job"]]))

    stored = farm.wait_log(1, r"queue cpu: job tampered-job-1: .*stored as failed")
    dropped = farm.wait_log(2, r"queue cpu: dropped a job message that fails validation .*")
    assert len(stored) == 1 and len(dropped) == 2, farm.worker.log()[-4000:]
    res = farm.store.get_result(job.job_id)
    assert res.status == "failed"
    assert res.error is not None and "failed validation" in res.error and "repeats" in res.error
    assert res.worker == "msg-worker"
    assert not farm.store.has_result("nobody-knows")
    assert_keeps_serving(farm)


def test_consumers_without_an_event_loop_and_broadcasts_drop_undecodable_entries_too(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`_get` (drain_events without the worker's event loop) and broadcasts go through the same check."""
    from kombu import Connection

    r = redis.Redis.from_url(redis_url)
    app = make_app(Settings(), broker_url=redis_url)
    app.send_task("farm.run_job", args=[{"job_id": "x"}], queue="q")
    good = r.rpop("q")
    r.lpush("q", b"{not json", good)  # RPOP order: the garbage comes first
    with Connection(redis_url) as conn:
        chan = GuardedChannel(conn.transport)  # kombu's channel constructor, on the farm's subclass
        try:
            with caplog.at_level(logging.ERROR, logger="farm.cluster.queue"):
                with pytest.raises(Empty):
                    chan._get("q")
                assert chan._get("q")["headers"]["task"] == "farm.run_job"  # the next entry is delivered
                with pytest.raises(Empty):
                    chan._deliver_fanout_message([1, 2], "celeryev")
        finally:
            chan.close()
    assert [rec.getMessage().split(":")[0] for rec in caplog.records] == ["queue q", "broadcast celeryev"]
    assert r.llen("q") == 0
