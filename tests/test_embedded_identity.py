"""Which process is the embedded farm's: start in clock ticks since boot (no clock step moves it),
the command-line marker, and the data directory's owner lock. Real processes, real redis-server;
no workers (tests/test_embedded_clock.py runs the whole farm)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from farm.cluster import embedded
from farm.cluster.redisproc import OWNER_LOCK, RedisProcess, lock_holders, owner_lock_held
from farm.errors import OwnershipError
from farm.settings import Settings

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="clock ticks come from Linux's /proc")

SLEEPER = "import time; time.sleep(120)"


@pytest.fixture()
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def start(procs: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, *args])
    procs.append(p)
    return p


def wait_for_exec(pid: int, marker: str) -> None:
    """Until the child has exec'd (its command line shows `marker`)."""
    deadline = time.monotonic() + 30
    while not any(marker in a for a in psutil.Process(pid).cmdline()):
        assert time.monotonic() < deadline, f"pid {pid} never showed {marker!r}"
        time.sleep(0.02)


def fake_worker(procs: list[subprocess.Popen[bytes]], name: str = "embedded-cpu-test") -> dict[str, Any]:
    """A live process whose command line carries the worker marker, and its correct state entry."""
    p = start(procs, "-c", SLEEPER, "worker", name)
    wait_for_exec(p.pid, name)
    return {"pid": p.pid, **embedded._identity(p.pid), "name": name, "device": "cpu", "gpu": None, "log": ""}


def write_state(home: Path, workers: list[dict[str, Any]], redis: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {"url": "redis://127.0.0.1:1/0", "redis": redis or {"pid": 0}, "workers": workers, "started_at": 0}
    (home / "embedded.json").write_text(json.dumps(state))
    return state


def servers_in(data: Path) -> list[int]:
    """Pids of the redis-servers running in `data` (redis-server chdirs to its --dir)."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.name() == "redis-server" and p.cwd() == str(data):
                found.append(p.pid)
    return found


def test_start_ticks_skips_a_command_name_with_spaces_and_parentheses(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    # A process may name itself anything (15 bytes): here ") (" and numbers that a naive split
    # of /proc/PID/stat would take for fields.
    code = "open('/proc/self/comm', 'w').write('x) (1 2 3) 4'); import time; time.sleep(120)"
    p = start(spawned, "-c", code)
    deadline = time.monotonic() + 30
    while psutil.Process(p.pid).name() != "x) (1 2 3) 4":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stat = Path(f"/proc/{p.pid}/stat").read_bytes()
    assert stat.startswith(f"{p.pid} (x) (1 2 3) 4) ".encode())
    ticks = embedded.start_ticks(p.pid)
    # psutil's own reading of field 22 (ticks since boot / CLK_TCK), independent of the wall clock.
    assert ticks == round(psutil.Process(p.pid)._proc.create_time(monotonic=True) * os.sysconf("SC_CLK_TCK"))
    assert embedded.start_ticks(p.pid) == ticks  # a property of the process, read again the same
    p.kill()
    p.wait()
    assert embedded.start_ticks(p.pid) is None  # reaped: nothing to read


def test_down_stops_a_recorded_process_whose_wall_clock_start_moved(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    # A clock step moves psutil's create_time; the recorded ticks still prove the process ours.
    w = fake_worker(spawned)
    w["create_time"] -= 4500.0
    write_state(tmp_path, [w])
    assert embedded.down(Settings(home=tmp_path)) == [f"worker embedded-cpu-test (pid {w['pid']})"]
    assert spawned[0].wait(30) is not None
    assert not (tmp_path / "embedded.json").exists()


def test_down_leaves_everything_alone_when_a_marked_pid_is_not_provably_ours(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    settings = Settings(home=tmp_path)
    good = fake_worker(spawned, "embedded-cpu-good")
    doubtful = fake_worker(spawned, "embedded-cpu-doubt")
    doubtful["start_ticks"] += 1  # our command line, another start: not the process `up` recorded
    state = write_state(tmp_path, [good, doubtful])
    with pytest.raises(OwnershipError, match=f"pid {doubtful['pid']} \\(worker embedded-cpu-doubt: it started"):
        embedded.down(settings)
    assert json.loads((tmp_path / "embedded.json").read_text()) == state
    assert all(p.poll() is None for p in spawned)  # neither was signalled, not even the provable one

    # A state file of an older farm (no ticks) after a clock step: the wall-clock start is all it
    # has, and it is off by the step. Not provable either: refused, named, left alone.
    old = {k: v for k, v in good.items() if k not in ("start_ticks", "boot_id")}
    old["create_time"] -= 4500.0
    state = write_state(tmp_path, [old])
    with pytest.raises(OwnershipError, match=f"pid {good['pid']} .*off the recorded wall-clock start"):
        embedded.down(settings)
    assert json.loads((tmp_path / "embedded.json").read_text()) == state
    assert all(p.poll() is None for p in spawned)
    # The same older entry without a clock step is proved as before (create_time within 1 s).
    old["create_time"] += 4500.0
    write_state(tmp_path, [old])
    assert embedded.down(settings) == [f"worker embedded-cpu-good (pid {good['pid']})"]
    assert spawned[0].wait(30) is not None and spawned[1].poll() is None


def test_a_pid_recorded_in_an_earlier_boot_is_never_ours(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    w = fake_worker(spawned)
    w["boot_id"] = "00000000-0000-0000-0000-000000000000"
    write_state(tmp_path, [w])
    assert embedded.down(Settings(home=tmp_path)) == []
    assert spawned[0].poll() is None  # not signalled
    assert not (tmp_path / "embedded.json").exists()


def test_the_owner_lock_lives_exactly_as_long_as_redis_server(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    first = RedisProcess(data, owner_lock=True).start()
    try:
        assert lock_holders(data / OWNER_LOCK) == [first.pid]  # the server, not the process that started it
        assert owner_lock_held(data)
        second = RedisProcess(data, owner_lock=True)
        with pytest.raises(OwnershipError, match=f"pid {first.pid} \\(redis-server\\) holds"):
            second.start()
        assert second.proc is None  # nothing was started
        assert first.proc is not None and first.proc.poll() is None
    finally:
        first.kill9()
    assert not owner_lock_held(data)  # the kernel released it with the server, crash and all
    again = RedisProcess(data, owner_lock=True).start()
    try:
        assert lock_holders(data / OWNER_LOCK) == [again.pid]
    finally:
        again.stop()


def test_up_never_starts_a_second_server_on_a_held_data_directory(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    squatter = RedisProcess(tmp_path / "redis", owner_lock=True).start()  # a server no state names
    try:
        with pytest.raises(OwnershipError, match=f"pid {squatter.pid} \\(redis-server\\) holds .*does not name it"):
            embedded.up(settings, wait_s=5)
        with pytest.raises(OwnershipError, match=f"pid {squatter.pid} holds"):
            embedded.down(settings)  # "no embedded farm is running" would be untrue here
        assert servers_in(tmp_path / "redis") == [squatter.pid]
        assert not (tmp_path / "embedded.json").exists()
    finally:
        squatter.kill9()
    assert embedded.down(settings) == []  # nothing holds it now: nothing runs


def test_up_refuses_when_the_recorded_redis_is_not_provably_ours(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    settings = Settings(home=tmp_path)
    p = start(spawned, "-c", SLEEPER, "redis-server")
    wait_for_exec(p.pid, "redis-server")
    redis = {"pid": p.pid, **embedded._identity(p.pid), "port": 1}
    redis["start_ticks"] -= 1
    state = write_state(tmp_path, [], redis)
    with pytest.raises(OwnershipError, match=f"pid {p.pid} \\(redis-server: "):
        embedded.up(settings, wait_s=5)
    assert json.loads((tmp_path / "embedded.json").read_text()) == state
    assert not owner_lock_held(tmp_path / "redis")  # no server was started there
    assert p.poll() is None


def test_up_never_starts_a_second_server_beside_one_without_the_lock(tmp_path: Path) -> None:
    # What an older farm left running after it lost its state: a server on the data, no lock.
    settings = Settings(home=tmp_path)
    legacy = RedisProcess(tmp_path / "redis").start()
    try:
        with pytest.raises(OwnershipError, match=f"pid {legacy.pid} \\(redis-server\\) runs there without holding"):
            embedded.up(settings, wait_s=5)
        assert servers_in(tmp_path / "redis") == [legacy.pid]
        assert not owner_lock_held(tmp_path / "redis") and not (tmp_path / "embedded.json").exists()
    finally:
        legacy.kill9()


def test_a_worker_lost_at_start_is_named_with_its_exit_status(spawned: list[subprocess.Popen[bytes]]) -> None:
    """`farm up` waits for its workers: one still live (or still exec'ing: its command line is the
    parent's for a moment, which once failed `farm up` under load with an empty log) is not lost; one
    that exited is named with its status."""
    live = fake_worker(spawned)
    assert embedded._lost_at_start(live, confirm_s=0.3) is None
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)", "worker", "embedded-cpu-dead"])
    entry = {"pid": p.pid, **embedded._identity(p.pid), "name": "embedded-cpu-dead", "device": "cpu", "gpu": None}
    deadline = time.monotonic() + 30
    while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert embedded._lost_at_start(entry, confirm_s=0.3) == "exited with status 3"
