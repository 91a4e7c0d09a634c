"""Webhook: a JSON POST per detected regression to `FARM_WEBHOOK_URL` (stdlib urllib only).

Message (one per regression, `Content-Type: application/json`):

```json
{"event": "farm.regression", "text": "gpt2 forward on cpu (box7) is 21.0% slower: ...",
 "verdict": {"kind": "regression", "machine": "box7", "device": "cpu", "phase": "forward", ...}}
```

`text` suits Slack/Mattermost incoming webhooks; `verdict` holds every field of
`farm.nightly.regress.Verdict`. A failed delivery is reported back to the caller, never raised: a
webhook that is down must not hide the regression from the terminal or fail a nightly run.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from farm.nightly.regress import Verdict


@dataclass(frozen=True)
class Delivery:
    """The outcome of one POST."""

    job_id: str
    phase: str
    ok: bool
    detail: str


def describe(v: Verdict) -> str:
    """One human line for a verdict."""
    where = f"{v.model} {v.phase} on {v.device} ({v.machine})"
    if v.baseline_s is None or v.change is None:
        return f"{where}: {v.kind} ({v.reason})"
    direction = "slower" if v.change > 0 else "faster"
    conf = f", confidence {v.confidence:.1%}" if v.confidence is not None else ""
    return (
        f"{where} is {abs(v.change):.1%} {direction}: {v.new_s:.4g} s vs baseline {v.baseline_s:.4g} s "
        f"(median of {v.n_history}){conf}; run {v.run_id}"
    )


def message(v: Verdict) -> dict[str, object]:
    return {"event": f"farm.{v.kind}", "text": describe(v), "verdict": v.model_dump(mode="json")}


def post_json(url: str, payload: dict[str, object], timeout: float = 5.0) -> tuple[bool, str]:
    """POST `payload` as JSON; (ok, detail). Only http(s) URLs are accepted."""
    if not url.startswith(("http://", "https://")):
        return False, f"webhook URL must start with http:// or https://, got {url[:40]!r}"
    body = json.dumps(payload).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "farm-webhook"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # scheme checked above
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return False, f"cannot reach webhook: {getattr(e, 'reason', e)}"


def notify(url: str | None, verdicts: Iterable[Verdict], timeout: float = 5.0) -> list[Delivery]:
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
