"""Benchmark specifications: what to time, validated before anything runs or is queued.

A `BenchSpec` (model preset or custom shape, batch, seq, repeats or `auto`, warm-up, dtype, phases,
devices, threads, compile, seed, time limit) expands into one `Job` per device tag. Every model
here is frozen and forbids unknown fields; `parse_spec` turns pydantic's errors into a
`SpecError` that names the field and what is allowed. `BenchSpec.spec_hash` names the work
(`WORK_FIELDS`), never how it is measured (`MEASUREMENT_FIELDS`). This module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from farm.errors import SpecError
from farm.untrusted import MAX_SPEC_BYTES, load_document

Phase = Literal["init", "forward", "train", "generate"]
# Every phase, in canonical order. `all` is the seed's three (ALL_PHASES): `generate` needs room for
# `gen_tokens` after a prompt of `seq` tokens, which the default spec (seq 1024 = GPT-2's context)
# does not leave, and a nightly series of `all` keeps the same phases it always had.
PHASES: tuple[Phase, ...] = ("init", "forward", "train", "generate")
ALL_PHASES: tuple[Phase, ...] = ("init", "forward", "train")
MAX_GEN_TOKENS = 8192
MAX_WORLD_SIZE = 64
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda", "mps")
DType = Literal["float32", "bfloat16", "float16"]

# A device tag is KIND or KIND:NARROW. NARROW names a GPU model (`cuda:h100`), a machine
# (`cpu:box7`), a local index (`cuda:1`, local runs only) or every served tag (`cuda:*`).
# The character set is restricted because tags become queue names and Redis keys.
_NARROW = r"[a-z0-9][a-z0-9_-]{0,62}"
DEVICE_TAG_RE = re.compile(rf"^(?P<kind>{'|'.join(DEVICE_KINDS)})(?::(?P<narrow>{_NARROW}|\*))?$")
# Timed repeats per phase, a count or `max_repeats` (was 10,000). The median's CI is O(n) and a
# speedup's bootstrap O(n x resamples); at 1,000 repeats the CI of a median spans about +-31 ranks
# (3% of them), finer than any run-to-run change a report can show, and GPT-2 small's CPU forward
# (0.5 s) takes 8 minutes a phase. More is noise collection, not precision: `repeats: auto` stops
# earlier on its CI. Results stored before the limit (up to LEGACY_MAX_REPEATS) still read back.
MAX_REPEATS = 1000
LEGACY_MAX_REPEATS = 10000
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed
MAX_TAGS = 64
# Validation context of a record read back from the store (`ResultStore`): what an older farm
# accepted still reads (more repeats, free-text custom model names); a new spec or import does not.
STORED: dict[str, bool] = {"stored": True}
AUTO_MIN_REPEATS = 5  # `repeats: auto` never stops before this many timed repeats

SAFE_TEXT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
RUN_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}$"


def safe_name(text: str, default: str = "checkpoint") -> str:
    """`text` in the safe character set of tags and model names (others as '-'), at most 64
    characters: the name of a model read from a file (a checkpoint's `_name_or_path`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[-64:].strip("-.") or default


def check_run_id(run_id: str) -> str:
    """A caller-chosen run id, or SpecError: it becomes part of Redis keys and file names."""
    if not re.match(RUN_ID_PATTERN, run_id):
        raise SpecError(
            "run_id", f"{run_id!r} must be 1-96 of A-Z, a-z, 0-9, '_', '.', '-', not starting with '.' or '-'"
        )
    return run_id


def _stored(info: ValidationInfo) -> bool:
    """True when validating a record read back from the store (context `STORED`)."""
    return bool(isinstance(info.context, dict) and info.context.get("stored"))


def _reject_bool(v: Any) -> Any:
    """pydantic's lax mode reads `true` as 1: a YAML `batch: true` is a wrong type, not a batch of one."""
    if isinstance(v, bool):
        raise ValueError(f"Input should be a valid integer, got a boolean ({str(v).lower()})")
    return v


class ModelShape(BaseModel):
    """The shape of a GPT-2 family model (the config handed to every module of `farm.engine.model`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    n_layer: int = Field(gt=0, le=256)
    n_head: int = Field(gt=0, le=256)
    n_embd: int = Field(gt=0, le=65536)
    block_size: int = Field(default=1024, gt=0, le=1 << 20)  # context length
    vocab_size: int = Field(default=50257, gt=0, le=1 << 22)
    # A custom model's name becomes a Redis key, a label, a plot title and webhook text: the safe
    # set of tags, and never a preset's name unless the shape is that preset's.
    name: str = "custom"

    @field_validator("n_layer", "n_head", "n_embd", "block_size", "vocab_size", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        return _reject_bool(v)

    @field_validator("name")
    @classmethod
    def _name_safe(cls, v: str, info: ValidationInfo) -> str:
        if not SAFE_TEXT_RE.match(v) and not _stored(info):
            raise ValueError("a model name must use A-Z, a-z, 0-9, '.', '_', '-' (1-64 characters)")
        return v

    @model_validator(mode="after")
    def _heads_divide_width(self, info: ValidationInfo) -> ModelShape:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        preset = _PRESET_SHAPES.get(ALIASES.get(self.name, self.name))
        if preset is not None and self.dims() != preset and not _stored(info):
            raise ValueError(f"{self.name!r} is a preset's name; a custom shape needs a name of its own")
        return self

    def dims(self) -> dict[str, int]:
        """The shape without its name."""
        return {k: getattr(self, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}


# The presets' dimensions, known before the presets are built (a custom shape may not take their names).
_PRESET_SHAPES: dict[str, dict[str, int]] = {
    "gpt2-tiny": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 1024, "vocab_size": 4096},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024, "vocab_size": 50257},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280, "block_size": 1024, "vocab_size": 50257},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600, "block_size": 1024, "vocab_size": 50257},
}


ALIASES: dict[str, str] = {"gpt2-small": "gpt2"}
PRESETS: dict[str, ModelShape] = {name: ModelShape(name=name, **dims) for name, dims in _PRESET_SHAPES.items()}


def resolve_model(model: str | ModelShape) -> ModelShape:
    """A preset name (or alias) or a custom shape, as a `ModelShape`."""
    if isinstance(model, ModelShape):
        return model
    name = ALIASES.get(model, model)
    if name not in PRESETS:
        allowed = ", ".join([*PRESETS, *ALIASES])
        raise SpecError("model", f"unknown preset {model!r}; allowed: {allowed}, or a custom shape")
    return PRESETS[name]


def parse_device_tag(tag: str) -> tuple[str, str | None]:
    """Split `cuda:h100` into (`cuda`, `h100`); raise SpecError for anything else."""
    m = DEVICE_TAG_RE.match(tag.strip().lower())
    if not m:
        raise SpecError(
            "devices",
            f"unknown device {tag!r}; allowed: {', '.join(DEVICE_KINDS)}, optionally narrowed as "
            "KIND:TAG (e.g. cuda:h100, cpu:box7) or cuda:* for every GPU tag a live worker serves; "
            "TAG uses a-z, 0-9, '-' and '_'",
        )
    return m["kind"], m["narrow"]


CONTROL_QUEUE = "control"  # small farm tasks (a schedule's firing); every worker consumes it


def series_device(device: str, gpu: str | None = None) -> str:
    """The device a result's history is filed under, however the job named it (one device, one history).

    `cpu`, `cpu:<machine>` and `cpu:*` ran on the same CPU, whose machine is its own dimension (the
    fingerprint's tag), so all are `cpu` (`mps` likewise). A CUDA result is `cuda:<gpu>`, the model
    tag of the GPU it ran on: a model tag the job named stands (`cuda:h100`: the queue only that
    GPU's workers serve), and a bare `cuda`, `cuda:*` or a local index (`cuda:1`) takes the tag of the
    GPU it ran on (`gpu`, from its fingerprint: `farm.results.machine.gpu_ran_on`), else is `cuda`. So
    `cuda` and `cuda:h100` on an H100 are one series. Total: a string that is
    not a device tag is returned unchanged."""
    kind, sep, narrow = device.partition(":")
    if sep and kind in ("cpu", "mps"):
        return kind
    if kind == "cuda" and (not narrow or narrow == "*" or narrow.isdigit()):
        return f"cuda:{gpu}" if gpu else "cuda"
    return device


def device_selector(device: str) -> tuple[str, str | None]:
    """(series device, machine) a `--device` selector stands for: `cpu:box7` is `cpu` on machine
    box7; any other tag is itself, on any machine (`cuda` selects every CUDA series: `device_selects`)."""
    kind, sep, narrow = device.partition(":")
    if sep and kind in ("cpu", "mps") and narrow and narrow != "*":
        return kind, narrow
    return series_device(device), None


def device_selects(selector: str, device: str) -> bool:
    """Whether a series device (`series_device`) is one a selector's device stands for: itself, and
    for a bare kind (`cuda`) every series of that kind (`cuda:h100`, `cuda:a100`)."""
    return device == selector or (":" not in selector and device.partition(":")[0] == selector)


def queue_for(tag: str, world_size: int = 1) -> str:
    """The Celery queue of a device tag: `cpu`, `cuda`, `cuda.h100`; `cuda.h100.x8` for a job over 8 devices."""
    kind, narrow = parse_device_tag(tag)
    if narrow == "*":
        raise SpecError("devices", f"{tag!r} is a wildcard; expand it before choosing a queue")
    base = kind if narrow is None else f"{kind}.{narrow}"
    return base if world_size == 1 else f"{base}.x{world_size}"


class BenchSpec(BaseModel):
    """One benchmark: a model and a workload, to be timed on one or more devices."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str | ModelShape = "gpt2"
    batch: int = Field(default=8, gt=0, le=4096)
    seq: int = Field(default=1024, gt=0)
    # A count, or "auto": repeat until the median's 95% CI half-width is under `ci_target` of the
    # median, or `repeat_budget_s` is spent, or `max_repeats` are done (never fewer than
    # AUTO_MIN_REPEATS); `PhaseResult.repeats_stop` says which. See docs/farm.md, "Measurement".
    repeats: int | Literal["auto"] = 5
    ci_target: float = Field(default=0.02, gt=0, lt=1)  # repeats: auto, relative CI half-width
    repeat_budget_s: float = Field(default=60.0, gt=0)  # repeats: auto, seconds of repeats per phase
    max_repeats: int = Field(default=100, ge=AUTO_MIN_REPEATS, le=LEGACY_MAX_REPEATS)  # repeats: auto; MAX_REPEATS
    warmup: int = Field(default=1, ge=0, le=1000)
    dtype: DType = "float32"
    # How a low-precision dtype is applied: "autocast" keeps float32 master weights and runs
    # matmuls in the dtype (standard mixed precision); "cast" converts the weights themselves.
    # "auto" (default) picks per device what measured fastest without losing training accuracy:
    # cast on CPUs (1.6-1.9x faster forward than autocast on an AMX Xeon), autocast on GPUs
    # (fp32 master weights; bf16 weights lose small AdamW updates). See docs/performance.md.
    precision_mode: Literal["auto", "autocast", "cast"] = "auto"
    # float32 matmul precision: "highest" is strict fp32, "high" allows TF32 on GPUs (and
    # bf16x3 on some CPUs). Recorded with every result because it changes the peak.
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    phases: tuple[Phase, ...] = ALL_PHASES
    # generate: tokens decoded one at a time (greedy, key/value cache) after the prompt of `seq` tokens.
    gen_tokens: int = Field(default=128, gt=0, le=MAX_GEN_TOKENS)
    # train: DistributedDataParallel over this many devices of one worker (NCCL on GPUs, gloo processes on
    # CPUs), `batch` per device; the job's queue is `<device queue>.x<world_size>` above 1.
    world_size: int = Field(default=1, gt=0, le=MAX_WORLD_SIZE)
    devices: tuple[str, ...] = ("cpu",)
    threads: int | None = Field(default=None, gt=0, le=1024)
    compile: bool = False
    optimizer: Literal["adamw", "sgd"] = "adamw"
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    time_limit_s: float | None = Field(default=None, gt=0)
    checkpoint: str | None = None  # local Hugging Face GPT-2 directory; random init when None
    tags: dict[str, str] = Field(default_factory=dict, max_length=MAX_TAGS)

    @field_validator("model", mode="before")
    @classmethod
    def _model_known(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return resolve_model(v).name
            except SpecError as e:
                raise ValueError(e.message) from None
        return v

    @field_validator(
        "batch", "seq", "warmup", "threads", "seed", "max_repeats", "gen_tokens", "world_size", mode="before"
    )
    @classmethod
    def _ints_not_bools(cls, v: Any) -> Any:
        return _reject_bool(v)

    @field_validator("max_repeats")
    @classmethod
    def _max_repeats(cls, v: int, info: ValidationInfo) -> int:
        if v > MAX_REPEATS and not _stored(info):
            raise ValueError(f"Input should be less than or equal to {MAX_REPEATS}")
        return v

    @field_validator("repeats", mode="plain")
    @classmethod
    def _repeats(cls, v: Any, info: ValidationInfo) -> int | Literal["auto"]:
        """A count from 1 to MAX_REPEATS, or "auto" (one validator: the union's branch errors never leak)."""
        if isinstance(v, str):
            text = v.strip().lower()
            if text == "auto":
                return "auto"
            if not re.fullmatch(r"[+-]?[0-9]{1,12}", text):
                raise ValueError("Input should be a valid integer or 'auto'")
            v = int(text)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            _reject_bool(v)
            raise ValueError("Input should be a valid integer or 'auto'")
        if v <= 0:
            raise ValueError("Input should be greater than 0 (or 'auto')")
        if v > (LEGACY_MAX_REPEATS if _stored(info) else MAX_REPEATS):
            raise ValueError(f"Input should be less than or equal to {MAX_REPEATS} (or 'auto')")
        return v

    @field_validator("phases", mode="before")
    @classmethod
    def _phases(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, list | tuple):
            if "all" in v:
                v = [*ALL_PHASES, *(p for p in v if p != "all")]
            bad = [p for p in v if p not in PHASES]
            if bad:
                raise ValueError(f"unknown phase {bad[0]!r}; allowed: all, {', '.join(PHASES)}")
            if not v:
                raise ValueError(f"at least one phase is needed; allowed: all, {', '.join(PHASES)}")
            # Canonical order and no duplicates: init, forward, train.
            return tuple(p for p in PHASES if p in v)
        return v

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [d.strip() for d in v.split(",") if d.strip()]
        if isinstance(v, list | tuple):
            if not v:
                raise ValueError("at least one device is needed, e.g. cpu or cuda")
            out: list[str] = []
            for d in v:
                if not isinstance(d, str):
                    raise ValueError(f"device must be a string, got {d!r}")
                try:
                    kind, narrow = parse_device_tag(d)
                except SpecError as e:
                    raise ValueError(e.message) from None
                tag = kind if narrow is None else f"{kind}:{narrow}"
                if tag not in out:
                    out.append(tag)
            return tuple(out)
        return v

    @field_validator("tags")
    @classmethod
    def _tags_safe(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not SAFE_TEXT_RE.match(k) or not SAFE_TEXT_RE.match(val):
                raise ValueError(f"tag {k}={val} must use A-Z, a-z, 0-9, '.', '_', '-' (1-64 characters)")
        return v

    @model_validator(mode="after")
    def _fits_context(self) -> BenchSpec:
        shape = self.shape
        if self.seq > shape.block_size:
            raise ValueError(f"seq: {self.seq} is above the model's context ({shape.block_size} tokens)")
        if "generate" in self.phases and self.seq + self.gen_tokens > shape.block_size:
            raise ValueError(
                f"gen_tokens: a prompt of seq {self.seq} + {self.gen_tokens} generated tokens is above the model's "
                f"context ({shape.block_size} tokens); lower seq or gen_tokens"
            )
        return self

    @property
    def shape(self) -> ModelShape:
        return resolve_model(self.model)

    def mode_for(self, device_kind: str | None = None) -> Literal["autocast", "cast"]:
        """The precision mode actually used on a device kind (default: the spec's first device)."""
        if self.precision_mode != "auto":
            return self.precision_mode
        kind = device_kind or parse_device_tag(self.devices[0])[0]
        return "cast" if kind == "cpu" else "autocast"

    @property
    def model_name(self) -> str:
        return self.shape.name

    @property
    def auto_repeats(self) -> bool:
        return self.repeats == "auto"

    def workload(self) -> dict[str, Any]:
        """The fields that define the work timed (`WORK_FIELDS`), as the spec hash sees them.

        The model is its shape's dimensions (a preset and the same shape written out, under any
        name, are the same work), and `precision_mode` is "none" for float32, where it changes
        nothing.
        """
        doc = self.model_dump(mode="json", include=set(WORK_FIELDS))
        doc["model"] = self.shape.model_dump(mode="json", exclude={"name"})
        if self.dtype == "float32":
            doc["precision_mode"] = "none"
        for name, default in _LATER_WORK_FIELDS.items():  # added after hash version 2: only when set
            if getattr(self, name) != default:
                doc[name] = getattr(self, name)
        return doc

    def spec_hash(self) -> str:
        """A short stable hash of the work: the same work on any device, measured any way, has the same hash."""
        doc = {"v": SPEC_HASH_VERSION, **self.workload()}
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def expand(self, run_id: str | None = None) -> list[Job]:
        """One `Job` per device tag. Wildcards (`cuda:*`) must have been resolved first."""
        run_id = run_id or new_run_id()
        jobs = []
        for i, tag in enumerate(self.devices):
            queue_for(tag)  # refuses a wildcard
            spec = self.model_copy(update={"devices": (tag,)})
            jobs.append(Job(job_id=f"{run_id}-{i:03d}", run_id=run_id, device=tag, spec=spec))
        return jobs


# Spec identity (`BenchSpec.spec_hash`). Every field is one or the other (tests/test_spec_identity.py):
# a new field must choose. Version 2 dropped repeats, warmup and phases (measurement) and the
# model's name; stored results under a version-1 hash are re-indexed by the store (docs/farm.md).
SPEC_HASH_VERSION = 2
WORK_FIELDS: tuple[str, ...] = (
    "model", "batch", "seq", "dtype", "precision_mode", "matmul_precision", "threads", "compile", "optimizer",
    "checkpoint", "gen_tokens", "world_size",
)  # fmt: skip
# Work fields added after version 2, with their defaults: they enter the hash only when not at the default,
# so every hash made before they existed stands (a spec that does not set them is the same work).
_LATER_WORK_FIELDS: dict[str, Any] = {"gen_tokens": 128, "world_size": 1}
# How the work is measured, where, and labels. `seed` picks the random weights and tokens: the
# same FLOPs on the same shapes, so the same work.
MEASUREMENT_FIELDS: tuple[str, ...] = (
    "repeats", "ci_target", "repeat_budget_s", "max_repeats", "warmup", "phases", "devices", "seed", "time_limit_s",
    "tags",
)  # fmt: skip


class SkippedDevice(BaseModel):
    """A device a run asked for that the embedded farm left out, and why (one short reason):
    recorded with the run, shown by `farm results` and `farm report`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    device: str
    reason: str

    def line(self) -> str:
        """`cuda: asked for, skipped: no CUDA device on this machine`."""
        return f"{self.device}: asked for, skipped: {self.reason}"


class Job(BaseModel):
    """One spec on one device tag: the unit that is queued, run and stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Ids become Redis keys and file names: a safe set, never starting with '.' or '-'.
    job_id: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    device: str
    spec: BenchSpec

    @field_validator("device")
    @classmethod
    def _device_tag(cls, v: str) -> str:
        try:
            kind, narrow = parse_device_tag(v)
        except SpecError as e:
            raise ValueError(e.message) from None
        if narrow == "*":
            raise ValueError("a job's device cannot be a wildcard")
        return kind if narrow is None else f"{kind}:{narrow}"

    @property
    def kind(self) -> str:
        return parse_device_tag(self.device)[0]

    @property
    def queue(self) -> str:
        """The device's queue; `<queue>.x<n>` for a job over n devices (`world_size`)."""
        return queue_for(self.device, self.spec.world_size)


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus random suffix (safe for keys and file names)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "spec"
    # Drop pydantic's union branch names from the location ("model.str" -> "model").
    loc = re.sub(r"\.(str|ModelShape|function-after\[.*?\])", "", loc)
    msg = err.get("msg", "invalid")
    msg = msg.removeprefix("Value error, ")
    head = re.match(r"^([a-z_]+): (.*)$", msg)
    if loc == "spec" and head and head[1] in BenchSpec.model_fields:
        return head[1], head[2]
    if err.get("type") == "extra_forbidden":
        field = loc.split(".")[-1]
        allowed = ", ".join(BenchSpec.model_fields) if "." not in loc else ", ".join(ModelShape.model_fields)
        return loc, f"unknown field {field!r}; allowed fields: {allowed}"
    return loc, msg


def parse_spec(data: Any) -> BenchSpec:
    """Validate a mapping into a `BenchSpec`, raising `SpecError` naming the first bad field."""
    if isinstance(data, BenchSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError("spec", f"a spec must be a mapping of fields, got {type(data).__name__}")
    try:
        return BenchSpec.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # A union (preset name | custom shape) reports one error per branch: prefer the one
        # that matches the input's type.
        field, msg = _describe(errors[0])
        if field == "model" and isinstance(data.get("model"), dict):
            field, msg = _describe(next((x for x in errors if x["loc"][1:2] != ("str",)), errors[0]))
        raise SpecError(field, msg) from None


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON spec (or sweep) file into a mapping, bounded (`farm.untrusted`); not yet validated."""
    p = Path(path)
    data = load_document(p, "spec_file", max_bytes=MAX_SPEC_BYTES)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("spec_file", f"{str(p)[:200]!r} must hold a mapping of spec fields, got {type(data).__name__}")
    return data
