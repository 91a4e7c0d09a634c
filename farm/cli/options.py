"""Spec options shared by `farm run`, `farm submit` (and sweeps): one definition, one parser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from farm.errors import SpecError
from farm.spec import BenchSpec, load_spec_file, parse_spec

SpecFile = Annotated[Path | None, typer.Argument(help="YAML or JSON spec file; options below override it.")]
Model = Annotated[
    str | None, typer.Option(help="Preset: gpt2-tiny, gpt2 (gpt2-small), gpt2-medium, gpt2-large, gpt2-xl.")
]
Phases = Annotated[str | None, typer.Option(help="'all' or a comma list of init,forward,train.")]
Devices = Annotated[str | None, typer.Option(help="Comma list of device tags: cpu, cuda, cuda:h100, 'cuda:*'.")]
Batch = Annotated[int | None, typer.Option(help="Batch size (default 8).")]
Seq = Annotated[int | None, typer.Option(help="Sequence length (default 1024, at most the model's context).")]
Repeats = Annotated[
    str | None,
    typer.Option(
        metavar="N|auto",
        help="Timed repeats of forward and train (default 5), or 'auto': until the median's 95% CI is within "
        "ci_target (2%) of it, or repeat_budget_s (60 s) per phase is spent, or max_repeats (100); at least 5.",
    ),
]
Warmup = Annotated[int | None, typer.Option(help="Untimed warm-up repeats (default 1).")]
DType = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")]
PrecisionMode = Annotated[
    str | None,
    typer.Option("--precision-mode", help="auto (cast on CPU, autocast on GPU), autocast (float32 weights) or cast."),
]
MatmulPrecision = Annotated[
    str | None, typer.Option("--matmul-precision", help="highest (strict fp32) or high (TF32).")
]
Threads = Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")]
Compile = Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")]
Optimizer = Annotated[str | None, typer.Option(help="adamw or sgd.")]
Seed = Annotated[int | None, typer.Option(help="Seed of weights and tokens.")]
TimeLimit = Annotated[float | None, typer.Option("--time-limit", help="Seconds a job may take.")]
Checkpoint = Annotated[str | None, typer.Option(help="Local Hugging Face GPT-2 checkpoint directory.")]
Tag = Annotated[list[str] | None, typer.Option("--tag", help="Label K=V stored with the results (repeatable).")]


# The spec options every spec-taking command declares (farm run, farm submit), in one list.
SPEC_OPTION_NAMES = (
    "model", "phases", "devices", "batch", "seq", "repeats", "warmup", "dtype", "precision_mode",
    "matmul_precision", "threads", "compile", "optimizer", "seed", "time_limit", "checkpoint", "tag",
)  # fmt: skip


def spec_options(values: dict[str, Any]) -> dict[str, Any]:
    """The spec options out of a command's parameters (pass `locals()`)."""
    return {k: values[k] for k in SPEC_OPTION_NAMES}


def parse_tags(tags: list[str] | None) -> dict[str, str] | None:
    if not tags:
        return None
    out: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep:
            raise SpecError("tags", f"--tag {t!r} must be KEY=VALUE")
        out[key] = value
    return out


def build_spec(spec_file: Path | None, **options: Any) -> BenchSpec:
    """A validated spec from an optional file with CLI options laid over it (None = not given)."""
    data: dict[str, Any] = load_spec_file(spec_file) if spec_file is not None else {}
    if "tag" in options:
        options["tags"] = parse_tags(options.pop("tag"))
    renames = {"time_limit": "time_limit_s"}
    for key, value in options.items():
        if value is not None:
            data[renames.get(key, key)] = value
    return parse_spec(data)
