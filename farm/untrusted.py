"""Reading documents from outside the farm, bounded (vocabulary: stdlib, PyYAML and farm.errors only).

Spec and sweep files, import files and checkpoint configs are untrusted: each is read through
`load_document`, which refuses, with one line naming the limit,

- a file larger than its limit (`MAX_SPEC_BYTES` for specs and sweeps, `MAX_IMPORT_BYTES` for imports,
  `MAX_CONFIG_BYTES` for checkpoint configs), before reading it whole;
- YAML anchors and aliases (`&a`, `*a`): a 381-byte "billion laughs" file expands to gigabytes,
  and nothing a spec needs is shorter with them;
- nesting deeper than `MAX_DEPTH` (a 100,000-deep JSON list raises RecursionError in the parser);
- a string longer than `MAX_STRING` characters, and a list or mapping of more than `MAX_ITEMS`.

Error messages never repr the value they refuse: they name where it is and the limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from farm.errors import SpecError

MAX_SPEC_BYTES = 1 << 20  # 1 MiB: a sweep of a thousand points is about 50 KB
MAX_IMPORT_BYTES = 16 << 20  # 16 MiB: about 2,000 results with their raw times
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_STRING = 10_000
MAX_ITEMS = 100_000


class _Refused(Exception):
    """Raised inside the YAML loader; turned into a SpecError naming the caller's field."""


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"YAML aliases (*name) are not accepted (line {event.start_mark.line + 1})")
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(f"YAML anchors (&name) are not accepted (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)  # type: ignore[arg-type]


def check_shape(data: Any, field: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than `max_depth`, over-long strings and over-long containers."""
    stack: list[tuple[Any, int, str]] = [(data, 1, field)]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, str):
            if len(node) > MAX_STRING:
                raise SpecError(where, f"a string of {len(node):,} characters (at most {MAX_STRING:,})")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > max_depth:
            raise SpecError(where, f"nested deeper than {max_depth} levels")
        if len(node) > MAX_ITEMS:
            raise SpecError(where, f"{len(node):,} entries (at most {MAX_ITEMS:,})")
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and len(k) > MAX_STRING:
                    raise SpecError(where, f"a key of {len(k):,} characters (at most {MAX_STRING:,})")
                stack.append((v, depth + 1, f"{where}.{str(k)[:40]}"))
        else:
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))


def parse_text(text: str, field: str, *, yaml_allowed: bool, max_depth: int = MAX_DEPTH, kind: str = "") -> Any:
    """JSON (or YAML without aliases) from text, bounded; SpecError with one line otherwise."""
    try:
        data = yaml.load(text, Loader=_NoAliasLoader) if yaml_allowed else json.loads(text)  # a SafeLoader subclass
    except _Refused as e:
        raise SpecError(field, str(e)) from None
    except RecursionError:
        raise SpecError(field, f"nested deeper than {max_depth} levels") from None
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = kind or ("YAML/JSON" if yaml_allowed else "JSON")
        raise SpecError(field, f"not valid {kind}: {first[:200]}") from None
    except ValueError as e:  # e.g. json's limit on integer digits
        raise SpecError(field, f"not valid {kind or 'JSON'}: {str(e)[:200]}") from None
    check_shape(data, field, max_depth)
    return data


def read_text(path: str | Path, field: str, max_bytes: int) -> str:
    """A file's text, refused before reading when larger than `max_bytes`."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(field, f"{str(p)[:200]!r} does not exist or is not a file")
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise SpecError(field, f"{str(p)[:200]!r} is {size:,} bytes (at most {max_bytes:,})")
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:  # grew while we looked, or a special file
            raise SpecError(field, f"{str(p)[:200]!r} is over {max_bytes:,} bytes")
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(field, f"{str(p)[:200]!r} is not UTF-8 text") from None
    except OSError as e:
        raise SpecError(field, f"{str(p)[:200]!r} cannot be read ({e.strerror or type(e).__name__})") from None


def load_document(path: str | Path, field: str, *, max_bytes: int, yaml_allowed: bool | None = None) -> Any:
    """Read and parse an outside document: YAML (no aliases) unless it is `.json` or yaml_allowed=False."""
    text = read_text(path, field, max_bytes)
    allow = (Path(path).suffix.lower() != ".json") if yaml_allowed is None else yaml_allowed
    return parse_text(text, field, yaml_allowed=allow, kind="YAML/JSON" if yaml_allowed is None else "")
