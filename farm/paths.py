"""Where the farm keeps files on this machine (XDG directories; no root needed)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """`$FARM_HOME`, else `$XDG_DATA_HOME/farm`, else `~/.local/share/farm`."""
    if os.environ.get("FARM_HOME"):
        return Path(os.environ["FARM_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "farm"


def cache_dir() -> Path:
    """`$FARM_HOME/cache`, else `$XDG_CACHE_HOME/farm`, else `~/.cache/farm`."""
    if os.environ.get("FARM_HOME"):
        return Path(os.environ["FARM_HOME"]) / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "farm"
