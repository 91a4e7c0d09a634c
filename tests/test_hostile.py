"""Hostile and careless input that is not a spec or an import: webhook replies, secrets in URLs,
dates and intervals typed on the command line. Each case went wrong before (issue 13)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from farm.cli.main import app
from farm.dates import parse_when
from farm.errors import SpecError
from farm.nightly.webhook import post_json
from farm.settings import get_settings, mask_url

SECRET = "s3cr3t-Tok3n"


class _Hostile(BaseHTTPRequestHandler):
    """/slow trickles its answer a byte every 0.3 s for a minute; /redirect sends a 307 to /sink."""

    sink: list[str] = []  # noqa: RUF012 (class-level log shared with the test)
    stop = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/slow"):
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            for _ in range(200):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                if type(self).stop.wait(0.3):
                    return
        elif self.path.startswith("/redirect"):
            self.send_response(307)
            self.send_header("Location", "/sink")
            self.end_headers()
        else:
            type(self).sink.append(self.path)
            self.send_response(204)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hostile_server() -> Iterator[str]:
    _Hostile.sink = []
    _Hostile.stop.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        _Hostile.stop.set()
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(30)
def test_webhook_deadline_is_overall_not_per_read(hostile_server: str) -> None:
    """A server answering a byte at a time (each read well inside urllib's per-read timeout) is cut off
    at the deadline; before, the POST lasted as long as the server kept trickling (a minute here)."""
    ok, detail = post_json(f"{hostile_server}/slow", {"event": "x"}, timeout=1.5)
    assert not ok and "no answer from the webhook within 1.5 s" in detail


def test_webhook_redirect_is_not_followed_nor_counted(hostile_server: str) -> None:
    ok, detail = post_json(f"{hostile_server}/redirect", {"event": "x"}, timeout=5)
    assert not ok and "307" in detail and "redirect" in detail
    assert _Hostile.sink == []  # the payload never reached where the redirect pointed


def test_webhook_never_echoes_the_url() -> None:
    for url in (f"ftp://user:{SECRET}@example.invalid/", f"http://[{SECRET}", f"gopher://{SECRET}"):
        ok, detail = post_json(url, {"event": "x"}, timeout=1)
        assert not ok and SECRET not in detail and "FARM_WEBHOOK_URL" in detail


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:p@{SECRET}@redis.lab:6379/0",  # an unescaped @ in the password
        f"redis://:{SECRET}@@h:1/0",
        f"rediss://h:6380/0?ssl_password={SECRET}&ssl_cert_reqs=required",
        f"rediss://h:6380/0?ssl_key_password={SECRET}",
        f"redis://{SECRET}@h:6379",  # a lone user-info is a password for redis-py
        f"redis://u:{SECRET[:4]}/{SECRET[4:]}@h/0",  # an unescaped / in the password
        f"unix:///run/redis.sock?db=0&password={SECRET}",
    ],
)
def test_mask_url_leaks_nothing(url: str) -> None:
    masked = mask_url(url)
    assert "***" in masked
    for part in (SECRET, SECRET[:4] + "/", SECRET[4:]):
        assert part not in masked, masked


def test_mask_url_keeps_what_is_not_secret() -> None:
    assert mask_url("rediss://u:pw@redis.lab:6380/2?ssl_cert_reqs=required") == (
        "rediss://u:***@redis.lab:6380/2?ssl_cert_reqs=required"
    )


@pytest.mark.parametrize("text", ["99999999999d", "1e300d", "1900-01-01", "2200-01-01T00:00", "36500d", "9" * 400])
def test_dates_outside_a_sane_window_are_one_line_errors(text: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_when(text, "since")
    assert e.value.field == "since" and "\n" not in str(e.value) and len(str(e.value)) < 200


@pytest.fixture()
def farm_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    get_settings.cache_clear()
    return redis_url


@pytest.mark.parametrize("every", ["nan", "inf", "-inf", "1e300", "0.1"])
def test_schedule_every_must_be_finite_and_bounded(farm_env: str, tmp_path: Path, every: str) -> None:
    """Through the real CLI and Redis: exit 2, one line naming --every, and no schedule half-stored."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "model": "gpt2-tiny", "phases": ["forward"], "seq": 16}))
    res = CliRunner().invoke(app, ["schedule", "add", "s", "--every", every, "--sweep", str(sweep)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "every" in lines[0] and "Traceback" not in res.output
    listed = CliRunner().invoke(app, ["schedule", "list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output) == []


@pytest.mark.parametrize("since", ["99999999999d", "1900-01-01"])
def test_since_out_of_range_through_the_cli(farm_env: str, since: str) -> None:
    res = CliRunner().invoke(app, ["results", "--since", since])
    assert res.exit_code == 2 and "since" in res.output and "Traceback" not in res.output
