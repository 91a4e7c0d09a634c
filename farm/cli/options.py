"""Options shared by commands: spec options (`farm run`, `farm submit`; one definition, one parser, the
spec defaults shown in --help) and the run-selection grammar (RUN..., `--run`, selectors)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from farm.cli.lazy import lazy_module
from farm.dates import parse_when
from farm.errors import NotFoundError, SpecError
from farm.spec import BenchSpec, load_spec_file, parse_spec

if TYPE_CHECKING:
    from farm.reports import report
    from farm.reports.report import Selection
    from farm.results.store import ResultStore
else:
    report = lazy_module("farm.reports.report")  # numpy and the store: run on first use (farm.cli.lazy)


def _default(name: str) -> Any:
    """A BenchSpec field's default (the one place spec defaults live)."""
    return BenchSpec.model_fields[name].get_default(call_default_factory=True)


def _d(name: str) -> str:
    value = _default(name)
    return ",".join(value) if isinstance(value, tuple) else str(value)


# What a bare `farm submit` / `farm run` times, from BenchSpec's defaults (shown in their --help).
DEFAULTS_LINE = (
    f"With no spec file and no options: model {_d('model')} (GPT-2 small, 124M parameters), batch {_d('batch')} x "
    f"seq {_d('seq')}, phases {_d('phases')} (training included), device {_d('devices')}, {_d('dtype')}, "
    f"{_d('warmup')} warm-up + {_d('repeats')} timed repeats."
)

SpecFile = Annotated[Path | None, typer.Argument(help="YAML or JSON spec file; options below override it.")]
Model = Annotated[
    str | None,
    typer.Option(
        help="Preset: gpt2-tiny, gpt2 (gpt2-small), gpt2-medium, gpt2-large, gpt2-xl.",
        show_default=f"{_d('model')}, GPT-2 small",
    ),
]
Phases = Annotated[
    str | None,
    typer.Option(
        help="'all' (init,forward,train) or a comma list of init,forward,train,generate.",
        show_default=f"all: {_d('phases')}",
    ),
]
Devices = Annotated[
    str | None,
    typer.Option(help="Comma list of device tags: cpu, cuda, cuda:h100, 'cuda:*'.", show_default=_d("devices")),
]
Batch = Annotated[int | None, typer.Option(help="Batch size.", show_default=_d("batch"))]
Seq = Annotated[int | None, typer.Option(help="Sequence length, at most the model's context.", show_default=_d("seq"))]
GenTokens = Annotated[
    int | None,
    typer.Option(
        "--gen-tokens",
        help="generate: tokens decoded one at a time after the seq-token prompt.",
        show_default=_d("gen_tokens"),
    ),
]
WorldSize = Annotated[
    int | None,
    typer.Option(
        "--world-size",
        help="train: DistributedDataParallel over this many devices of one worker (gloo processes on CPU, NCCL on "
        "GPUs), the same batch on each.",
        show_default=_d("world_size"),
    ),
]
Repeats = Annotated[
    str | None,
    typer.Option(
        metavar="N|auto",
        help=f"Timed repeats of forward and train, or 'auto': until the median's 95% CI is within "
        f"ci_target ({_default('ci_target'):.0%}) of it, or repeat_budget_s ({_d('repeat_budget_s')} s) per phase "
        f"is spent, or max_repeats ({_d('max_repeats')}); at least 5.",
        show_default=_d("repeats"),
    ),
]
Warmup = Annotated[int | None, typer.Option(help="Untimed warm-up repeats.", show_default=_d("warmup"))]
DType = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.", show_default=_d("dtype"))]
PrecisionMode = Annotated[
    str | None,
    typer.Option(
        "--precision-mode",
        help="auto (cast on CPU, autocast on GPU), autocast (float32 weights) or cast.",
        show_default=_d("precision_mode"),
    ),
]
MatmulPrecision = Annotated[
    str | None,
    typer.Option(
        "--matmul-precision",
        help="torch's float32 matmul precision: highest (strict fp32 products), high (TF32 on GPUs that have it, "
        "or bf16x3: about fp32 accuracy, faster), medium (bfloat16 products where the device has a fast path; "
        "fastest, least accurate). Low-precision dtypes are unaffected.",
        show_default=_d("matmul_precision"),
    ),
]
Threads = Annotated[int | None, typer.Option(help="CPU threads for torch.", show_default="torch's default")]
Compile = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.", show_default="no-compile")
]
Optimizer = Annotated[str | None, typer.Option(help="adamw or sgd.", show_default=_d("optimizer"))]
Seed = Annotated[int | None, typer.Option(help="Seed of weights and tokens.", show_default=_d("seed"))]
TimeLimit = Annotated[
    float | None, typer.Option("--time-limit", help="Seconds a job may take.", show_default="no limit")
]
Checkpoint = Annotated[
    str | None, typer.Option(help="Local Hugging Face GPT-2 checkpoint directory.", show_default="random weights")
]
Tag = Annotated[list[str] | None, typer.Option("--tag", help="Label K=V stored with the results (repeatable).")]
Name = Annotated[str | None, typer.Option("--name", help="A name for the run, shown by status, results and report.")]


# The spec options every spec-taking command declares (farm run, farm submit), in one list.
SPEC_OPTION_NAMES = (
    "model", "phases", "devices", "batch", "seq", "gen_tokens", "world_size", "repeats", "warmup", "dtype",
    "precision_mode", "matmul_precision", "threads", "compile", "optimizer", "seed", "time_limit", "checkpoint", "tag",
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


# -- run selection: one grammar for every command that takes runs or filters results --------------
ListOpt = list[str] | None
Runs = Annotated[
    ListOpt, typer.Argument(help="Run ids, or 'latest' for the newest run.", show_default=False, metavar="[RUN]...")
]
RunOpt = Annotated[
    ListOpt, typer.Option("--run", help="Run id or 'latest' (repeatable or comma list); the same as a positional RUN.")
]
Machine = Annotated[ListOpt, typer.Option("--machine", help="Machine tag (repeatable or comma list).")]
Device = Annotated[ListOpt, typer.Option("--device", help="Device tag, exactly as stored: cpu, cuda, cuda:h100.")]
ModelSel = Annotated[ListOpt, typer.Option("--model", help="Model preset name, e.g. gpt2.")]
SpecHash = Annotated[ListOpt, typer.Option("--spec-hash", help="Spec hash (same work on any device).")]
Wide = Annotated[
    bool,
    typer.Option(
        "--wide",
        help="Terminal: every column (run, repeats, tokens/s, FLOP/s, the MFU's peak and roofline, peak memory, "
        "the speedup's notes), wider than the terminal where it must be. Default: the compact table that fits "
        "the terminal's width (COLUMNS). Files and the other formats carry every column.",
    ),
]
Since = Annotated[str | None, typer.Option(help="Finished at or after: ISO date/time (UTC) or 30m, 12h, 7d.")]
Until = Annotated[str | None, typer.Option(help="Finished at or before: ISO date/time (UTC) or 30m, 12h, 7d.")]


def split(values: ListOpt) -> tuple[str, ...]:
    """Repeatable options that also take comma lists, flattened."""
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def run_ids(store: ResultStore, *groups: ListOpt) -> tuple[str, ...]:
    """Run ids from positional RUNs and `--run`, `latest` resolved, each once (NotFoundError when no run exists)."""
    return tuple(dict.fromkeys(store.resolve_run(r) for g in groups for r in split(g)))


def selection(
    runs: tuple[str, ...] = (),
    machine: ListOpt = None,
    device: ListOpt = None,
    model: ListOpt = None,
    spec_hash: ListOpt = None,
    since: str | None = None,
    until: str | None = None,
) -> Selection:
    """The results a command's run ids and selectors choose (selectors of one kind OR-ed, kinds AND-ed).
    Dates are parsed here: call it before Redis is touched, so bad input is exit 2 whatever the farm holds."""
    return report.Selection(
        runs=runs,
        machines=split(machine),
        devices=split(device),
        models=split(model),
        spec_hashes=split(spec_hash),
        since=parse_when(since, "since"),
        until=parse_when(until, "until"),
    )


def run_label(store: ResultStore, run_id: str) -> str:
    """A run id with its stored name, if it has one: `20260101T020000-ab12cd (nightly)`."""
    try:
        name = store.get_run(run_id).get("name") or ""
    except NotFoundError:
        name = ""
    return f"{run_id} ({name})" if name else run_id
