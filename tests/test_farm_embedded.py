"""The embedded default: `farm up`, `farm submit --wait`, `farm down` in a fresh HOME with no
FARM_* settings; afterwards no process of ours is left and nothing else was touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]


def bare_env(home: Path) -> dict[str, str]:
    """The environment of a fresh user: no FARM_* settings, no XDG overrides, HOME in a temp dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "XDG_"))}
    return {**env, "HOME": str(home)}


def farm(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def ours(home: Path) -> list[psutil.Process]:
    """Processes started for this HOME: workers (their FARM_HOME) and redis-server, which rewrites its
    command line to `redis-server 127.0.0.1:PORT` but runs in its --dir (it chdirs there)."""
    found = []
    for p in psutil.process_iter():
        try:
            if (
                str(home) in " ".join(p.cmdline())
                or str(home) in p.environ().get("FARM_HOME", "")
                or Path(p.cwd()).is_relative_to(home)
            ):
                found.append(p)
        except psutil.Error:
            continue
    return found


def seed_calibration(home: Path, session_home: Path) -> None:
    """Copy the session's CPU peak calibration (a cache, not a setting) so the job skips re-measuring."""
    src = session_home / "cache" / "calibration.json"
    if src.exists():
        dst = home / ".local" / "share" / "farm" / "cache"
        dst.mkdir(parents=True)
        shutil.copy(src, dst / "calibration.json")


def test_submit_up_down_in_a_fresh_home(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    env = bare_env(tmp_path)
    seed_calibration(tmp_path, tmp_path_factory.getbasetemp() / "farm-home")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # The README's first command on a machine without CUDA: `farm submit` starts the embedded
        # farm itself, and cuda is skipped with a warning.
        p = farm("submit", *TINY, "--phases", "all", "--devices", "cpu,cuda", "--wait", "--json", env=env)
        assert "skipping device 'cuda'" in p.stderr and "starting the embedded farm" in p.stderr
        doc = json.loads(p.stdout)
        (res,) = doc["results"]
        # the run keeps the device it skipped, with why: in the JSON and where `farm results` shows the run
        assert doc["skipped_devices"] == [{"device": "cuda", "reason": "no CUDA device on this machine"}]
        shown = farm("results", doc["run_id"], env=env)
        assert "cuda: asked for, skipped: no CUDA device on this machine" in shown.stdout, shown.stdout + shown.stderr
        # `invalid` is a completed measurement that the engine flagged as faster than the CPU peak it
        # calibrated (a calibration taken while the shared machine was busy); the job itself ran.
        assert res["status"] in ("ok", "invalid"), res["error"]
        assert p.returncode == (0 if res["status"] == "ok" else 1), p.stderr
        assert list(res["phases"]) == ["init", "forward", "train"]

        state_file = tmp_path / ".local" / "share" / "farm" / "embedded.json"
        state = json.loads(state_file.read_text())
        pids = [state["redis"]["pid"], *[w["pid"] for w in state["workers"]]]
        assert all(psutil.pid_exists(p) for p in pids)  # they outlived the command

        up = farm("up", env=env)  # idempotent: the same Redis and workers
        assert up.returncode == 0, up.stderr
        assert json.loads(state_file.read_text()) == state

        # A dead worker is replaced by the next `farm up`; Redis (and its data) stays.
        victim = psutil.Process(state["workers"][0]["pid"])
        doomed = [victim, *victim.children(recursive=True)]
        for proc in doomed:
            proc.kill()
        psutil.wait_procs(doomed, timeout=10)
        up = farm("up", env=env)
        assert up.returncode == 0, up.stderr
        state = json.loads(state_file.read_text())
        assert state["redis"]["pid"] == pids[0] and state["workers"][0]["pid"] != victim.pid
        pids = [state["redis"]["pid"], *[w["pid"] for w in state["workers"]]]
        family = [c.pid for w in state["workers"] for c in psutil.Process(w["pid"]).children(recursive=True)]

        down = farm("down", env=env)
        assert down.returncode == 0, down.stderr
        assert "stopped redis-server" in down.stdout
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) for p in pids + family) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in pids + family if psutil.pid_exists(p)]
        assert ours(tmp_path) == []
        assert not state_file.exists()
        assert bystander.poll() is None  # nothing else was touched
        assert "no embedded farm is running" in farm("down", env=env).stdout
        # With nothing running, a command that needs Redis says what to do (exit 3).
        st = farm("status", env=env)
        assert st.returncode == 3 and "farm up" in st.stderr
    finally:
        for p in ours(tmp_path):
            p.kill()
        bystander.kill()
        bystander.wait()


def test_down_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    from farm.cluster import embedded
    from farm.settings import Settings

    settings = Settings(home=tmp_path)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # A stale state file naming a live pid that is not ours (pid reuse): wrong start time.
        fake = {"pid": stranger.pid, "create_time": 1.0, "name": "worker", "device": "cpu", "gpu": None, "log": ""}
        state = {"url": "redis://127.0.0.1:1/0", "redis": {**fake}, "workers": [fake], "started_at": 0}
        (tmp_path / "embedded.json").write_text(json.dumps(state))
        assert embedded.down(settings) == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
