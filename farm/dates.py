"""The one parser of dates and times given on the command line (vocabulary: stdlib and farm.errors only).

`parse_when` takes ISO 8601 (`2026-11-01`, `2026-11-01T12:00`; UTC unless a zone is given) or a
time before now (`30m`, `12h`, `7d`, `2w`). Used by `--since`/`--until` and by `sweep --date`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from farm.errors import SpecError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str | None, field_name: str, now: datetime | None = None) -> datetime | None:
    """ISO 8601 (UTC unless a zone is given) or relative `7d`, `12h`; None for no text."""
    if not text:
        return None
    m = _RELATIVE.match(text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m[2]]: float(m[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SpecError(
            field_name, f"{text!r} is not a date: use ISO 8601 (2026-11-01T12:00) or 30m, 12h, 7d, 2w"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
