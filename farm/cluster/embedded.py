"""The embedded default: with no FARM_REDIS_URL, the farm runs its own Redis and workers here.

`up` starts a real redis-server (farm.cluster.redisproc: 127.0.0.1, a free port, append-only file,
noeviction, data under the farm's data directory) and one local `farm worker` for the CPU (plus
one per GPU that NVML sees; `embedded_world_size` says how many devices each gives one job),
detached so that they outlive the command that started them. Their
pids, start times and the URL go to `<data dir>/embedded.json`; later commands find the URL there.
`down` stops exactly those processes (each pid is checked against its recorded start time and
command line first) and nothing else. No root, no Docker.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from farm.cluster.redisproc import RedisProcess
from farm.engine.hardware import machine_tag, nvml_gpus
from farm.errors import BrokerError, ConfigError, FarmError, SpecError
from farm.paths import data_dir
from farm.results.store import ResultStore, connect
from farm.settings import Settings, get_settings, mask_url
from farm.spec import BenchSpec, parse_device_tag

STATE_FILE = "embedded.json"
WORKER_READY_S = 180.0  # a worker imports torch before it beats; a busy 2-core machine is slow


def home(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return Path(settings.home) if settings.home else data_dir()


def state_path(settings: Settings | None = None) -> Path:
    return home(settings) / STATE_FILE


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


def _ours(entry: dict[str, Any], marker: str) -> psutil.Process | None:
    """The process recorded in `entry` if it is still the one we started (pid reuse is checked)."""
    try:
        p = psutil.Process(int(entry["pid"]))
        if abs(p.create_time() - float(entry["create_time"])) > 1.0:
            return None
        if not any(marker in arg for arg in p.cmdline()) or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.Error, KeyError, ValueError, TypeError):
        return None


def _ping(url: str) -> bool:
    try:
        return bool(connect(url).ping())
    except Exception:
        return False


def running_url(settings: Settings | None = None) -> str | None:
    """The URL of the embedded Redis if it runs and answers, else None."""
    state = read_state(settings)
    if not state or _ours(state.get("redis", {}), "redis-server") is None:
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
    return {
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "name": name,
        "device": device,
        "gpu": gpu,
        "log": str(logs / f"{name}.log"),
    }


def _wait_workers(url: str, settings: Settings, workers: list[dict[str, Any]], timeout: float) -> None:
    store = ResultStore.from_url(url, settings.key_prefix)
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending:
        for w in list(pending):
            if store.worker_alive(w["name"]):
                pending.remove(w)
            elif _ours(w, "worker") is None:
                tail = Path(w["log"]).read_text(errors="replace")[-800:] if Path(w["log"]).exists() else ""
                raise FarmError(f"embedded worker {w['name']} exited during start-up; log tail:\n{tail}")
        if pending and time.monotonic() > deadline:
            raise FarmError(f"embedded workers {[w['name'] for w in pending]} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def up(settings: Settings | None = None, *, wait_s: float = WORKER_READY_S) -> dict[str, Any]:
    """Start the embedded Redis and local workers unless they already run; returns the state."""
    settings = settings or get_settings()
    if settings.broker():
        raise ConfigError("FARM_REDIS_URL is set: the farm uses that Redis; start workers there with `farm worker`")
    with _locked(settings):
        state = read_state(settings)
        if state and running_url(settings):
            dead = [w for w in state["workers"] if _ours(w, "worker") is None]
            if dead:  # Redis runs: replace only the dead workers, leave running jobs alone
                _replace_workers(settings, state, dead, wait_s)
            return state
        if state:  # Redis gone: stop what is still ours, start afresh on the same data
            _stop_all(state)
        redis = RedisProcess(home(settings) / "redis").start()
        assert redis.pid is not None
        url = redis.url
        state = {
            "url": url,
            "redis": {"pid": redis.pid, "create_time": psutil.Process(redis.pid).create_time(), "port": redis.port},
            "workers": [],
            "started_at": time.time(),
        }
        _write_state(settings, state)
        host = machine_tag()
        specs: list[tuple[str, str, int | None]] = [(f"embedded-cpu-{host}", "cpu", None)]
        specs += [(f"embedded-cuda{g.index}-{host}", "cuda", g.index) for g in nvml_gpus()]
        for name, device, gpu in specs:
            state["workers"].append(_spawn_worker(settings, url, name, device, gpu))
            _write_state(settings, state)
        _wait_workers(url, settings, state["workers"], wait_s)
        return state


def _replace_workers(settings: Settings, state: dict[str, Any], dead: list[dict[str, Any]], wait_s: float) -> None:
    url = state["url"]
    store = ResultStore.from_url(url, settings.key_prefix)
    for w in dead:  # a dead worker's heartbeat may not have expired yet: it must not count as ready
        store.remove_worker(w["name"])
    new = [_spawn_worker(settings, url, w["name"], w["device"], w["gpu"]) for w in dead]
    state["workers"] = [w for w in state["workers"] if w not in dead] + new
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
    stopped: list[str] = []
    for w in state.get("workers", []):
        p = _ours(w, "worker")
        if p is None:
            continue
        with contextlib.suppress(psutil.Error):
            family = [p, *p.children(recursive=True)]
            # Warm shutdown first (a running job may finish); then a hard stop of the whole family.
            _terminate([p], signal.SIGTERM, 20.0)
            _terminate([q for q in family if q.is_running()], signal.SIGKILL, 5.0)
        stopped.append(f"worker {w['name']} (pid {w['pid']})")
    p = _ours(state.get("redis", {}), "redis-server")
    if p is not None:
        if _terminate([p], signal.SIGTERM, 10.0):
            _terminate([p], signal.SIGKILL, 5.0)
        stopped.append(f"redis-server {mask_url(state.get('url'))} (pid {p.pid})")
    return stopped


def down(settings: Settings | None = None) -> list[str]:
    """Stop exactly what `up` started (pids checked) and forget it; returns what was stopped."""
    settings = settings or get_settings()
    with _locked(settings):
        state = read_state(settings)
        if not state:
            return []
        stopped = _stop_all(state)
        state_path(settings).unlink(missing_ok=True)
        return stopped


def local_only(spec: BenchSpec) -> tuple[BenchSpec, list[str]]:
    """The spec without devices this machine does not have (embedded default), and those skipped.

    Local workers serve `cpu` and `cpu:<this machine>`, and `cuda` plus `cuda:<model>` per GPU
    that NVML sees; nothing local could ever serve anything else. SpecError if nothing is left.
    """
    gpus = nvml_gpus()
    keep: list[str] = []
    skipped: list[str] = []
    for tag in spec.devices:
        kind, narrow = parse_device_tag(tag)
        if kind == "cpu":
            ok = narrow in (None, "*", machine_tag())
        elif kind == "cuda":
            ok = bool(gpus) and (narrow in (None, "*") or any(g.tag == narrow for g in gpus))
        else:
            ok = False
        (keep if ok else skipped).append(tag)
    if not keep:
        raise SpecError("devices", f"this machine has none of {', '.join(spec.devices)} and no FARM_REDIS_URL is set")
    return spec.model_copy(update={"devices": tuple(keep)}), skipped


def ensure_local(
    specs: Sequence[BenchSpec], settings: Settings | None = None, *, say: Callable[[str], None] | None = None
) -> tuple[list[BenchSpec], list[str], bool]:
    """Embedded default (no FARM_REDIS_URL): keep what this machine can serve and start the farm.

    Drops from each spec the devices this machine lacks (`local_only`; a spec left with none is
    dropped) and starts the embedded farm (`up`) if it is not running. `say` hears, before the
    (slow) start, one warning per skipped device and that the farm starts. Returns (specs kept,
    devices skipped, started). With a configured Redis: the specs as given, [], False. SpecError
    when no spec keeps a device.
    """
    settings = settings or get_settings()
    if not is_embedded(settings):
        return list(specs), [], False
    kept: list[BenchSpec] = []
    skipped: list[str] = []
    first_error: SpecError | None = None
    for spec in specs:
        try:
            local, dropped = local_only(spec)
        except SpecError as e:
            first_error = first_error or e
            local, dropped = None, list(spec.devices)
        skipped.extend(d for d in dropped if d not in skipped)
        if local is not None:
            kept.append(local)
    if not kept:
        if len(specs) == 1 and first_error is not None:
            raise first_error
        raise SpecError("devices", "no point of the sweep has a device this machine has, and no FARM_REDIS_URL is set")
    started = running_url(settings) is None
    if say is not None:
        for d in skipped:
            say(f"warning: skipping device {d!r}: this machine has none (embedded farm)")
        if started:
            say("starting the embedded farm (redis-server and local workers; `farm down` stops them)")
    resolve_redis_url(settings, start=True)
    return kept, skipped, started
