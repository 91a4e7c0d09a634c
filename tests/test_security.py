"""Nobody let in: passwords, ACL users and TLS on Redis; secrets never printed.

Real redis-server processes (never fakeredis). The TLS tests make a throw-away CA and server
certificate with the openssl CLI in tmp_path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.cluster.redisproc import RedisProcess, find_redis_server, free_port
from farm.errors import BrokerError, ConfigError
from farm.results.result import JobResult
from farm.results.store import ResultStore
from farm.settings import get_settings, mask_url
from farm.spec import Job, parse_spec

PASSWORD = "Pw-9f3b7c1e-secret"
FARMER_PW = "farmer-Pw-41d2a8"


def _job(job_id: str = "sec-run-000") -> Job:
    return Job(job_id=job_id, run_id="sec-run", device="cpu", spec=parse_spec({"model": "gpt2-tiny", "seq": 8}))


def _roundtrip(url: str) -> None:
    """Ping, write and read back one result through the farm's store."""
    store = ResultStore.from_url(url)
    store.ping()
    res = JobResult.failure(_job(), "failed", "stored through an authenticated connection")
    assert store.put_result(res)
    assert store.get_result(res.job_id).error == res.error
    assert not store.put_result(res)  # idempotent: a second write changes nothing


@pytest.fixture()
def locked_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path / "redis", password=PASSWORD).start()
    try:
        yield proc
    finally:
        proc.kill9()


# -- passwords -----------------------------------------------------------------------------------


def test_password_required(locked_redis: RedisProcess) -> None:
    """Without the password: a clear BrokerError, no secret in it. With it: the store works."""
    bare = f"redis://127.0.0.1:{locked_redis.port}/0"
    with pytest.raises(BrokerError) as ei:
        ResultStore.from_url(bare).ping()
    assert "auth" in str(ei.value).lower() or "NOAUTH" in str(ei.value)
    with pytest.raises(BrokerError) as ei:
        ResultStore.from_url(f"redis://:wrong-{PASSWORD[::-1]}@127.0.0.1:{locked_redis.port}/0").ping()
    assert "credentials" in str(ei.value)
    assert PASSWORD not in str(ei.value) and PASSWORD[::-1] not in str(ei.value)
    _roundtrip(locked_redis.url)


def test_acl_user(locked_redis: RedisProcess) -> None:
    """An ACL user limited to the farm's keys works through redis://user:password@; others are refused."""
    admin = redis.Redis.from_url(locked_redis.url)
    # Keys farm:* only, every command but the dangerous ones (CONFIG, FLUSHALL, ...).
    admin.execute_command("ACL", "SETUSER", "farmer", "on", ">farmer-pw-77", "~farm:*", "&*", "+@all", "-@dangerous")
    url = f"redis://farmer:farmer-pw-77@127.0.0.1:{locked_redis.port}/0"
    _roundtrip(url)
    r = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.set("not-farm", "x")
    with pytest.raises(BrokerError) as ei:
        ResultStore.from_url(f"redis://farmer:nope@127.0.0.1:{locked_redis.port}/0").ping()
    assert "nope" not in str(ei.value)


@settings(max_examples=200, deadline=None)
@given(
    user=st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_."), max_size=12),
    password=st.text(min_size=1, max_size=40),
    scheme=st.sampled_from(["redis", "rediss"]),
    tail=st.sampled_from(["127.0.0.1:6379/0", "redis.lab:6380/2?ssl_cert_reqs=required", "h/0"]),
)
def test_mask_url_hides_password(user: str, password: str, scheme: str, tail: str) -> None:
    """Whatever the password (percent-encoded as URLs require), mask_url replaces it by ***."""
    url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{tail}"
    assert mask_url(url) == f"{scheme}://{quote(user, safe='')}:***@{tail}"


def test_mask_url_no_password() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url(None) == "-"


def test_mask_url_query_password() -> None:
    assert PASSWORD not in mask_url(f"redis://127.0.0.1:6379/0?password={PASSWORD}")


def test_bad_url_setting_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed FARM_REDIS_URL is refused without printing the URL (it may hold the password)."""
    monkeypatch.setenv("FARM_REDIS_URL", f"http://u:{PASSWORD}@host:6379/0")
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as ei:
        get_settings()
    assert "FARM_REDIS_URL" in str(ei.value)
    assert PASSWORD not in str(ei.value)
    get_settings.cache_clear()


# -- TLS -----------------------------------------------------------------------------------------


def _tls_support() -> str | None:
    """None if the redis-server binary can serve TLS, else the reason it cannot."""
    if shutil.which("openssl") is None:
        return "no openssl CLI to make test certificates"
    exe = find_redis_server()
    try:
        ldd = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        ldd = ""
    if "libssl" not in ldd:
        return f"{exe} is not linked against OpenSSL (built without BUILD_TLS=yes)"
    return None


TLS_SKIP = _tls_support()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(d: Path, san: str = "IP:127.0.0.1,DNS:localhost") -> Path:
    """A private CA and a server certificate for `san`; returns the directory."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=farm-ca", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=farm-redis", cwd=d)
    (d / "ext.cnf").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d,
    )  # fmt: skip
    return d


def _tls_redis(tmp_path: Path, certs: Path, password: str | None) -> tuple[RedisProcess, int]:
    tls_port = free_port()
    plain = free_port()
    while plain == tls_port:  # two closed probes may name one port: the server could not bind both
        plain = free_port()
    proc = RedisProcess(
        tmp_path / "redis-tls",
        port=plain,
        password=password,
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.crt"),
            "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    # The plain port stays on 127.0.0.1 for RedisProcess's readiness check; clients use TLS.
    return proc.start(), tls_port


@pytest.mark.skipif(TLS_SKIP is not None, reason=f"TLS redis-server unavailable: {TLS_SKIP}")
def test_tls_with_private_ca(tmp_path: Path) -> None:
    """rediss:// with the private CA and the password: works. Without the CA, or plain redis://: refused."""
    certs = _make_certs(tmp_path / "certs")
    proc, port = _tls_redis(tmp_path, certs, PASSWORD)
    try:
        ca = quote(str(certs / "ca.crt"), safe="/")
        good = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        _roundtrip(good)
        assert PASSWORD not in mask_url(good)
        # No CA given: the system trust store does not know the private CA.
        with pytest.raises(BrokerError) as ei:
            ResultStore.from_url(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required").ping()
        assert "certificate" in str(ei.value).lower()
        assert PASSWORD not in str(ei.value)
        # Plain text against the TLS port: no answer the client accepts.
        with pytest.raises(BrokerError):
            ResultStore.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/0").ping()
    finally:
        proc.kill9()


@pytest.mark.skipif(TLS_SKIP is not None, reason=f"TLS redis-server unavailable: {TLS_SKIP}")
def test_tls_hostname_checked(tmp_path: Path) -> None:
    """A certificate for another host is refused even when its CA is trusted (redis-py checks names)."""
    certs = _make_certs(tmp_path / "certs", san="DNS:other.example")
    proc, port = _tls_redis(tmp_path, certs, None)
    try:
        ca = quote(str(certs / "ca.crt"), safe="/")
        with pytest.raises(BrokerError) as ei:
            ResultStore.from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}").ping()
        assert "match" in str(ei.value).lower() or "hostname" in str(ei.value).lower()
    finally:
        proc.kill9()


# -- the CLI and a real worker ---------------------------------------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, url: str, *argv: str) -> Any:
    from typer.testing import CliRunner

    from farm.cli.main import app

    monkeypatch.setenv("FARM_REDIS_URL", url)
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(argv))


def test_cli_refused_without_password(locked_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """`farm results` / `farm submit` without or with a wrong password: exit 3, one line, no secret."""
    port = locked_redis.port
    wrong = f"not-{PASSWORD}"
    for url in (f"redis://127.0.0.1:{port}/0", f"redis://:{wrong}@127.0.0.1:{port}/0"):
        for argv in (["results", "some-run"], ["submit", "--model", "gpt2-tiny", "--seq", "8"]):
            result = _cli(monkeypatch, url, *argv)
            assert result.exit_code == 3, (argv, result.output)
            lines = [ln for ln in result.stderr.split("\n") if ln.strip()]
            assert len(lines) == 1 and "Traceback" not in result.output, result.output
            assert PASSWORD not in result.output
    # With the password: the run is unknown (exit 4), so the connection itself worked.
    result = _cli(monkeypatch, locked_redis.url, "results", "some-run")
    assert result.exit_code == 4, result.output
    assert PASSWORD not in result.output
    assert redis.Redis.from_url(locked_redis.url).dbsize() == 0  # nothing was queued by the refused submits


@pytest.mark.slow
@pytest.mark.integration
def test_worker_with_password_and_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real worker and `farm submit --wait` through a password (and TLS when the server supports it):
    the job runs, and the password appears in no output: not the CLI's, not the worker's log."""
    from farmproc import start_worker

    if TLS_SKIP is None:
        certs = _make_certs(tmp_path / "certs")
        proc, port = _tls_redis(tmp_path, certs, PASSWORD)
        ca = quote(str(certs / "ca.crt"), safe="/")
        url = f"rediss://farmer:{FARMER_PW}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    else:  # TLS unavailable: the password part still runs
        proc = RedisProcess(tmp_path / "redis", password=PASSWORD).start()
        url = f"redis://farmer:{FARMER_PW}@127.0.0.1:{proc.port}/0"
    w = None
    try:
        # The ACL user of docs/reliability.md: every key, no dangerous command (CONFIG, FLUSHALL, KEYS, ...).
        admin = redis.Redis(host="127.0.0.1", port=proc.port, password=PASSWORD)
        admin.execute_command("ACL", "SETUSER", "farmer", "on", f">{FARMER_PW}", "~*", "&*", "+@all", "-@dangerous")
        admin.close()
        w = start_worker(url, device="cpu", queues=["cpu"], env={"FARM_HEARTBEAT_INTERVAL": "1"})
        w.wait_ready()
        result = _cli(
            monkeypatch, url, "submit", "--model", "gpt2-tiny", "--seq", "8", "--batch", "1", "--repeats", "1",
            "--warmup", "0", "--phases", "forward", "--threads", "1", "--wait", "--json", "--timeout", "150",
        )  # fmt: skip
        assert result.exit_code in (0, 1), result.output  # 1: ran but flagged (plausibility check)
        doc = json.loads(result.stdout)
        assert len(doc["results"]) == 1 and doc["results"][0]["status"] in ("ok", "invalid")
        log = w.log()
        assert "Connected to" in log or "ready" in log.lower()
        for text in (result.output, log):
            assert PASSWORD not in text and FARMER_PW not in text
    finally:
        if w is not None:
            w.stop()
        proc.kill9()
