"""The embedded default: with no FARM_REDIS_URL, the farm runs its own Redis and workers here.

`up` starts a real redis-server (farm.cluster.redisproc: 127.0.0.1, a free port, append-only file,
noeviction, data under the farm's data directory) and one local `farm worker` for the CPU (plus
one per GPU that NVML sees; `embedded_world_size` says how many devices each gives one job),
detached so that they outlive the command that started them. Their pids, start times and the URL
go to `<data dir>/embedded.json` (written as soon as each process exists); later commands find the
URL there. `down` stops exactly those processes and nothing else. No root, no Docker.

Which process is ours: a recorded pid counts as the process `up` started only if it runs the
farm's command line (`redis-server`; `worker` and the worker's name) and started at the recorded
clock tick since boot (/proc/PID/stat field 22) of the recorded boot. Neither moves when the wall
clock steps (a VM resumes, NTP corrects it), unlike psutil's create_time(), which adds the boot time
in wall-clock seconds. State files of older farms (no ticks) and systems without /proc fall back to
create_time() within 1 s. A recorded pid that runs our command line but cannot be proved ours is
named in an OwnershipError, and neither `up` nor `down` touches anything then.

One kind of server per data directory: the redis-server is FARM_REDIS_SERVER if set, else the one
`<data dir>/redis/server.json` records as the creator of the data, else the newest found
(redisproc's `choose_server`); one that cannot read the data is refused (ConfigError), and none ever
starts empty over data.

One owner per data directory: the redis-server holds an exclusive flock on
`<data dir>/redis/owner.lock` for as long as it runs (redisproc's `owner_lock`: the controller
takes it and hands the open file to the server). `up` joins the server the state names; if the
lock is held by anything else it refuses (OwnershipError naming the pid) and never starts a second
server on that data. `up` and `down` also serialize on `<data dir>/embedded.lock` while they run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import psutil

from farm.cluster.redisproc import OWNER_LOCK, RedisProcess, lock_holders, owner_lock_held, version_text
from farm.engine.hardware import GpuInfo, machine_tag, nvml_gpus
from farm.errors import BrokerError, ConfigError, FarmError, OwnershipError, SpecError
from farm.paths import data_dir
from farm.results.store import ResultStore, connect
from farm.settings import Settings, get_settings, mask_url
from farm.spec import BenchSpec, SkippedDevice, parse_device_tag

STATE_FILE = "embedded.json"
WORKER_READY_S = 180.0  # a worker imports torch before it beats; a busy 2-core machine is slow
REDIS_READY_S = 10.0  # a recorded redis-server that runs but does not answer yet (loading its data)

Verdict = Literal["ours", "gone", "unproven"]


def home(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return Path(settings.home) if settings.home else data_dir()


def state_path(settings: Settings | None = None) -> Path:
    return home(settings) / STATE_FILE


def redis_dir(settings: Settings | None = None) -> Path:
    """The embedded redis-server's data directory (its append-only file and its owner lock)."""
    return home(settings) / "redis"


def is_embedded(settings: Settings | None = None) -> bool:
    """True when no Redis is configured: the farm runs (or will run) its own."""
    return (settings or get_settings()).broker() is None


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One `up`/`down` at a time per data directory (two `farm submit` must not start two Redis)."""
    d = home(settings)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "embedded.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state(settings: Settings | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(settings).read_text())
    except (OSError, ValueError):
        return None


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    p = state_path(settings)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(p)


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot: field 22 of /proc/PID/stat. No step of the
    wall clock moves it. Field 2 (the command name, in parentheses) may itself hold spaces and
    parentheses, so fields are counted after its last ')'. None off Linux or if unreadable."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
    except (OSError, ValueError):
        return None
    end = stat.rfind(b")")
    fields = stat[end + 1 :].split()  # fields[0] is field 3 (the state), so field 22 is fields[19]
    if end < 0 or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def boot_id() -> str | None:
    """This boot's id (Linux: /proc/sys/kernel/random/boot_id); None elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _identity(pid: int) -> dict[str, Any]:
    """What `_check` compares later: the start in clock ticks since boot and the boot (Linux), and
    the wall-clock start (what older farms compare, and the fallback without /proc)."""
    try:
        create_time: float | None = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = None
    return {"create_time": create_time, "start_ticks": start_ticks(pid), "boot_id": boot_id()}


def _what(kind: str, entry: dict[str, Any]) -> str:
    return "redis-server" if kind == "redis" else f"worker {entry.get('name')}"


def _check(entry: dict[str, Any], kind: str) -> tuple[Verdict, psutil.Process | None, str]:
    """Is the process recorded in `entry` (`kind` "redis" or "worker") the one `up` started?

    "ours" with the process; "gone" when nothing of ours runs under that pid (no such process, a
    zombie, another program, a process of a later boot); "unproven", with why, when it runs our
    command line but its recorded start does not match (or cannot be read)."""
    try:
        pid = int(entry["pid"])
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return "gone", None, ""
        cmdline = p.cmdline()
    except (KeyError, ValueError, TypeError, psutil.NoSuchProcess):
        return "gone", None, ""
    except psutil.Error as e:
        return "unproven", None, f"cannot read it: {type(e).__name__}"
    markers = ("redis-server",) if kind == "redis" else ("worker", str(entry.get("name", "")))
    if not all(any(m in arg for arg in cmdline) for m in markers):
        return "gone", None, ""  # the pid was reused by another program
    recorded_boot = entry.get("boot_id")
    if recorded_boot and boot_id() not in (None, recorded_boot):
        return "gone", None, ""  # recorded before a reboot: nothing of that boot runs now
    ticks, recorded = start_ticks(pid), entry.get("start_ticks")
    if recorded is not None and ticks is not None:
        with contextlib.suppress(ValueError, TypeError):
            if ticks == int(recorded):
                return "ours", p, ""
        return "unproven", None, f"it started at clock tick {ticks} since boot, not at the recorded {recorded}"
    # A state file of an older farm (no ticks), or no /proc: the wall-clock start, which a clock step moves.
    try:
        drift = p.create_time() - float(entry["create_time"])
    except (psutil.Error, KeyError, ValueError, TypeError):
        return "unproven", None, "its start cannot be compared with the recorded one"
    if abs(drift) <= 1.0:
        return "ours", p, ""
    return "unproven", None, f"its start is {drift:+.0f} s off the recorded wall-clock start (a clock step?)"


def _entries(state: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("redis", state.get("redis") or {}), *(("worker", w) for w in state.get("workers") or [])]


def _refuse_unproven(settings: Settings, state: dict[str, Any], doing: str) -> None:
    """OwnershipError naming each recorded pid that runs our command line but is not provably ours."""
    doubts = []
    for kind, entry in _entries(state):
        verdict, _, why = _check(entry, kind)
        if verdict == "unproven":
            doubts.append(f"pid {entry.get('pid')} ({_what(kind, entry)}: {why})")
    if doubts:
        path = state_path(settings)
        raise OwnershipError(
            f"cannot prove that {'; '.join(doubts)} is what `farm up` started; {doing}, and left it and {path} "
            f"alone: stop it yourself if it is the farm's, else delete {path}"
        )


def _ping(url: str) -> bool:
    try:
        return bool(connect(url).ping())
    except Exception:
        return False


def running_url(settings: Settings | None = None) -> str | None:
    """The URL of the embedded Redis if it runs (provably ours) and answers, else None."""
    state = read_state(settings)
    if not state or _check(state.get("redis") or {}, "redis")[0] != "ours":
        return None
    return state["url"] if _ping(state["url"]) else None


def resolve_redis_url(settings: Settings | None = None, *, start: bool = False) -> str:
    """FARM_REDIS_URL (or FARM_BROKER_URL), else the running embedded Redis, else start it or fail."""
    settings = settings or get_settings()
    if settings.broker():
        return str(settings.broker())
    url = running_url(settings)
    if url:
        return url
    if start:
        return str(up(settings)["url"])
    raise BrokerError("no FARM_REDIS_URL is set and no embedded farm is running: run `farm up` or set FARM_REDIS_URL")


def results_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return settings.results() or resolve_redis_url(settings)


EMBEDDED_CPU_MAX_WORLD = 8  # the local CPU worker gives a job up to min(physical cores, this) gloo processes


def embedded_world_size(device: str, gpu: int | None) -> int:
    """Devices the embedded worker gives one job (`farm worker --max-world-size`). CPU: one process
    per physical core, up to EMBEDDED_CPU_MAX_WORLD (so `cpu.x2` is served from 2 cores on). GPUs:
    the worker of GPU 0 gives every local GPU (DDP ranks run on cuda:0..n-1), the others 1; the host
    lock keeps their timed regions apart."""
    if device == "cpu":
        return max(1, min(psutil.cpu_count(logical=False) or os.cpu_count() or 1, EMBEDDED_CPU_MAX_WORLD))
    return max(1, len(nvml_gpus())) if gpu in (None, 0) else 1


def _worker_cmd(name: str, device: str, gpu: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "farm.cli.main", "worker", "--device", device, "--name", name]
    cmd += ["--max-world-size", str(embedded_world_size(device, gpu))]
    return [*cmd, "--gpu", str(gpu)] if gpu is not None else cmd


def _spawn_worker(settings: Settings, url: str, name: str, device: str, gpu: int | None) -> dict[str, Any]:
    logs = home(settings) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FARM_REDIS_URL": url, "FARM_HOME": str(home(settings))}
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            _worker_cmd(name, device, gpu),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # outlives the CLI; `down` signals it by pid
        )
    return _worker_entry(settings, proc.pid, name, device, gpu)


def _worker_entry(settings: Settings, pid: int, name: str, device: str, gpu: int | None) -> dict[str, Any]:
    log = home(settings) / "logs" / f"{name}.log"
    return {"pid": pid, **_identity(pid), "name": name, "device": device, "gpu": gpu, "log": str(log)}


def _worker_specs() -> list[tuple[str, str, int | None]]:
    """(name, device, gpu) of the local workers: one for the CPU, one per GPU that NVML sees."""
    host = machine_tag()
    specs: list[tuple[str, str, int | None]] = [(f"embedded-cpu-{host}", "cpu", None)]
    return specs + [(f"embedded-cuda{g.index}-{host}", "cuda", g.index) for g in nvml_gpus()]


def _strays(
    settings: Settings, state: dict[str, Any], specs: list[tuple[str, str, int | None]]
) -> list[dict[str, Any]]:
    """Workers of this farm that `state` does not record (a controller killed between starting one
    and writing the state leaves one): session leaders (a worker's pool processes share its command
    line but not its session) running `farm.cli.main worker --name <an embedded worker's name>` with
    this data directory as FARM_HOME and the state's Redis as FARM_REDIS_URL, both set only by `up`."""
    by_name = {name: (device, gpu) for name, device, gpu in specs}
    recorded = {w.get("pid") for w in state.get("workers") or []}
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid in recorded or os.getsid(p.pid) != p.pid:
                continue
            cmd = p.cmdline()
            if "farm.cli.main" not in cmd or "worker" not in cmd or "--name" not in cmd:
                continue
            name = cmd[cmd.index("--name") + 1]
            env = p.environ()
            if name in by_name and (env.get("FARM_HOME"), env.get("FARM_REDIS_URL")) == (
                str(home(settings)),
                state["url"],
            ):
                found.append(_worker_entry(settings, p.pid, name, *by_name[name]))
        except (psutil.Error, OSError, IndexError):
            continue
    return found


def _lost_at_start(entry: dict[str, Any], confirm_s: float = 1.0) -> str | None:
    """None while the worker `up` started may still be ours; else what happened to it. A verdict
    other than "ours" is confirmed over `confirm_s` (a check that raced the worker's exec, or a
    /proc read under load, must not fail `farm up`), then named: its exit status, or why it is not
    provably ours."""
    deadline = time.monotonic() + confirm_s
    while True:
        verdict, _, why = _check(entry, "worker")
        if verdict == "ours":
            return None
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if verdict == "unproven":
        return f"is not provably ours ({why})"
    try:
        status = psutil.Process(int(entry["pid"])).wait(timeout=0)  # reap our child: its exit status
    except (psutil.Error, ValueError, KeyError):
        status = None
    return "exited" if status is None else f"exited with status {status}"


def _wait_workers(url: str, settings: Settings, workers: list[dict[str, Any]], timeout: float) -> None:
    store = ResultStore.from_url(url, settings.key_prefix)
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending:
        for w in list(pending):
            if store.worker_alive(w["name"]):
                pending.remove(w)
            elif (lost := _lost_at_start(w)) is not None:
                tail = Path(w["log"]).read_text(errors="replace")[-800:] if Path(w["log"]).exists() else ""
                raise FarmError(f"embedded worker {w['name']} {lost} during start-up; log tail:\n{tail}")
        if pending and time.monotonic() > deadline:
            raise FarmError(f"embedded workers {[w['name'] for w in pending]} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def _answering(state: dict[str, Any], wait_s: float) -> bool:
    """True once the recorded redis-server, provably ours, answers (within `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while _check(state.get("redis") or {}, "redis")[0] == "ours":
        if _ping(state["url"]):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return False


def up(settings: Settings | None = None, *, wait_s: float = WORKER_READY_S) -> dict[str, Any]:
    """Start the embedded Redis and local workers unless they already run; returns the state.

    Joins the farm that `embedded.json` names when its redis-server is provably ours and answers
    (starting only missing or dead workers). OwnershipError, and nothing started, when a recorded pid
    cannot be proved ours or another process holds the data directory's owner lock."""
    settings = settings or get_settings()
    if settings.broker():
        raise ConfigError("FARM_REDIS_URL is set: the farm uses that Redis; start workers there with `farm worker`")
    with _locked(settings):
        state = read_state(settings)
        if state:
            _refuse_unproven(settings, state, "started nothing")
            if _answering(state, REDIS_READY_S):
                _complete(settings, state, wait_s)
                return state
            _stop_all(state)  # Redis gone (or ours but mute): stop what is still ours, start afresh on the same data
        return _start(settings, wait_s)


def spawn_redis(settings: Settings) -> RedisProcess:
    """Start the embedded redis-server on `redis_dir` (owner lock taken and handed over; the binary
    chosen for that data: FARM_REDIS_SERVER, else the one `server.json` records, else the default)
    and return at once. OwnershipError when another process holds the data; ConfigError, in one line
    naming both versions and FARM_REDIS_SERVER, when the binary cannot read the data there."""
    redis = RedisProcess(redis_dir(settings), owner_lock=True, settings=settings)
    try:
        return redis.spawn()
    except OwnershipError as e:
        raise OwnershipError(f"{e} ({state_path(settings)} does not name it as this farm's redis-server)") from None


def _start(settings: Settings, wait_s: float) -> dict[str, Any]:
    """Start redis-server (it takes over the owner lock) and the workers. The state is written as
    soon as each process exists: a controller killed at any later point leaves a state naming it."""
    redis = spawn_redis(settings)
    assert redis.pid is not None and redis.version is not None
    state: dict[str, Any] = {
        "url": redis.url,
        "redis": {
            "pid": redis.pid,
            **_identity(redis.pid),
            "port": redis.port,
            "server": redis.server,
            "version": version_text(redis.version),
        },
        "workers": [],
        "started_at": time.time(),
    }
    _write_state(settings, state)
    redis.wait_ready()
    for name, device, gpu in _worker_specs():
        state["workers"].append(_spawn_worker(settings, redis.url, name, device, gpu))
        _write_state(settings, state)
    _wait_workers(redis.url, settings, state["workers"], wait_s)
    return state


def _complete(settings: Settings, state: dict[str, Any], wait_s: float) -> None:
    """Join a running farm: record unrecorded workers of it (`_strays`) and the clock ticks of entries
    an older farm wrote, replace the dead workers and start the missing ones; running jobs stay."""
    specs = _worker_specs()
    strays = _strays(settings, state, specs)
    state["workers"] = [*(state.get("workers") or []), *strays]
    changed = bool(strays)
    for kind, entry in _entries(state):
        if entry.get("start_ticks") is None and _check(entry, kind)[0] == "ours":
            ticks = start_ticks(int(entry["pid"]))
            if ticks is not None:
                entry.update(start_ticks=ticks, boot_id=boot_id())
                changed = True
    dead = [i for i, w in enumerate(state["workers"]) if _check(w, "worker")[0] == "gone"]
    names = {w.get("name") for w in state["workers"]}
    missing = [s for s in specs if s[0] not in names]
    if dead or missing:
        _replace_workers(settings, state, dead, missing, wait_s)
    elif changed:
        _write_state(settings, state)


def _replace_workers(
    settings: Settings,
    state: dict[str, Any],
    dead: list[int],
    missing: list[tuple[str, str, int | None]],
    wait_s: float,
) -> None:
    """Start a worker in place of each dead one (indexes into state["workers"]) and each missing one."""
    url = state["url"]
    store = ResultStore.from_url(url, settings.key_prefix)
    # A dead worker's heartbeat may not have expired yet: it must not count as ready.
    for name in [state["workers"][i]["name"] for i in dead] + [name for name, _, _ in missing]:
        store.remove_worker(name)
    new = []
    for i in dead:
        w = state["workers"][i]
        state["workers"][i] = _spawn_worker(settings, url, w["name"], w["device"], w["gpu"])
        new.append(state["workers"][i])
        _write_state(settings, state)
    for name, device, gpu in missing:
        new.append(_spawn_worker(settings, url, name, device, gpu))
        state["workers"].append(new[-1])
        _write_state(settings, state)
    _wait_workers(url, settings, new, wait_s)


def _terminate(procs: list[psutil.Process], sig: int, wait_s: float) -> list[psutil.Process]:
    """Send `sig` to each, wait; returns those still alive."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
    _gone, alive = psutil.wait_procs(procs, timeout=wait_s)
    return alive


def _stop_all(state: dict[str, Any]) -> list[str]:
    """Stop the recorded processes that are provably ours (workers first); returns what was stopped."""
    stopped: list[str] = []
    for w in state.get("workers") or []:
        _, p, _ = _check(w, "worker")
        if p is None:
            continue
        with contextlib.suppress(psutil.Error):
            family = [p, *p.children(recursive=True)]
            # Warm shutdown first (a running job may finish); then a hard stop of the whole family.
            _terminate([p], signal.SIGTERM, 20.0)
            _terminate([q for q in family if q.is_running()], signal.SIGKILL, 5.0)
        stopped.append(f"worker {w['name']} (pid {w['pid']})")
    _, p, _ = _check(state.get("redis") or {}, "redis")
    if p is not None:
        if _terminate([p], signal.SIGTERM, 10.0):
            _terminate([p], signal.SIGKILL, 5.0)
        stopped.append(f"redis-server {mask_url(state.get('url'))} (pid {p.pid})")
    return stopped


def down(settings: Settings | None = None) -> list[str]:
    """Stop exactly what `up` started (pids checked) and forget it; returns what was stopped.

    OwnershipError, and nothing stopped or forgotten, when a recorded pid runs our command line but
    cannot be proved ours, or when no state names the redis-server that holds the data directory."""
    settings = settings or get_settings()
    with _locked(settings):
        state = read_state(settings)
        if not state:
            if owner_lock_held(redis_dir(settings)):
                lock = redis_dir(settings) / OWNER_LOCK
                holders = ", ".join(f"pid {pid}" for pid in lock_holders(lock)) or "a process this user cannot see"
                raise OwnershipError(
                    f"{state_path(settings)} names no embedded farm, but {holders} holds {lock} (a redis-server "
                    "runs on this data directory); stopped nothing: stop it yourself if it is a leftover farm"
                )
            return []
        _refuse_unproven(settings, state, "stopped nothing")
        stopped = _stop_all(state)
        left = [f"pid {e.get('pid')} ({_what(k, e)})" for k, e in _entries(state) if _check(e, k)[0] != "gone"]
        if left:
            raise OwnershipError(f"{', '.join(left)} still running after SIGKILL; kept {state_path(settings)}")
        state_path(settings).unlink(missing_ok=True)
        return stopped


def skip_reason(tag: str, gpus: Sequence[GpuInfo] | None = None) -> str | None:
    """Why local workers could never serve device `tag` (one short reason), None when they can:
    they serve `cpu` and `cpu:<this machine>`, and `cuda` plus `cuda:<model>` per GPU that NVML sees."""
    gpus = nvml_gpus() if gpus is None else gpus
    kind, narrow = parse_device_tag(tag)
    if kind == "cpu":
        return None if narrow in (None, "*", machine_tag()) else f"the CPU of another machine (this is {machine_tag()})"
    if kind == "cuda":
        if not gpus:
            return "no CUDA device on this machine"
        if narrow in (None, "*") or any(g.tag == narrow for g in gpus):
            return None
        return f"no {narrow} GPU on this machine (it has {', '.join(sorted({g.tag for g in gpus}))})"
    return f"the embedded farm serves cpu and cuda, not {kind}"


def live_tags(settings: Settings | None = None) -> set[str]:
    """The device tags the live workers of the running embedded farm serve (`cpu:box7` of a worker
    started with `--machine box7`); empty when it does not run or does not answer."""
    settings = settings or get_settings()
    url = running_url(settings)
    if url is None:
        return set()
    try:
        docs = ResultStore.from_url(url, settings.key_prefix).worker_docs()
    except FarmError:
        return set()
    tags: set[str] = set()
    for _, raw in docs:
        with contextlib.suppress(ValueError, TypeError):
            tags |= {t for t in json.loads(raw.get("tags") or "[]") if isinstance(t, str)}
    return tags


def local_only(spec: BenchSpec, served: Collection[str] = ()) -> tuple[BenchSpec, list[SkippedDevice]]:
    """The spec without devices this machine does not have (embedded default), and those skipped
    with why (`skip_reason`). `served` adds the tags the farm's own live workers serve (`live_tags`:
    a worker started with `--machine box7` serves `cpu:box7`). SpecError if nothing is left."""
    gpus = nvml_gpus()
    keep: list[str] = []
    skipped: list[SkippedDevice] = []
    for tag in spec.devices:
        reason = None if tag.strip().lower() in served else skip_reason(tag, gpus)
        if reason is None:
            keep.append(tag)
        else:
            skipped.append(SkippedDevice(device=tag, reason=reason))
    if not keep:
        raise SpecError("devices", f"this machine has none of {', '.join(spec.devices)} and no FARM_REDIS_URL is set")
    return spec.model_copy(update={"devices": tuple(keep)}), skipped


def ensure_local(
    specs: Sequence[BenchSpec], settings: Settings | None = None, *, say: Callable[[str], None] | None = None
) -> tuple[list[BenchSpec], list[SkippedDevice], bool]:
    """Embedded default (no FARM_REDIS_URL): keep what this machine can serve and start the farm.

    Drops from each spec the devices this machine lacks (`local_only`; a spec left with none is
    dropped) and starts the embedded farm (`up`) if it is not running. `say` hears, before the
    (slow) start, one warning per skipped device (with why) and that the farm starts. Returns (specs
    kept, devices skipped with why, for the run's record: `controller.submit(skipped=...)`, started).
    With a configured Redis: the specs as given, [], False. SpecError when no spec keeps a device.
    """
    settings = settings or get_settings()
    if not is_embedded(settings):
        return list(specs), [], False
    kept: list[BenchSpec] = []
    skipped: list[SkippedDevice] = []
    first_error: SpecError | None = None
    served = live_tags(settings)
    for spec in specs:
        try:
            local, dropped = local_only(spec, served)
        except SpecError as e:
            first_error = first_error or e
            local, dropped = None, [SkippedDevice(device=d, reason=skip_reason(d) or "") for d in spec.devices]
        skipped.extend(d for d in dropped if d.device not in {s.device for s in skipped})
        if local is not None:
            kept.append(local)
    if not kept:
        if len(specs) == 1 and first_error is not None:
            raise first_error
        raise SpecError("devices", "no point of the sweep has a device this machine has, and no FARM_REDIS_URL is set")
    started = running_url(settings) is None
    if say is not None:
        for d in skipped:
            say(f"warning: skipping device {d.device!r}: {d.reason} (embedded farm)")
        if started:
            say("starting the embedded farm (redis-server and local workers; `farm down` stops them)")
    resolve_redis_url(settings, start=True)
    return kept, skipped, started
