"""Sweeps: a grid of benchmark specs from one YAML/JSON file, validated up front, run as one run.

A sweep file holds spec fields at the top level (the base of every point), a `grid:` mapping
from spec field to a list of values (the sweep is their cross product), a `name:` (letters,
digits, `.`, `_`, `-`; it names the nightly runs) and optionally `max_memory:` (bytes, or a
string such as `16GiB` / `80GB`), the memory no point may be predicted to exceed:

```yaml
name: nightly-gpt2
phases: [init, forward, train]
devices: [cpu, "cuda:*"]
repeats: 5
grid:
  model: [gpt2, gpt2-medium]
  batch: [1, 8]
  dtype: [float32, bfloat16]
```

Every point is validated with `parse_spec` before anything is queued. A point that is invalid
(an unknown value, `seq` above the model's context) or predicted not to fit
(`farm.flops.predict_peak` against `max_memory`, and against the memory of a GPU tag the farm
knows, such as `cuda:t4`) is reported with its reason and skipped; a device that the point
cannot fit on is dropped from that point alone. `strict=True` refuses the whole sweep instead.
Nothing fails half-way: a sweep is either refused before submission or submitted whole.

Nightly idempotence: a scheduled (or `--nightly`) firing uses the run id
`<name>-<YYYYMMDD>` (UTC date), or `<name>-<YYYYMMDDTHHMMSS>` for an interval schedule
(the start of the interval), so the same night submitted twice creates one run. Cron
expressions (`parse_cron`, 5 fields, UTC) are parsed here too. This module never imports torch.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.schedules import crontab

from farm.cluster.controller import expand_wildcards, live_workers
from farm.errors import SpecError
from farm.flops import predict_peak
from farm.settings import Settings
from farm.spec import BenchSpec, load_spec_file, parse_device_tag, parse_spec

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_POINTS = 4096
SWEEP_KEYS = ("name", "grid", "max_memory")
GIB = 1 << 30
# Memory of GPU models by tag, GiB: the largest variant sold (a point is only skipped when it
# cannot fit on any card of that name; the worker's own check refuses the rest before running).
GPU_MEMORY_GIB: dict[str, float] = {
    "a100": 80,
    "h100": 80,
    "h200": 141,
    "l4": 24,
    "l40s": 48,
    "a10": 24,
    "t4": 16,
    "v100": 32,
    "rtx4090": 24,
}
_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(value: Any, field_name: str = "max_memory") -> int:
    """Bytes from an int or a string such as `16GiB`, `80 GB`, `1.5e9`."""
    if isinstance(value, bool):
        raise SpecError(field_name, f"expected a size such as 16GiB, got {value!r}")
    if isinstance(value, int | float) and value > 0:
        return int(value)
    m = re.match(r"^\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]i?b|b)?\s*$", str(value).lower())
    if not m:
        raise SpecError(field_name, f"expected a size such as 16GiB or 80GB, got {value!r}")
    try:
        size = float(m[1]) * _UNITS[m[2] or ""]
    except ValueError:
        raise SpecError(field_name, f"expected a size such as 16GiB or 80GB, got {value!r}") from None
    if size <= 0:
        raise SpecError(field_name, f"must be positive, got {value!r}")
    return int(size)


@dataclass
class SweepPoint:
    """One grid point: its grid values, and either a valid spec or why it was skipped."""

    index: int
    params: dict[str, Any]
    spec: BenchSpec | None = None
    error: str | None = None
    predicted_bytes: int | None = None
    dropped: list[str] = field(default_factory=list)  # "device: reason", for devices it cannot fit

    @property
    def ok(self) -> bool:
        return self.spec is not None

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items()) or "(base)"


@dataclass
class Sweep:
    """A parsed sweep: its name, base fields, grid, and every point validated."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    max_memory: int | None
    points: list[SweepPoint]

    @property
    def specs(self) -> list[BenchSpec]:
        return [p.spec for p in self.points if p.spec is not None]

    @property
    def skipped(self) -> list[SweepPoint]:
        return [p for p in self.points if not p.ok]

    @property
    def problems(self) -> list[str]:
        """Every skipped point and every dropped device, one line each."""
        lines = [f"point {p.index} ({p.label()}): {p.error}" for p in self.skipped]
        lines += [f"point {p.index} ({p.label()}): dropped {d}" for p in self.points if p.ok for d in p.dropped]
        return lines

    def job_count(self) -> int:
        """Jobs to queue (a wildcard such as `cuda:*` counts once; it may match several tags)."""
        return sum(len(s.devices) for s in self.specs)

    def as_document(self) -> dict[str, Any]:
        """The sweep as a file would hold it (stored with a schedule)."""
        doc: dict[str, Any] = {"name": self.name, **self.base, "grid": self.grid}
        if self.max_memory is not None:
            doc["max_memory"] = self.max_memory
        return doc


def device_memory(tag: str) -> int | None:
    """Memory of a device tag the farm can know without asking a worker (a named GPU model)."""
    kind, narrow = parse_device_tag(tag)
    if kind == "cuda" and narrow in GPU_MEMORY_GIB:
        return int(GPU_MEMORY_GIB[narrow] * GIB)
    return None


def _check_memory(point: SweepPoint, spec: BenchSpec, max_memory: int | None) -> BenchSpec | None:
    """Drop the devices the point is predicted not to fit on; None when no device remains."""
    pred = predict_peak(spec)
    point.predicted_bytes = pred.total
    keep = []
    for tag in spec.devices:
        limits = [(lim, src) for lim, src in ((max_memory, "max_memory"), (device_memory(tag), tag)) if lim]
        over = [(lim, src) for lim, src in limits if pred.total > lim]
        if over:
            lim, src = min(over)
            point.dropped.append(
                f"{tag}: predicted {pred.phase} peak {pred.describe()} exceeds {src} {lim / GIB:.1f} GiB"
            )
        else:
            keep.append(tag)
    if not keep:
        point.error = "does not fit: " + "; ".join(point.dropped)
        point.dropped = []
        return None
    return spec if len(keep) == len(spec.devices) else spec.model_copy(update={"devices": tuple(keep)})


def parse_sweep(
    data: dict[str, Any], *, default_name: str = "sweep", max_memory: int | None = None, strict: bool = False
) -> Sweep:
    """Validate a sweep mapping and every grid point; `strict` raises on the first skipped point."""
    if not isinstance(data, dict):
        raise SpecError("sweep", f"a sweep must be a mapping, got {type(data).__name__}")
    name = str(data.get("name") or default_name)
    if not NAME_RE.match(name):
        raise SpecError("name", f"{name!r} must use A-Z, a-z, 0-9, '.', '_', '-' (1-64 characters)")
    grid_raw = data.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise SpecError("grid", "must be a mapping of spec field -> list of values")
    base = {k: v for k, v in data.items() if k not in SWEEP_KEYS}
    grid: dict[str, list[Any]] = {}
    for key, values in grid_raw.items():
        if key not in BenchSpec.model_fields:
            raise SpecError(f"grid.{key}", f"unknown spec field; allowed: {', '.join(BenchSpec.model_fields)}")
        if key in base:
            raise SpecError(f"grid.{key}", "is also set at the top level; set it in one place")
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{key}", f"must be a non-empty list of values, got {values!r}")
        grid[key] = values
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > MAX_POINTS:
        raise SpecError("grid", f"{size} points is above the limit of {MAX_POINTS}; split the sweep")
    if max_memory is None and data.get("max_memory") is not None:
        max_memory = parse_bytes(data["max_memory"])
    points = []
    for i, combo in enumerate(itertools.product(*grid.values())):
        point = SweepPoint(index=i, params=dict(zip(grid, combo, strict=True)))
        try:
            spec = parse_spec({**base, **point.params})
            point.spec = _check_memory(point, spec, max_memory)
        except SpecError as e:
            point.error = str(e)
        points.append(point)
    sweep = Sweep(name=name, base=base, grid=grid, max_memory=max_memory, points=points)
    if strict and sweep.problems:
        raise SpecError("sweep", f"refused (--strict): {len(sweep.problems)} problem(s); first: {sweep.problems[0]}")
    if not sweep.specs:
        first = sweep.problems[0] if sweep.problems else "empty grid"
        raise SpecError("sweep", f"no valid point in {len(points)}; first: {first}")
    return sweep


def load_sweep(path: str | Path, *, max_memory: int | None = None, strict: bool = False) -> Sweep:
    """Read and validate a sweep file; its name defaults to the file's stem."""
    p = Path(path)
    data = load_spec_file(p)
    return parse_sweep(data, default_name=p.stem, max_memory=max_memory, strict=strict)


def resolve_wildcards(specs: list[BenchSpec], settings: Settings | None = None) -> tuple[list[BenchSpec], list[str]]:
    """Expand `cuda:*`-style tags against the live workers; a wildcard no worker matches is dropped
    (noted), not fatal: a nightly sweep on a night without GPU workers still runs its CPU points."""
    if not any(d.endswith(":*") for s in specs for d in s.devices):
        return specs, []
    workers = live_workers(settings)
    out, notes = [], []
    for spec in specs:
        resolved, dropped = expand_point(spec, workers)
        notes += dropped
        if resolved is not None:
            out.append(resolved)
    if not out:
        raise SpecError("devices", "no point of the sweep has a device a live worker serves: " + "; ".join(notes[:3]))
    return out, notes


def expand_point(spec: BenchSpec, workers: Sequence[dict[str, Any]]) -> tuple[BenchSpec | None, list[str]]:
    """One point's wildcard tags expanded against the live workers: the spec (None when no device is
    left) and a note per wildcard no worker matches."""
    devices: list[str] = []
    notes: list[str] = []
    for tag in spec.devices:
        try:
            devices.extend(expand_wildcards(spec.model_copy(update={"devices": (tag,)}), workers).devices)
        except SpecError as e:
            notes.append(f"{spec.model_name} batch {spec.batch} {spec.dtype}: dropped {e.message}")
    if not devices:
        return None, notes
    return spec.model_copy(update={"devices": tuple(dict.fromkeys(devices))}), notes


def nightly_run_id(name: str, when: datetime | None = None, every_s: float | None = None) -> str:
    """The idempotency key of a scheduled firing: `<name>-<YYYYMMDD>`, or per interval start."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    if every_s:
        start = int(when.timestamp() // every_s * every_s)
        return f"{name}-{datetime.fromtimestamp(start, UTC):%Y%m%dT%H%M%S}"
    return f"{name}-{when:%Y%m%d}"


def parse_cron(expr: str, app: Any = None) -> Any:
    """A 5-field cron expression (minute hour day-of-month month day-of-week, UTC) as a crontab."""
    fields = expr.split()
    if len(fields) != 5:
        raise SpecError("cron", f"{expr!r} must have 5 fields: minute hour day-of-month month day-of-week")
    minute, hour, dom, month, dow = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow, app=app)
    except (ValueError, TypeError) as e:
        raise SpecError("cron", f"{expr!r} is not a valid cron expression: {e}") from None


def daily_at_most(expr: str) -> bool:
    """True when a cron fires at most once a day (one minute, one hour): its runs are keyed by date."""
    minute, hour = expr.split()[:2]
    return minute.isdigit() and hour.isdigit()


def with_tags(specs: list[BenchSpec], tags: dict[str, str] | None) -> list[BenchSpec]:
    """Each spec with `tags` laid over its own (`farm sweep --tag K=V`), validated again."""
    if not tags:
        return specs
    return [BenchSpec.model_validate(s.model_dump() | {"tags": {**s.tags, **tags}}) for s in specs]
