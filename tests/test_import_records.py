"""Imported generate and DDP records prove every number they carry (docs/import.md): derived figures
are recomputed from raw times, lies are `invalid` with a one-line reason, honest records come through
unchanged. Also: every field of a result is listed in docs/import.md with what the importer does
with it, so no new record arrives trusted by accident."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from farm.reports.importer import recheck
from farm.results import synthetic as syn
from farm.results.decode import Generation
from farm.results.result import JobResult, judge
from farm.results.scaling import EFFICIENCY_BOUND, Scaling
from farm.spec import BenchSpec

ROOT = Path(__file__).resolve().parent.parent
H100 = "NVIDIA H100 80GB HBM3"


def _generate_result(prefill: float, decode_step: float, *, whole: float | None = None,
                     steps_recorded: int | None = None, decode_total: float | None = None) -> JobResult:  # fmt: skip
    """An H100 generate result of gpt2 1 x 128 + 16 new tokens, 3 repeats, as a worker stores it
    (judged by the farm's own `judge`), with its raw readings as given."""
    spec = BenchSpec(model="gpt2", batch=1, seq=128, gen_tokens=16, repeats=3, phases=("generate",))
    spec = spec.model_copy(update={"devices": ("cuda",)})
    steps = 15
    tokens = [decode_step] * (steps if steps_recorded is None else steps_recorded)
    dec = sum(tokens) if decode_total is None else decode_total
    total = whole if whole is not None else prefill + dec + 1e-4
    gen = Generation(gen_tokens=16, decode_steps=steps, prefill_times_s=[prefill] * 3,
                     decode_times_s=[dec] * 3, token_times_s=tokens)  # fmt: skip
    res = syn.result("gen", 0, "cuda", {}, spec=spec, fingerprint=syn.machine("lab", gpu=H100))
    from farm.results.peaks import gpu_peak

    ph = judge(spec, "generate", [total] * 3, [], peak=gpu_peak(H100, "float32", "highest"),
               peak_memory_bytes=None, memory_kind=None, breakdown={}, generation=gen)  # fmt: skip
    res.phases["generate"] = ph
    return res.settle_status()


def test_an_honest_generate_record_is_unchanged() -> None:
    res = _generate_result(prefill=2e-3, decode_step=4e-3)
    out = recheck(res, "honest.json")
    # The worker here had no bandwidth ceiling (unverified); the import finds the H100's by name.
    assert out.phases["generate"].status == "ok", out.phases["generate"].invalid_reason
    g, h = out.phases["generate"].generate, res.phases["generate"].generate
    assert g is not None and h is not None and g.decode_tokens_per_s == pytest.approx(h.decode_tokens_per_s)


@pytest.mark.parametrize(
    ("case", "kw", "reason"),
    [
        ("1e-12 s decode steps (the issue's lie)", {"decode_step": 1e-12, "whole": 0.1}, "above the device's peak"),
        ("a prefill faster than the GPU", {"prefill": 1e-9}, "the fastest prefill ran at"),
        ("parts longer than the whole", {"decode_step": 4e-3, "whole": 0.01}, "exceed the whole generation"),
        ("step times that are not the decode steps", {"decode_step": 4e-3, "steps_recorded": 3},
         "3 decode-step times for 15 decode steps"),
        ("steps that do not add up to the decode", {"decode_step": 4e-3, "decode_total": 0.01},
         "add up to"),
        ("a negative step", {"decode_step": -1.0, "whole": 0.1}, "not a positive number"),
    ],
)  # fmt: skip
def test_lying_generate_records_are_invalid(case: str, kw: dict[str, float], reason: str) -> None:
    args: dict[str, typing.Any] = {"prefill": 2e-3, "decode_step": 4e-3, **kw}
    res = _generate_result(**args)
    res.phases["generate"].status = "ok"  # whatever the file claims
    res.status = "ok"
    out = recheck(res, "lie.json")
    ph = out.phases["generate"]
    assert ph.status == "invalid", case
    assert ph.invalid_reason is not None and reason in ph.invalid_reason and "\n" not in ph.invalid_reason


def _ddp_result(
    device: str, world: int, step_s: float, single_s: list[float], gpus: int = 2, **lie: float
) -> JobResult:
    """A DDP train result over `world` devices (per-device batch 1 x 128), its scaling record
    derived honestly, then overwritten by `lie`."""
    spec = BenchSpec(model="gpt2", batch=1, seq=128, repeats=5, phases=("train",), world_size=world)
    machine = syn.machine("lab", gpu=H100 if device == "cuda" else None)
    if device == "cuda":
        machine = machine.model_copy(update={"gpus": [machine.gpus[0].model_copy(update={"index": i})
                                                      for i in range(gpus)]})  # fmt: skip
    res = syn.result("ddp", 0, device, {"train": [step_s] * 5}, spec=spec, fingerprint=machine)
    t1 = sorted(single_s)[len(single_s) // 2]
    tokens = spec.batch * spec.seq
    devices = [f"cuda:{i}" for i in range(world)] if device == "cuda" else ["cpu"] * world
    sc = Scaling(world_size=world, backend="nccl" if device == "cuda" else "gloo", devices=devices,
                 per_device_batch=1, step_s=step_s, tokens_per_s=world * tokens / step_s,
                 single_device_step_s=t1, single_device_times_s=single_s, single_device_tokens_per_s=tokens / t1,
                 efficiency=t1 / step_s, throughput_speedup=world * t1 / step_s)  # fmt: skip
    res.phases["train"].scaling = sc.model_copy(update=lie)
    return res


def test_an_honest_ddp_record_is_re_derived_to_itself() -> None:
    res = _ddp_result("cuda", 2, 0.05, [0.045] * 5)
    out = recheck(res, "ddp.json")
    sc = out.phases["train"].scaling
    assert sc is not None and sc.efficiency == pytest.approx(0.9) and sc.throughput_speedup == pytest.approx(1.8)
    assert out.phases["train"].status != "invalid"


def test_written_efficiency_and_speedup_are_replaced_by_the_raw_times() -> None:
    """The issue's first lie: efficiency 50 and speedup 100 written over honest times."""
    out = recheck(_ddp_result("cuda", 2, 0.05, [0.045] * 5, efficiency=50.0, throughput_speedup=100.0), "x.json")
    sc = out.phases["train"].scaling
    assert sc is not None and sc.efficiency == pytest.approx(0.9) and sc.throughput_speedup == pytest.approx(1.8)


@pytest.mark.parametrize(
    ("case", "args", "reason"),
    [
        ("superlinear: one device 1.9x slower than the group's step", ("cuda", 2, 0.05, [0.095] * 5),
         f"above {EFFICIENCY_BOUND:g}"),
        ("a 1 ns one-device step", ("cuda", 2, 0.05, [1e-9] * 5), "above one device's peak"),
        ("world size 8 on a machine listing 2 GPUs", ("cuda", 8, 0.05, [0.045] * 5), "lists 2 GPU(s)"),
        ("a CPU DDP one-device step of 1 ns", ("cpu", 2, 0.5, [1e-9] * 5), "above one device's peak"),
    ],
)  # fmt: skip
def test_lying_ddp_records_are_invalid(case: str, args: tuple, reason: str) -> None:  # type: ignore[type-arg]
    out = recheck(_ddp_result(*args), "lie.json")
    ph = out.phases["train"]
    assert ph.status == "invalid", case
    assert ph.invalid_reason is not None and reason in ph.invalid_reason, ph.invalid_reason


def test_a_scaling_record_without_one_device_times_is_dropped_and_unverified() -> None:
    res = _ddp_result("cuda", 2, 0.05, [0.045] * 5, single_device_times_s=[])  # type: ignore[arg-type]
    out = recheck(res, "x.json")
    assert out.phases["train"].scaling is None and out.phases["train"].status == "unverified"


def test_a_world_size_that_is_not_the_specs_is_invalid() -> None:
    res = _ddp_result("cuda", 2, 0.05, [0.045] * 5)
    sc = res.phases["train"].scaling
    assert sc is not None
    res.phases["train"].scaling = sc.model_copy(update={"world_size": 3, "devices": ["cuda:0", "cuda:1", "cuda:2"]})
    out = recheck(res, "x.json")
    assert out.phases["train"].status == "invalid" and "the spec's is 2" in (out.phases["train"].invalid_reason or "")


# -- the table of every field ------------------------------------------------------------------
TREATMENTS = {"re-derived", "checked", "trusted", "replaced"}


def _models(model: type[BaseModel], seen: dict[str, type[BaseModel]]) -> None:
    """Every pydantic model reachable from `model` through its field annotations."""
    if model.__name__ in seen:
        return
    seen[model.__name__] = model
    for f in model.model_fields.values():
        for arg in _flatten(f.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg is not BenchSpec:
                _models(arg, seen)


def _flatten(tp: object) -> list[object]:
    args = typing.get_args(tp)
    return [tp] if not args else [x for a in args for x in _flatten(a)]


def test_every_result_field_is_in_the_import_table() -> None:
    """docs/import.md lists `Model.field | what the importer does`; a new field fails here until listed."""
    seen: dict[str, type[BaseModel]] = {}
    _models(JobResult, seen)
    assert {"PhaseResult", "Generation", "Scaling", "MachineFingerprint", "CpuId", "GpuInfo"} <= set(seen)
    text = (ROOT / "docs" / "import.md").read_text()
    listed = dict(re.findall(r"^\| `(\w+\.\w+)` \| (re-derived|checked|trusted|replaced)\b", text, flags=re.M))
    fields = {f"{name}.{f}" for name, m in seen.items() for f in m.model_fields}
    missing = sorted(fields - set(listed))
    assert not missing, f"fields of a result missing from docs/import.md: {missing}"
    assert not sorted(set(listed) - fields), "the table lists fields the models no longer have"
