"""The one parser of dates and times given on the command line (vocabulary: stdlib and farm.errors only).

`parse_when` takes ISO 8601 (`2026-11-01`, `2026-11-01T12:00`; UTC unless a zone is given) or a
time before now (`30m`, `12h`, `7d`, `2w`), within 2000-01-01 .. 2100-01-01. Used by
`--since`/`--until` and by `sweep --date`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from farm.errors import SpecError

_RELATIVE = re.compile(r"^(\d{1,9}(?:\.\d{1,6})?)\s*([mhdw])$")
# Dates outside this window are typing mistakes (or hostile), not benchmark history.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str | None, field_name: str, now: datetime | None = None) -> datetime | None:
    """ISO 8601 (UTC unless a zone is given) or relative `7d`, `12h`; None for no text."""
    if not text:
        return None
    shown = text.strip()[:40]
    m = _RELATIVE.match(text.strip())
    try:
        if m:
            when = (now or datetime.now(UTC)) - timedelta(**{_UNITS[m[2]]: float(m[1])})
        else:
            when = datetime.fromisoformat(text.strip())
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise SpecError(
            field_name, f"{shown!r} is not a date: use ISO 8601 (2026-11-01T12:00) or 30m, 12h, 7d, 2w"
        ) from None
    if not EARLIEST <= when < LATEST:
        raise SpecError(
            field_name, f"{shown!r} is outside {EARLIEST:%Y-%m-%d} .. {LATEST:%Y-%m-%d}: use a date or age within it"
        )
    return when
