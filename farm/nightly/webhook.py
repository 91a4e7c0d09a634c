"""Webhook: a JSON POST per detected regression to `FARM_WEBHOOK_URL` (stdlib urllib only).

Message (one per regression, `Content-Type: application/json`):

```json
{"event": "farm.regression", "text": "gpt2 forward on cpu (box7) is 21.0% slower: ...",
 "verdict": {"kind": "regression", "machine": "box7", "device": "cpu", "phase": "forward", ...}}
```

`text` suits Slack/Mattermost incoming webhooks; `verdict` holds every field of
`farm.nightly.regress.Verdict`. Data text in `text` (machine, model, device, phase, reason, run)
goes through `webhook_text`: control and bidi characters shown escaped (`\\x1b`), `& < >` escaped
as Slack asks (so `<!channel>` or `<http://x|click>` in a machine name is text, not a mention or a
link), each field capped at `MAX_FIELD` and the whole text at `MAX_TEXT` characters.
A failed delivery is reported back to the caller, never raised: a
webhook that is down must not hide the regression from the terminal or fail a nightly run.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from farm.nightly.regress import Verdict

MAX_FIELD = 200  # characters of one data field in `text`
MAX_TEXT = 1000  # characters of the whole `text`
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SLACK = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def webhook_text(text: str, limit: int = MAX_FIELD) -> str:
    """Data text for a webhook message: control and bidi characters shown escaped (`\\x1b`, `\\n`),
    `& < >` escaped for Slack/Mattermost, at most `limit` characters."""
    text = _UNSAFE.sub(lambda m: repr(m[0])[1:-1], text)
    return _cap(re.sub(r"[&<>]", lambda m: _SLACK[m[0]], text), limit)


@dataclass(frozen=True)
class Delivery:
    """The outcome of one POST."""

    job_id: str
    phase: str
    ok: bool
    detail: str


def describe(v: Verdict) -> str:
    """One human line for a verdict, its data text escaped (`webhook_text`), at most `MAX_TEXT` characters."""
    t = webhook_text
    where = f"{t(v.model)} {t(v.phase)} on {t(v.device)} ({t(v.machine)})"
    if v.baseline_s is None or v.change is None:
        return _cap(f"{where}: {v.kind} ({t(v.reason)})", MAX_TEXT)
    direction = "slower" if v.change > 0 else "faster"
    conf = f", confidence {v.confidence:.1%}" if v.confidence is not None else ""
    return _cap(
        f"{where} is {abs(v.change):.1%} {direction}: {v.new_s:.4g} s vs baseline {v.baseline_s:.4g} s "
        f"(median of {v.n_history}){conf}; run {t(v.run_id)}",
        MAX_TEXT,
    )


def message(v: Verdict) -> dict[str, object]:
    """The JSON body of one verdict's POST: `text` escaped for a chat, `verdict` as data (JSON-escaped)."""
    return {"event": f"farm.{v.kind}", "text": describe(v), "verdict": v.model_dump(mode="json")}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: it is reported, never followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib.request signature
        return None  # urllib then raises HTTPError(code) for the 3xx


_OPENER = urllib.request.build_opener(_NoRedirect)
DEADLINE_S = 5.0  # the whole POST (connect, send, every read) must finish within this


def _post(req: urllib.request.Request, timeout: float, box: list[tuple[bool, str]]) -> None:
    try:
        with _OPENER.open(req, timeout=timeout) as resp:  # scheme checked by the caller
            resp.read(4096)  # the body is not used; a bounded read ends the exchange
            box.append((200 <= resp.status < 300, f"HTTP {resp.status}"))
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            box.append((False, f"HTTP {e.code}: the webhook answered with a redirect (not followed)"))
        else:
            box.append((False, f"HTTP {e.code}"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        box.append(
            (False, f"cannot reach webhook: {type(reason).__name__ if isinstance(reason, BaseException) else reason}")
        )


def post_json(url: str, payload: dict[str, object], timeout: float = DEADLINE_S) -> tuple[bool, str]:
    """POST `payload` as JSON; (ok, detail). Never raises, never follows a redirect, never echoes the URL.

    `timeout` is an overall deadline: urllib's own timeout is per socket operation, so a server that
    trickles its answer a byte at a time would hold the caller for minutes. The request runs in a
    daemon thread that is abandoned at the deadline. Only http(s) URLs are accepted.
    """
    if not url.startswith(("http://", "https://")):
        return False, "webhook URL must start with http:// or https:// (FARM_WEBHOOK_URL)"
    body = json.dumps(payload).encode()
    try:
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "farm-webhook"}
        )
    except ValueError:
        return False, "webhook URL is not a valid URL (FARM_WEBHOOK_URL)"
    box: list[tuple[bool, str]] = []
    t = threading.Thread(target=_post, args=(req, timeout, box), daemon=True, name="farm-webhook")
    t.start()
    t.join(timeout)
    if not box:
        return False, f"no answer from the webhook within {timeout:g} s"
    return box[0]


def notify(url: str | None, verdicts: Iterable[Verdict], timeout: float = DEADLINE_S) -> list[Delivery]:
    """POST one message per regression in `verdicts` (improvements and the rest are not sent)."""
    if not url:
        return []
    out = []
    for v in verdicts:
        if v.kind != "regression":
            continue
        ok, detail = post_json(url, message(v), timeout)
        out.append(Delivery(v.job_id, v.phase, ok, detail))
    return out
