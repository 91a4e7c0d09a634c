"""The farm across a network: hosts of the test's own, made of Linux network namespaces.

Five namespaces: a bridge in one of its own, and four hosts on it through veth pairs (Redis with a
password, two CPU workers, the controller), addresses in a private /24 that exists only inside
them, no default route (nothing is routed out). "Unplugging" a host is `ip link set down` on its
end of the cable. Every process, namespace and link is removed afterwards, also when a test fails.
Skipped where namespaces cannot be made (no root, no `ip`, no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from farm.engine.hardware import machine_tag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTS = ("redis", "w1", "w2", "ctl")
FAST_BEAT = {"FARM_HEARTBEAT_INTERVAL": "1", "FARM_HEARTBEAT_TTL": "3"}
TINY = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"]
# About 10 s of forward passes on one thread of this machine: long enough to unplug a cable under.
LONG = ["--model", "gpt2-tiny", "--phases", "forward", "--batch", "4", "--seq", "128", "--repeats", "250"]
LONG += ["--warmup", "0", "--threads", "1"]
UNPLUG_S = 8.0  # longer than the heartbeat TTL


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("redis-server"):
        return "needs root, iproute2 and redis-server"
    probe = f"farmprobe{secrets.token_hex(3)}"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return "network namespaces cannot be made here"
    _ip("netns", "del", probe, check=False)
    return None


if (why := _can_make_namespaces()) is not None:
    pytest.skip(why, allow_module_level=True)


@dataclass
class Net:
    tag: str
    addr: dict[str, str]
    password: str
    home: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    def ns(self, host: str) -> str:
        return f"farm{self.tag}-{host}"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.addr['redis']}:6379/0"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        return {**env, "FARM_REDIS_URL": self.url, "FARM_HOME": str(self.home), **FAST_BEAT, **extra}

    def spawn(self, host: str, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.home.parent / f"netns-{self.tag}-{name}.log"
        self.logs[name] = log
        with open(log, "wb") as fh:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *cmd],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(p)
        return p

    def farm(self, host: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.ns(host), sys.executable, "-m", "farm.cli.main", *args]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def farm_bg(self, host: str, *args: str) -> subprocess.Popen[str]:
        cmd = ["ip", "netns", "exec", self.ns(host), sys.executable, "-m", "farm.cli.main", *args]
        return subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def redis(self, *args: str) -> str:
        cmd = ["ip", "netns", "exec", self.ns("ctl"), "redis-cli", "-h", self.addr["redis"], "--no-auth-warning"]
        p = subprocess.run([*cmd, "-a", self.password, *args], capture_output=True, text=True, timeout=30)
        return p.stdout.strip()

    def unplug(self, host: str) -> None:
        _ip("-n", self.ns(host), "link", "set", "eth0", "down")

    def plug(self, host: str) -> None:
        _ip("-n", self.ns(host), "link", "set", "eth0", "up")

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""


def _make(tag: str) -> dict[str, str]:
    subnet = f"10.{100 + secrets.randbelow(100)}.{secrets.randbelow(250)}"
    br = f"farm{tag}-br"
    _ip("netns", "add", br)
    _ip("-n", br, "link", "add", "br0", "type", "bridge")
    _ip("-n", br, "link", "set", "br0", "up")
    addr = {}
    for i, host in enumerate(HOSTS, start=1):
        ns = f"farm{tag}-{host}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # The veth pair is made inside the host's namespace; its far end moves to the bridge's.
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}")
        _ip("-n", ns, "link", "set", f"p{i}", "netns", br)
        _ip("-n", br, "link", "set", f"p{i}", "master", "br0", "up")
        addr[host] = f"{subnet}.{i}"
        _ip("-n", ns, "addr", "add", f"{addr[host]}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
    return addr


def _teardown(net: Net) -> None:
    for p in net.procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in net.procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for host in (*HOSTS, "br"):
        ns = net.ns(host)
        pids = _ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:  # anything still inside (a job's process): gone before the namespace
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tag = secrets.token_hex(2)
    # The session's farm home (as conftest sets it per test): the CPU peak calibration is cached there.
    n = Net(tag, {}, secrets.token_hex(16), tmp_path_factory.getbasetemp() / "farm-home")
    try:
        n.addr = _make(tag)
        data = n.home.parent / f"netns-{tag}-redis"
        data.mkdir(parents=True, exist_ok=True)
        rcmd = ["redis-server", "--bind", n.addr["redis"], "--port", "6379", "--requirepass", n.password]
        rcmd += ["--dir", str(data), "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"]
        n.spawn("redis", "redis", rcmd, os.environ.copy())
        deadline = time.monotonic() + 30
        while n.redis("ping") != "PONG":
            assert time.monotonic() < deadline, n.log("redis")
            time.sleep(0.2)
        # w1 alone serves `cpu`, w2 alone `cpu.<machine>`: a job on `cpu` has no other worker to go to.
        for w, queue in (("w1", "cpu"), ("w2", f"cpu.{machine_tag()}")):
            cmd = [sys.executable, "-m", "farm.cli.main", "worker", "--device", "cpu", "--name", w, "--queues", queue]
            n.spawn(w, w, cmd, n.env())
        deadline = time.monotonic() + 180
        while not all(n.redis("exists", f"farm:worker:{w}") == "1" for w in ("w1", "w2")):
            assert time.monotonic() < deadline, n.log("w1") + n.log("w2")
            time.sleep(0.5)
        yield n
    finally:
        _teardown(n)


def _results(net: Net, run_id: str) -> list[dict[str, object]]:
    p = net.farm("ctl", "results", run_id, "--json")
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout))


def _new_run(net: Net, before: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = net.redis("zrevrange", "farm:runs", "0", "0")
        if latest and latest != before:
            return latest
        time.sleep(0.2)
    raise TimeoutError("no new run")


def _running_on(net: Net, run_id: str, timeout: float = 120) -> str:
    key = f"farm:job:{run_id}-000"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if net.redis("hget", key, "state") == "running":
            return net.redis("hget", key, "worker")
        time.sleep(0.2)
    raise TimeoutError(f"{run_id} never ran")


def test_hosts_are_only_on_their_own_network(net: Net) -> None:
    routes = _ip("-n", net.ns("ctl"), "route").stdout
    assert "default" not in routes and routes.count("\n") == 1
    # The workers reach Redis across the bridge; the password is required.
    p = subprocess.run(
        ["ip", "netns", "exec", net.ns("w1"), "redis-cli", "-h", net.addr["redis"], "ping"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "NOAUTH" in p.stdout + p.stderr


def test_jobs_run_across_the_network(net: Net) -> None:
    devices = f"cpu,cpu:{machine_tag()}"
    p = net.farm("ctl", "submit", *TINY, "--phases", "init", "--devices", devices, "--wait", "--json")
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)["results"]
    assert sorted(str(r["status"]) for r in results) == ["ok", "ok"]
    assert sorted(str(r["worker"]) for r in results) == ["w1", "w2"]


def test_a_worker_host_unplugged_mid_job_comes_back_and_stores_one_result(net: Net) -> None:
    before = net.redis("zrevrange", "farm:runs", "0", "0")
    ctl = net.farm_bg("ctl", "submit", *LONG, "--devices", "cpu", "--wait", "--json")
    try:
        run_id = _new_run(net, before)
        host = _running_on(net, run_id)
        net.unplug(host)
        gone = time.monotonic() + UNPLUG_S
        while time.monotonic() < gone:  # its heartbeat expires on the Redis side
            time.sleep(0.5)
        assert net.redis("exists", f"farm:worker:{host}") == "0"
        assert ctl.poll() is None  # the controller still follows the run (its queue had a worker)
        net.plug(host)
        out, errs = ctl.communicate(timeout=240)
    finally:
        with contextlib.suppress(Exception):
            net.plug(host)
        if ctl.poll() is None:
            ctl.kill()
    assert ctl.returncode == 0, errs
    assert "unserved" not in errs
    (res,) = json.loads(out)["results"]
    assert res["worker"] == host == "w1" and res["status"] in ("ok", "invalid")
    assert net.redis("hget", f"farm:job:{run_id}-000", "attempts") == "1"
    assert len(_results(net, run_id)) == 1
    # The worker came back: it beats again.
    deadline = time.monotonic() + 30
    while net.redis("exists", f"farm:worker:{host}") != "1":
        assert time.monotonic() < deadline, net.log(host)[-2000:]
        time.sleep(0.5)


@pytest.mark.parametrize("host", ["redis", "ctl"])
def test_redis_or_controller_host_unplugged_during_wait(net: Net, host: str) -> None:
    before = net.redis("zrevrange", "farm:runs", "0", "0")
    ctl = net.farm_bg("ctl", "submit", *LONG, "--devices", "cpu", "--wait", "--json")
    try:
        run_id = _new_run(net, before)
        worker = _running_on(net, run_id)
        net.unplug(host)
        time.sleep(UNPLUG_S)
        net.plug(host)
        out, errs = ctl.communicate(timeout=240)
    finally:
        with contextlib.suppress(Exception):
            net.plug(host)
        if ctl.poll() is None:
            ctl.kill()
    assert ctl.returncode == 0, errs
    (res,) = json.loads(out)["results"]
    assert res["worker"] == worker and res["status"] in ("ok", "invalid")
    assert len(_results(net, run_id)) == 1
    assert net.redis("hget", f"farm:job:{run_id}-000", "attempts") == "1"
