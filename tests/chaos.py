"""The chaos round (issue 24), shared by tests/test_chaos.py (one seed) and benchmarks/chaos.py (several).

At least 200 small jobs (gpt2-tiny, forward only, seq 16, batch 1, repeats 1, warmup 0) over 4 real
`farm worker` processes on two worker hosts made of network namespaces, while a schedule drawn from
`random.Random(seed)` SIGKILLs workers (main process and pool child) and starts them again, cuts a
worker host off from Redis for longer than the visibility timeout while one of its workers runs a
job (`ip link set eth0 down` inside that host), and kill -9s Redis and starts it again on the same
append-only file (`farm.cluster.redisproc.RedisProcess`). Afterwards every job must have exactly one
result, every result that is not a completed measurement must name the fault behind it (a lost
worker, the broker restart), never a time limit, and nothing may be left on the queues.

Two halves:

- `run_round` (the caller's process): makes the hosts as tests/test_netns.py does (a bridge in a
  namespace of its own, one veth pair per host, a private /24 that exists only inside them, no
  default route), runs the driver inside the controller host, and removes every process and
  namespace afterwards, also when the round fails or times out. Namespaces are named
  `chaos<pid>x<tag>-<host>`; ones left by a dead process (a killed test run) are removed first.
- `drive` (`python tests/chaos.py drive ...`, run inside the controller host `ctl`, which also runs
  Redis): starts Redis and the workers, submits the run with the controller API, injects the faults,
  waits with `farm.cluster.controller.wait`, checks through `farm.results.store.ResultStore`, and
  writes a JSON report (`Report`'s fields, plus the per-job and per-fault details).

The faults fire at points of the run's progress (a fraction of the jobs with a result), not at wall
times, so that a slow machine still has them strike mid-run; which faults, in which order, at which
fraction, on which worker or host, and for how long comes from the seed alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOSTS = ("ctl", "w1", "w2")  # the controller host (driver and Redis) and two worker hosts
WORKER_HOSTS = ("w1", "w2")
SLOTS = ("w1a", "w1b", "w2a", "w2b")  # two workers per worker host
PORT = 6379
# A short visibility timeout so that a lost job comes back within the round (soft < hard < visibility).
VISIBILITY_S = 15
LIMITS = {"FARM_VISIBILITY_TIMEOUT": str(VISIBILITY_S), "FARM_TASK_TIME_LIMIT": "12", "FARM_TASK_SOFT_TIME_LIMIT": "10"}
FAST_BEAT = {"FARM_HEARTBEAT_INTERVAL": "1", "FARM_HEARTBEAT_TTL": "3"}
JOB = {"model": "gpt2-tiny", "phases": "forward", "seq": 16, "batch": 1, "repeats": 1, "warmup": 0, "threads": 1}
COMPLETED = {"ok", "invalid", "unverified"}  # the job ran to the end (invalid: flagged by the plausibility check)
ROUND_TIMEOUT_S = 540.0  # the most one round (set-up to report) is given before it is killed
WAIT_AFTER_FAULTS_S = 150.0  # how long the driver waits for results once every fault is over


# -- what a result's error names ----------------------------------------------------------------------
CAUSES = (  # (cause, pattern of the error text); the first match wins
    ("time limit", re.compile(r"time limit|TimeLimitExceeded", re.I)),
    ("lost worker", re.compile(r"quarantined|process died|worker lost|WorkerLostError|lost worker", re.I)),
    ("broker restart", re.compile(r"store unreachable|cannot reach Redis|connection", re.I)),
)


def cause_of(status: str, error: str | None) -> str:
    """The fault a result names: "" for a completed job, else the first cause its error matches."""
    if status in COMPLETED:
        return ""
    for cause, pattern in CAUSES:
        if pattern.search(error or ""):
            return cause
    return "other"


FAULT_CAUSES = {"lost worker", "broker restart"}  # causes a chaos round may leave behind


# -- the report ------------------------------------------------------------------------------------------
@dataclass
class Report:
    seed: int
    jobs: int
    results: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failed_by_cause: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # result records beyond one per job, or index entries that name no job of the run
    lost: int = 0  # jobs without a result
    queued_left: int = 0  # messages on the queues plus unacknowledged ones, after the drain
    redelivered: int = 0  # jobs started more than once (attempts > 1)
    skipped_redeliveries: int = 0  # deliveries a worker skipped because the result existed (from the logs)
    kills: int = 0
    cuts: int = 0
    redis_restarts: int = 0
    cut_mid_job: int = 0  # cuts that struck while a worker of the host ran a job
    kills_mid_job: int = 0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_results: list[dict[str, Any]] = field(default_factory=list)
    logs: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems


def check(rep: Report) -> list[str]:
    """What is wrong with a round, in words ([] when it passed)."""
    bad = []
    if rep.jobs < 200:
        bad.append(f"only {rep.jobs} jobs")
    if rep.results != rep.jobs or rep.lost:
        bad.append(f"{rep.lost} of {rep.jobs} jobs have no result")
    if rep.duplicates:
        bad.append(f"{rep.duplicates} duplicate results")
    wrong = {c: n for c, n in rep.failed_by_cause.items() if c not in FAULT_CAUSES}
    if wrong:
        bad.append(f"non-ok results not naming a fault: {wrong}")
    if rep.queued_left:
        bad.append(f"{rep.queued_left} messages left queued or unacknowledged")
    if rep.kills < 2 or rep.cuts < 1 or rep.redis_restarts < 1:
        bad.append(f"too few faults: {rep.kills} kills, {rep.cuts} cuts, {rep.redis_restarts} redis restarts")
    return bad


# -- hosts made of network namespaces (the caller's side) ------------------------------------------------
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


def unavailable() -> str | None:
    """Why a chaos round cannot run here (None: it can): root, iproute2, redis-server, namespaces."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("redis-server"):
        return "needs root, iproute2 (`ip netns`) and redis-server"
    probe = f"chaosprobe{secrets.token_hex(3)}"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return "network namespaces cannot be made here (`ip netns add` failed)"
    _ip("netns", "del", probe, check=False)
    return None


NS_RE = re.compile(r"^chaos(\d+)x([0-9a-f]+)-(\w+)$")


def _our_namespaces() -> list[tuple[str, int]]:
    """Namespaces this module made (name, pid of the process that made them)."""
    out = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name)
        if m:
            out.append((name, int(m.group(1))))
    return out


def _delete_namespace(ns: str) -> None:
    """Kill whatever still runs inside a namespace, then delete it."""
    for pid in _ip("netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        if not _ip("netns", "pids", ns, check=False).stdout.split():
            break
        time.sleep(0.1)
    _ip("netns", "del", ns, check=False)


def remove_stale() -> list[str]:
    """Delete namespaces a dead process of this module left (a test run killed before its clean-up)."""
    gone = []
    for ns, pid in _our_namespaces():
        try:
            os.kill(pid, 0)
            continue  # its maker still runs (perhaps another round): not ours to remove
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _delete_namespace(ns)
        gone.append(ns)
    return gone


@dataclass
class Hosts:
    """The round's hosts: namespaces `chaos<pid>x<tag>-<host>` on a bridge namespace `...-br`."""

    tag: str
    addr: dict[str, str] = field(default_factory=dict)

    def ns(self, host: str) -> str:
        return f"chaos{os.getpid()}x{self.tag}-{host}"

    def make(self) -> Hosts:
        subnet = f"10.{100 + secrets.randbelow(100)}.{secrets.randbelow(250)}"
        br = self.ns("br")
        _ip("netns", "add", br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for i, host in enumerate(HOSTS, start=1):
            ns = self.ns(host)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # The veth pair is made inside the host's namespace; its far end moves to the bridge's.
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}")
            _ip("-n", ns, "link", "set", f"p{i}", "netns", br)
            _ip("-n", br, "link", "set", f"p{i}", "master", "br0", "up")
            self.addr[host] = f"{subnet}.{i}"
            _ip("-n", ns, "addr", "add", f"{self.addr[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def remove(self) -> None:
        for host in (*HOSTS, "br"):
            _delete_namespace(self.ns(host))


@contextlib.contextmanager
def hosts() -> Iterator[Hosts]:
    """Make the round's hosts; remove them and everything running in them afterwards, whatever happens."""
    remove_stale()
    h = Hosts(secrets.token_hex(3))
    try:
        yield h.make()
    finally:
        h.remove()


def run_round(seed: int, jobs: int, workdir: Path, timeout: float = ROUND_TIMEOUT_S) -> Report:
    """One chaos round: hosts made, the driver run inside `ctl`, hosts removed. The driver's report."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "report.json"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    # The CPU peak calibration is cached in FARM_HOME: the caller's (a test session's) when it has one.
    env["FARM_HOME"] = os.environ.get("FARM_HOME") or str(workdir / "home")
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    with hosts() as h:
        cmd = ["ip", "netns", "exec", h.ns("ctl"), sys.executable, str(HERE / "chaos.py"), "drive"]
        cmd += ["--seed", str(seed), "--jobs", str(jobs), "--workdir", str(workdir), "--out", str(out)]
        cmd += ["--hosts", json.dumps({"ns": {x: h.ns(x) for x in HOSTS}, "addr": h.addr})]
        with open(workdir / "driver.log", "wb") as log:
            p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    wall = time.monotonic() - t0
    if not out.exists():
        rep = Report(seed=seed, jobs=jobs, wall_s=wall, logs=str(workdir))
        tail = (workdir / "driver.log").read_text(errors="replace")[-3000:]
        rep.problems.append(f"the driver wrote no report (exit {p.returncode}):\n{tail}")
        return rep
    doc = json.loads(out.read_text())
    rep = Report(**doc)
    rep.wall_s = round(wall, 1)
    return rep


# -- the driver (inside the controller host) --------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Fault:
    kind: str  # kill, cut, redis
    at: float  # the fraction of the jobs with a result at which it fires
    target: str = ""  # a worker slot (kill) or a worker host (cut)
    hold_s: float = 0.0  # cut: how long the host stays off; redis: how long Redis stays down; kill: until restart


def plan_faults(seed: int) -> list[Fault]:
    """The round's faults, from the seed alone: 2 worker kills, 1 cut, 1 Redis restart, ordered by
    the progress point each fires at (a fraction of the jobs done, between 5 % and 55 %)."""
    rng = random.Random(seed)
    faults = [
        Fault("kill", 0.0, rng.choice(SLOTS), round(rng.uniform(1.0, 5.0), 1)),
        Fault("kill", 0.0, rng.choice(SLOTS), round(rng.uniform(1.0, 5.0), 1)),
        Fault("cut", 0.0, rng.choice(WORKER_HOSTS), round(VISIBILITY_S + rng.uniform(3.0, 8.0), 1)),
        Fault("redis", 0.0, "redis", round(rng.uniform(1.0, 4.0), 1)),
    ]
    rng.shuffle(faults)
    for f, at in zip(faults, sorted(rng.uniform(0.05, 0.55) for _ in faults), strict=True):
        f.at = round(at, 3)
    return faults


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        from farmproc import WorkerProcess

        from farm.cluster.redisproc import RedisProcess

        self.WorkerProcess = WorkerProcess
        self.seed: int = args.seed
        self.njobs: int = args.jobs
        self.workdir = Path(args.workdir)
        topo = json.loads(args.hosts)
        self.ns: dict[str, str] = topo["ns"]
        self.addr: dict[str, str] = topo["addr"]
        self.password = secrets.token_hex(16)
        self.url = f"redis://:{self.password}@{self.addr['ctl']}:{PORT}/0"
        os.environ.update({"FARM_REDIS_URL": self.url, **LIMITS})
        self.redis = RedisProcess(
            self.workdir / "redis",
            port=PORT,
            password=self.password,
            extra_args=["--bind", "127.0.0.1", self.addr["ctl"]],
        )
        self.workers: dict[str, Any] = {}  # slot -> WorkerProcess
        self.generation: Counter[str] = Counter()
        self.all_workers: list[Any] = []
        self.events: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    # -- components --
    def worker_env(self, host: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(FARM_REDIS_URL=self.url, FARM_HOME=os.environ["FARM_HOME"], **LIMITS, **FAST_BEAT)
        # One host lock per host (a real host has its own): the two hosts time their jobs side by side.
        env["FARM_HOST_LOCK_FILE"] = str(self.workdir / f"{host}.lock")
        return env

    def start_worker(self, slot: str) -> Any:
        host = slot[:2]
        gen = self.generation[slot]
        self.generation[slot] += 1
        name = slot if gen == 0 else f"{slot}-r{gen}"
        log = self.workdir / f"worker-{name}.log"
        cmd = ["ip", "netns", "exec", self.ns[host], sys.executable, "-m", "farm.cli.main", "worker"]
        cmd += ["--device", "cpu", "--name", name, "--queues", "cpu", "--loglevel", "info"]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                cmd, env=self.worker_env(host), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=ROOT,
            )  # fmt: skip
        w = self.WorkerProcess(proc, name, self.url, log, "farm")
        self.workers[slot] = w
        self.all_workers.append(w)
        return w

    def store(self) -> Any:
        from farm.cluster.controller import store_for

        return store_for()

    def note(self, kind: str, **info: Any) -> None:
        ev = {"kind": kind, "t": round(time.monotonic() - self.t0, 1), **info}
        self.events.append(ev)
        say(f"{kind}: {info}")

    # -- the run --
    def views(self, run_id: str) -> list[Any] | None:
        from farm.cluster.controller import job_views
        from farm.errors import BrokerError

        try:
            return job_views(run_id, self.store(), workers=[])
        except BrokerError:
            return None  # Redis is down (restarting): ride it out

    def running_on(self, views: list[Any], names: set[str]) -> list[str]:
        return [v.job_id for v in views if v.state == "running" and not v.finished and v.worker in names]

    def wait_running(self, run_id: str, names: set[str], timeout: float = 10.0) -> list[str]:
        """Job ids running on one of `names`, polled until one is (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            views = self.views(run_id)
            running = self.running_on(views or [], names)
            if running or time.monotonic() > deadline:
                return running
            time.sleep(0.05)

    def kill(self, run_id: str, f: Fault) -> tuple[str, float]:
        w = self.workers[f.target]
        if w.proc.poll() is not None or not w.is_ready():  # still starting after an earlier kill: another one
            alive = [s for s in SLOTS if self.workers[s].proc.poll() is None and self.workers[s].is_ready()]
            f.target = alive[self.seed % len(alive)] if alive else f.target
            w = self.workers[f.target]
        running = self.wait_running(run_id, {w.name})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w.pid, signal.SIGKILL)  # the worker's main process and its pool child: the whole worker
        w.proc.wait(10)
        self.note("kill", worker=w.name, running=running, restart_in_s=f.hold_s)
        return f.target, time.monotonic() + f.hold_s

    def cut(self, run_id: str, f: Fault) -> float:
        names = {self.workers[s].name for s in SLOTS if s.startswith(f.target)}
        running = self.wait_running(run_id, names)
        _ip("-n", self.ns[f.target], "link", "set", "eth0", "down")
        self.note("cut", host=f.target, workers=sorted(names), running=running, for_s=f.hold_s)
        return time.monotonic() + f.hold_s

    def plug(self, host: str) -> None:
        _ip("-n", self.ns[host], "link", "set", "eth0", "up")
        self.note("plug", host=host)

    def restart_redis(self, f: Fault) -> None:
        self.redis.kill9()
        self.note("redis-kill", down_s=f.hold_s)
        time.sleep(f.hold_s)
        self.redis.restart()
        self.note("redis-start")

    def queued(self) -> dict[str, int]:
        """Messages on the job and control queues, and those delivered but not acknowledged (kombu's keys)."""
        r = self.store().r
        return {"cpu": r.llen("cpu"), "control": r.llen("control"), "unacked": r.hlen("unacked")}

    def run(self) -> Report:
        from farm.cluster import controller
        from farm.errors import BrokerError, JobTimeout
        from farm.spec import parse_spec

        rep = Report(seed=self.seed, jobs=self.njobs, logs=str(self.workdir))
        faults = plan_faults(self.seed)
        say(f"seed {self.seed}: faults {[asdict(f) for f in faults]}")
        self.redis.start()
        for slot in SLOTS:
            self.start_worker(slot)
        for w in self.workers.values():
            w.wait_ready(180)
        say("workers ready")
        # Warm-up (not counted): every worker process loads the model code once and the CPU ceiling is
        # calibrated into FARM_HOME, so that no job of the round pays for it inside its time limit.
        warm = controller.submit([parse_spec({**JOB, "seed": 10_000 + i}) for i in range(len(SLOTS))])
        controller.wait(warm.run_id, timeout=120)
        say("warm-up done")

        specs = [parse_spec({**JOB, "seed": i}) for i in range(self.njobs)]
        t_start = time.monotonic()
        sub = controller.submit(specs, name=f"chaos-{self.seed}")
        run_id, ids = sub.run_id, [j.job_id for j in sub.jobs]
        rep.jobs = len(ids)
        self.note("submitted", run_id=run_id, jobs=len(ids))
        pending = list(faults)
        restarts: dict[str, float] = {}  # slot -> when to start it again
        plug_at: dict[str, float] = {}  # host -> when to bring it back
        deadline = time.monotonic() + 300  # the faults take about a minute on 2 cores
        while (pending or restarts or plug_at) and time.monotonic() < deadline:
            now = time.monotonic()
            for slot, at in list(restarts.items()):
                if now >= at:
                    del restarts[slot]
                    w = self.start_worker(slot)
                    self.note("restart", worker=w.name)
            for host, at in list(plug_at.items()):
                if now >= at:
                    del plug_at[host]
                    self.plug(host)
            views = self.views(run_id)
            if views is not None and pending:
                done = sum(v.finished for v in views) / len(ids)
                f = pending[0]
                if done >= f.at and not (f.kind == "cut" and f.target in plug_at):  # one cut of a host at a time
                    pending.pop(0)
                    if f.kind == "kill":
                        slot, at = self.kill(run_id, f)
                        restarts[slot] = at
                        rep.kills += 1
                        rep.kills_mid_job += bool(self.events[-1]["running"])
                    elif f.kind == "cut":
                        plug_at[f.target] = self.cut(run_id, f)
                        rep.cuts += 1
                        rep.cut_mid_job += bool(self.events[-1]["running"])
                    else:
                        self.restart_redis(f)
                        rep.redis_restarts += 1
            time.sleep(0.1)
        if pending or restarts or plug_at:
            rep.problems.append(f"faults not all done before the deadline: {pending}, {restarts}, {plug_at}")
        self.note("faults done")
        try:
            # After the last fault a healthy farm needs at most a visibility timeout (and kombu's 10 s sweep)
            # plus the jobs left: a job still pending after WAIT_AFTER_FAULTS_S is lost, and reported so.
            controller.wait(run_id, timeout=WAIT_AFTER_FAULTS_S, stop_when_unserved=False)
        except (JobTimeout, BrokerError) as e:
            rep.problems.append(f"wait: {e}")
        self.note("wait returned")
        # Nothing left queued: a message whose job already has a result may still come back once its
        # visibility timeout passes (its ack was lost to a fault); it is then skipped and acknowledged.
        drain_until = time.monotonic() + VISIBILITY_S + 40
        left = self.queued()
        while sum(left.values()) and time.monotonic() < drain_until:
            time.sleep(1.0)
            left = self.queued()
        rep.wall_s = round(time.monotonic() - t_start, 1)
        self.note("drained", left=left)
        self.count(rep, run_id, ids, left)
        return rep

    def count(self, rep: Report, run_id: str, ids: list[str], left: dict[str, int]) -> None:
        store = self.store()
        results = {r.job_id: r for r in store.get_results(ids)}
        rep.results = len(results)
        rep.lost = len([j for j in ids if j not in results])
        statuses = Counter(r.status for r in results.values())
        rep.statuses = dict(statuses)
        rep.ok = statuses.get("ok", 0)
        causes: Counter[str] = Counter()
        for r in results.values():
            c = cause_of(r.status, r.error)
            if c:
                causes[c] += 1
                rep.bad_results.append({"job_id": r.job_id, "status": r.status, "worker": r.worker,
                                        "attempt": r.attempt, "cause": c, "error": (r.error or "")[:300]})  # fmt: skip
        rep.failed_by_cause = dict(causes)
        for j in ids:  # a lost job: what the farm and the workers' logs say of it
            if j not in results:
                lines = [ln[:200] for w in self.all_workers for ln in w.log().splitlines() if j in ln]
                state = {f: store.job_field(j, f) for f in ("state", "worker", "attempts")}
                rep.bad_results.append({"job_id": j, "status": None, "cause": "lost", **state, "log": lines[-12:]})
        # One result record per job: the run's result keys and its index hold each job once, nothing else.
        keys = list(store.r.scan_iter(match=store.key("result", run_id) + "-*", count=1000))
        index = store.query_ids(runs=[run_id])
        rep.duplicates = (len(keys) - len(results)) + len(set(index) - set(ids)) + (len(index) - len(set(index)))
        if sorted(set(index)) != sorted(results):
            rep.problems.append(f"the run index holds {len(set(index))} jobs, {len(results)} have results")
        attempts = [int(store.job_field(j, "attempts") or 0) for j in ids]
        rep.redelivered = sum(a > 1 for a in attempts)
        rep.queued_left = sum(left.values())
        skipped = 0
        for w in self.all_workers:
            skipped += w.log().count("already has a result: skipped")
        rep.skipped_redeliveries = skipped
        rep.events = self.events
        rep.problems += check(rep)

    def close(self) -> None:
        from farmproc import stop_all

        with contextlib.suppress(Exception):
            stop_all([w for w in self.all_workers if w.proc.poll() is None], timeout=15)
        with contextlib.suppress(Exception):
            self.redis.stop()


def drive(args: argparse.Namespace) -> int:
    d = Driver(args)
    try:
        rep = d.run()
    except Exception as e:  # a broken round still reports, with what broke it
        import traceback

        rep = Report(seed=args.seed, jobs=args.jobs, logs=str(d.workdir), events=d.events)
        rep.problems.append(f"the driver failed: {type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}")
    finally:
        d.close()
    Path(args.out).write_text(json.dumps(asdict(rep), indent=1))
    say(f"report: {args.out} ({'passed' if rep.passed else 'FAILED: ' + '; '.join(rep.problems)})")
    return 0


# -- a table of rounds -------------------------------------------------------------------------------------
COLUMNS = ("seed", "jobs", "results", "ok", "failed by cause", "duplicates", "lost", "queued left", "kills",
           "cuts", "redis restarts", "redelivered", "wall s")  # fmt: skip


def table_row(rep: Report) -> list[str]:
    causes = ", ".join(f"{c}: {n}" for c, n in sorted(rep.failed_by_cause.items())) or "-"
    values = (rep.seed, rep.jobs, rep.results, rep.ok, causes, rep.duplicates, rep.lost, rep.queued_left,
              rep.kills, rep.cuts, rep.redis_restarts, rep.redelivered, rep.wall_s)  # fmt: skip
    return [str(v) for v in values]


def table(reports: list[Report]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in reports]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive", help="run one round's driver (inside the controller host)")
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--jobs", type=int, required=True)
    d.add_argument("--workdir", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--hosts", required=True, help="JSON: namespaces and addresses of the hosts")
    args = ap.parse_args(argv)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
