"""A real `farm beat` (Celery beat + celery-redbeat) firing schedules; two beats fire once per tick.

Real processes only: redis-server, `farm beat` and `farm worker` subprocesses (no eager mode).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from farm.nightly.schedule import ScheduleBook
from farm.nightly.sweep import parse_sweep
from farm.settings import get_settings

pytestmark = pytest.mark.integration

ONE_POINT = {
    "name": "beat-tiny",
    "model": "gpt2-tiny",
    "phases": ["forward"],
    "seq": 16,
    "batch": 1,
    "repeats": 2,
    "warmup": 0,
}


class BeatProcess:
    """One `farm beat` subprocess in its own session, logging to a file."""

    def __init__(self, redis_url: str, log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, "FARM_REDIS_URL": redis_url}
        cmd = [sys.executable, "-m", "farm.cli.main", "beat", "--max-interval", "1", "--loglevel", "info"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sent(self, name: str) -> int:
        """How many times this beat sent the schedule's task."""
        return self.log().count(f"Sending due task {name} ")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (beat releases its redbeat lock), then SIGKILL of the session if needed."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture()
def farm_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    return redis_url


@pytest.fixture()
def beats(farm_env: str, tmp_path: Path) -> Iterator[Callable[[], BeatProcess]]:
    started: list[BeatProcess] = []

    def start() -> BeatProcess:
        b = BeatProcess(farm_env, tmp_path / f"beat-{len(started)}.log")
        started.append(b)
        return b

    try:
        yield start
    finally:
        for b in started:
            b.stop()


def until(cond: Callable[[], object], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{logs()[-3000:]}")


def farm_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `farm` command in a subprocess (FARM_REDIS_URL comes from the environment)."""
    cmd = [sys.executable, "-m", "farm.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def test_sweep_and_beat_through_a_real_worker(farm_env: str, beats: Callable[[], BeatProcess], tmp_path: Path) -> None:
    """One worker for both (it imports torch once): a 2-point sweep, a nightly resubmission, a beat firing."""
    from farmproc import start_worker

    from farm.cluster.controller import store_for

    sweep_file = tmp_path / "two.yaml"
    sweep_file.write_text(
        json.dumps(
            {**{k: v for k, v in ONE_POINT.items() if k != "batch"}, "name": "two-points", "grid": {"batch": [1, 2]}}
        )
    )
    worker = start_worker(farm_env, device="cpu")
    try:
        worker.wait_ready()
        # A 2-point sweep: one run, two jobs, two `ok` results, printed as {"run_id", "results"}.
        done = farm_cli("sweep", str(sweep_file), "--wait", "--json")
        assert done.returncode == 0, done.stderr + worker.log()[-3000:]
        doc = json.loads(done.stdout)
        assert [r["status"] for r in doc["results"]] == ["ok", "ok"]
        assert sorted(r["spec"]["batch"] for r in doc["results"]) == [1, 2]
        assert {r["run_id"] for r in doc["results"]} == {doc["run_id"]}

        # The same night twice: the second submission enqueues nothing.
        first = farm_cli("sweep", str(sweep_file), "--nightly", "--date", "2026-11-28", "--json")
        again = farm_cli("sweep", str(sweep_file), "--nightly", "--date", "2026-11-28", "--json")
        a, b = json.loads(first.stdout), json.loads(again.stdout)
        assert a["run_id"] == b["run_id"] == "two-points-20261128"
        assert a["created"] and not b["created"] and "already exists" in again.stderr

        # `farm beat` fires an every-2-s schedule; the worker runs the firing and then its job.
        book = ScheduleBook()
        book.add("every2", parse_sweep(ONE_POINT), every_s=2)
        beat = beats()
        until(lambda: book.fires("every2"), 60, "a firing", lambda: beat.log() + worker.log())
        run_id = book.fires("every2")[-1]["run_id"]  # the first firing
        assert run_id.startswith("beat-tiny-")
        store = store_for()

        def finished() -> bool:
            return all(store.has_result(j) for j in store.get_run(run_id)["jobs"])

        until(finished, 90, f"the results of {run_id}", worker.log)
        assert [r.status for r in store.query(runs=[run_id])] == ["ok"]
        assert store.get_run(run_id)["tags"] == {"schedule": "every2"}
        assert beat.sent("every2") >= 1
    finally:
        worker.stop()


def test_two_beats_fire_once_per_tick(farm_env: str, beats: Callable[[], BeatProcess]) -> None:
    """No worker: the task messages stay on the `control` list, where they can be counted."""
    book = ScheduleBook()
    book.add("tick", parse_sweep(ONE_POINT), every_s=2)
    r = redis.Redis.from_url(farm_env, decode_responses=True)
    a = beats()
    until(lambda: "Acquired lock" in a.log(), 30, "beat A's lock", a.log)
    b = beats()
    until(lambda: r.llen("control") >= 3, 30, "three firings", lambda: a.log() + b.log())
    assert b.sent("tick") == 0 and "Acquired lock" not in b.log()  # B waits for the lock: a standby
    a.stop()  # a clean stop releases the lock: B takes over
    until(lambda: "Acquired lock" in b.log(), 30, "beat B's lock", b.log)
    before = r.llen("control")
    until(lambda: r.llen("control") >= before + 2, 30, "B's firings", b.log)
    b.stop()

    messages = [json.loads(m) for m in r.lrange("control", 0, -1)]
    assert {m["headers"]["task"] for m in messages} == {"farm.fire_schedule"}
    assert {tuple(json.loads(base64.b64decode(m["body"]))[0]) for m in messages} == {("tick",)}
    # Every message is one tick: as many as the two beats sent together, as many as redbeat counted.
    sent = a.sent("tick") + b.sent("tick")
    meta = json.loads(r.hget(f"{book.store.p}:redbeat:tick", "meta") or "{}")
    assert len(messages) == sent == meta["total_run_count"]
    assert a.sent("tick") >= 3 and b.sent("tick") >= 2
