"""The embedded farm with real redis-server and real `farm worker` processes, driven by the CLI in a
fresh HOME: a wall-clock step between `farm up` and `farm down`, two `farm up` at once on one data
directory, and a controller killed (`kill -9`) in the middle of `farm up`. After each, `farm down`
leaves no process of the farm running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_farm_embedded import bare_env, farm, ours

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the clock step is faked in psutil's Linux boot time"),
]

# The CLI with the wall clock stepped by argv[1] seconds, as this process sees it: psutil derives
# create_time() from the boot time in wall-clock seconds (/proc/stat btime, which the kernel moves
# when the clock steps), so shifting psutil's boot time is what a VM resume or an NTP step does to
# the controller. Clock ticks since boot (/proc/PID/stat) are untouched, as in a real step.
STEP_CLOCK = """
import sys
import psutil, psutil._pslinux as linux
step = float(sys.argv.pop(1))
real = linux.boot_time
linux.boot_time = lambda: real() + step
psutil.boot_time = linux.boot_time
"""
STEPPED = STEP_CLOCK + 'import runpy; runpy.run_module("farm.cli.main", run_name="__main__", alter_sys=True)\n'
# What a stepped process sees as the start (create_time) of each pid in argv[1] (JSON).
STEPPED_STARTS = (
    STEP_CLOCK + "import json; print(json.dumps([psutil.Process(p).create_time() for p in json.loads(sys.argv[1])]))\n"
)


def farm_stepped(step_s: float, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", STEPPED, str(step_s), *args], env=env, capture_output=True, text=True, timeout=300
    )


def state_file(home: Path) -> Path:
    return home / ".local" / "share" / "farm" / "embedded.json"


def recorded(state: dict[str, Any]) -> list[int]:
    return [state["redis"]["pid"], *[w["pid"] for w in state["workers"]]]


def families(state: dict[str, Any]) -> list[int]:
    """The recorded pids and every descendant of them (a worker's pool processes)."""
    pids = recorded(state)
    for pid in list(pids):
        with contextlib.suppress(psutil.Error):
            pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return pids


def servers(home: Path) -> list[int]:
    return [p.pid for p in ours(home) if p.name() == "redis-server"]


def worker_leaders(home: Path) -> list[int]:
    """Pids of the farm's `farm worker` main processes for this HOME (not their pool processes)."""
    found = []
    for p in ours(home):
        with contextlib.suppress(psutil.Error, OSError):
            if "worker" in p.cmdline() and os.getsid(p.pid) == p.pid:
                found.append(p.pid)
    return sorted(found)


def assert_all_gone(home: Path, pids: list[int]) -> None:
    """Every pid in `pids` has exited, and no process of this HOME is left at all."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    psutil.wait_procs(procs, timeout=30)  # reap-and-report: `down` already signalled them
    assert [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
    assert ours(home) == []


@pytest.fixture()
def fresh_home(tmp_path: Path) -> Iterator[Path]:
    """A HOME of a new user; whatever of its farm a failed test leaves running is killed afterwards."""
    yield tmp_path
    for p in ours(tmp_path):
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_down_after_a_clock_step_stops_exactly_what_up_started(fresh_home: Path) -> None:
    env = bare_env(fresh_home)
    up = farm("up", env=env)
    assert up.returncode == 0, up.stderr
    state = json.loads(state_file(fresh_home).read_text())
    pids = recorded(state)
    assert servers(fresh_home) == [state["redis"]["pid"]]
    assert all(isinstance(e["start_ticks"], int) for e in [state["redis"], *state["workers"]])
    lock = fresh_home / ".local" / "share" / "farm" / "redis" / "owner.lock"
    from farm.cluster.redisproc import lock_holders

    assert lock_holders(lock) == [state["redis"]["pid"]]  # the server holds it; `farm up` has exited

    # The fake step works: the stepped controller sees every start moved by the step, far past the
    # 1 s that the wall-clock check allowed (that check called all of them strangers).
    seen = subprocess.run(
        [sys.executable, "-c", STEPPED_STARTS, "4500", json.dumps(pids)], capture_output=True, text=True, check=True
    )
    entries = [state["redis"], *state["workers"]]
    moved = [t - e["create_time"] for t, e in zip(json.loads(seen.stdout), entries, strict=True)]
    assert all(abs(m) > 1.0 for m in moved), moved

    # A state file written by an older farm (no ticks) cannot prove anything across a step: `farm
    # down` says so in one line naming the pid, exit 3, and touches nothing.
    older = {**state, "redis": {k: v for k, v in state["redis"].items() if k not in ("start_ticks", "boot_id")}}
    state_file(fresh_home).write_text(json.dumps(older))
    refused = farm_stepped(4500, "down", env=env)
    assert refused.returncode == 3, refused.stderr
    assert f"pid {state['redis']['pid']} (redis-server" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert json.loads(state_file(fresh_home).read_text()) == older
    assert all(psutil.pid_exists(p) for p in pids)
    # Without a step the older entry still checks out, and `farm up` records its ticks.
    up = farm("up", env=env)
    assert up.returncode == 0, up.stderr
    assert json.loads(state_file(fresh_home).read_text()) == state

    # 75 minutes forward: `farm up` joins the same farm (no second server), then 7 minutes back:
    # `farm down` stops exactly the recorded processes and forgets them.
    up = farm_stepped(4500, "up", env=env)
    assert up.returncode == 0, up.stderr
    assert json.loads(state_file(fresh_home).read_text()) == state
    assert servers(fresh_home) == [state["redis"]["pid"]]
    everything = families(state)
    down = farm_stepped(4500 - 420, "down", env=env)
    assert down.returncode == 0, down.stderr
    assert f"stopped redis-server redis://127.0.0.1:{state['redis']['port']}/0 (pid {state['redis']['pid']})" in (
        down.stdout
    )
    for w in state["workers"]:
        assert f"stopped worker {w['name']} (pid {w['pid']})" in down.stdout
    assert_all_gone(fresh_home, everything)
    assert not state_file(fresh_home).exists()
    assert "no embedded farm is running" in farm_stepped(4500, "down", env=env).stdout


def test_two_concurrent_ups_on_one_data_directory_give_one_server(fresh_home: Path) -> None:
    env = bare_env(fresh_home)
    cmd = [sys.executable, "-m", "farm.cli.main", "up"]
    both = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    state = json.loads(state_file(fresh_home).read_text())
    for out, _ in outs:  # each names the same server
        assert f"(pid {state['redis']['pid']})" in out.splitlines()[0]
    assert servers(fresh_home) == [state["redis"]["pid"]]
    assert worker_leaders(fresh_home) == sorted(w["pid"] for w in state["workers"])

    # The state lost while the farm runs (what the wall-clock check used to do): `farm up` finds the
    # data directory's lock held and refuses in one line naming the server; no second one starts.
    saved = state_file(fresh_home).read_text()
    state_file(fresh_home).unlink()
    refused = farm("up", env=env)
    assert refused.returncode == 3 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert f"pid {state['redis']['pid']} (redis-server) holds" in refused.stderr
    assert servers(fresh_home) == [state["redis"]["pid"]]
    refused = farm("down", env=env)  # nor does `farm down` claim that nothing runs
    assert refused.returncode == 3 and f"pid {state['redis']['pid']} holds" in refused.stderr, refused.stderr
    assert servers(fresh_home) == [state["redis"]["pid"]]

    state_file(fresh_home).write_text(saved)
    everything = families(state)
    down = farm("down", env=env)
    assert down.returncode == 0, down.stderr
    assert_all_gone(fresh_home, everything)


def test_a_controller_killed_during_up_leaves_a_state_the_next_command_recovers(fresh_home: Path) -> None:
    env = bare_env(fresh_home)
    controller = subprocess.Popen(
        [sys.executable, "-m", "farm.cli.main", "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        state: dict[str, Any] = {}
        while not state.get("workers"):  # killed while its worker starts (it imports torch)
            assert controller.poll() is None and time.monotonic() < deadline, controller.stderr
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_file(fresh_home).read_text())
            time.sleep(0.02)
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    killed = json.loads(state_file(fresh_home).read_text())

    # The next `farm up` joins what the killed one started: the same server, the same worker.
    up = farm("up", env=env)
    assert up.returncode == 0, up.stderr
    state = json.loads(state_file(fresh_home).read_text())
    assert state["redis"] == killed["redis"] and servers(fresh_home) == [killed["redis"]["pid"]]
    assert [w["pid"] for w in state["workers"]] == [w["pid"] for w in killed["workers"]]

    # Killed between starting a worker and recording it: `farm up` finds that worker (its session,
    # FARM_HOME and FARM_REDIS_URL) and records it instead of starting a second one.
    (worker,) = state["workers"]
    state_file(fresh_home).write_text(json.dumps({**state, "workers": []}))
    up = farm("up", env=env)
    assert up.returncode == 0, up.stderr
    assert json.loads(state_file(fresh_home).read_text())["workers"] == [worker]
    assert worker_leaders(fresh_home) == [worker["pid"]]

    # A recorded worker that died and a worker never recorded are both started again.
    victim = psutil.Process(worker["pid"])
    doomed = [victim, *victim.children(recursive=True)]
    for p in doomed:
        p.kill()
    psutil.wait_procs(doomed, timeout=10)
    state_file(fresh_home).write_text(json.dumps({**state, "workers": []}))
    up = farm("up", env=env)
    assert up.returncode == 0, up.stderr
    state = json.loads(state_file(fresh_home).read_text())
    (fresh,) = state["workers"]
    assert fresh["name"] == worker["name"] and fresh["pid"] != worker["pid"]
    assert worker_leaders(fresh_home) == [fresh["pid"]] and servers(fresh_home) == [state["redis"]["pid"]]

    everything = families(state)
    down = farm("down", env=env)
    assert down.returncode == 0, down.stderr
    assert_all_gone(fresh_home, everything)
    assert not state_file(fresh_home).exists()
