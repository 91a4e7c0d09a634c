"""Sweep files: grid expansion, invalid points, memory predictions, nightly keys (no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.errors import SpecError
from farm.nightly.sweep import load_sweep, nightly_run_id, parse_bytes, parse_sweep

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_cross_product_sizes_and_order() -> None:
    s = parse_sweep(
        {
            "name": "g",
            "phases": ["forward"],
            "grid": {"model": ["gpt2-tiny", "gpt2"], "batch": [1, 2, 4], "dtype": ["float32", "bfloat16"]},
        }
    )
    assert len(s.points) == 12 and len(s.specs) == 12 and not s.problems
    combos = {(p.spec.model_name, p.spec.batch, p.spec.dtype) for p in s.points if p.spec}
    assert len(combos) == 12
    assert s.points[0].params == {"model": "gpt2-tiny", "batch": 1, "dtype": "float32"}
    assert s.points[-1].params == {"model": "gpt2", "batch": 4, "dtype": "bfloat16"}
    assert all(p.spec and p.spec.phases == ("forward",) for p in s.points)
    assert s.job_count() == 12


def test_devices_multiply_the_job_count() -> None:
    s = parse_sweep({"devices": ["cpu", "cuda"], "grid": {"batch": [1, 2]}})
    assert len(s.specs) == 2 and s.job_count() == 4


def test_no_grid_is_one_point() -> None:
    s = parse_sweep({"name": "one", "model": "gpt2-tiny"})
    assert len(s.points) == 1 and s.points[0].label() == "(base)"


def test_invalid_points_are_reported_and_skipped() -> None:
    s = parse_sweep({"model": "gpt2-tiny", "grid": {"seq": [512, 2048], "batch": [1, 0]}})
    assert len(s.points) == 4 and len(s.specs) == 1
    errors = [p.error or "" for p in s.skipped]
    assert any("above the model's context" in e for e in errors)
    assert any(e.startswith("batch") for e in errors)
    assert len(s.problems) == 3


def test_strict_refuses_the_sweep() -> None:
    with pytest.raises(SpecError, match="--strict"):
        parse_sweep({"model": "gpt2-tiny", "grid": {"seq": [512, 2048]}}, strict=True)


def test_all_points_invalid_is_refused() -> None:
    with pytest.raises(SpecError, match="no valid point"):
        parse_sweep({"model": "gpt2-tiny", "grid": {"dtype": ["float8", "int4"]}})


def test_points_predicted_not_to_fit_are_skipped() -> None:
    s = parse_sweep(
        {"phases": ["train"], "grid": {"model": ["gpt2-tiny", "gpt2-xl"], "batch": [1, 16]}}, max_memory=4 << 30
    )
    ok = {(p.spec.model_name, p.spec.batch) for p in s.points if p.spec}
    assert ("gpt2-tiny", 1) in ok and ("gpt2-xl", 16) not in ok
    assert all("does not fit" in (p.error or "") for p in s.skipped)
    assert any("max_memory 4.0 GiB" in (p.error or "") for p in s.skipped)


def test_a_known_gpu_tag_drops_only_that_device() -> None:
    s = parse_sweep({"model": "gpt2-large", "batch": 16, "phases": ["train"], "devices": ["cpu", "cuda:t4"]})
    (p,) = s.points
    assert p.spec is not None and p.spec.devices == ("cpu",)
    assert p.dropped and p.dropped[0].startswith("cuda:t4: predicted train peak")


def test_bad_sweep_structure_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"grid\.colour"):
        parse_sweep({"grid": {"colour": ["red"]}})
    with pytest.raises(SpecError, match=r"grid\.batch.*top level"):
        parse_sweep({"batch": 2, "grid": {"batch": [1]}})
    with pytest.raises(SpecError, match=r"grid\.batch.*non-empty list"):
        parse_sweep({"grid": {"batch": 4}})
    with pytest.raises(SpecError, match="name"):
        parse_sweep({"name": "bad name/with slash"})
    with pytest.raises(SpecError, match="above the limit"):
        parse_sweep({"grid": {"seed": list(range(100)), "batch": list(range(1, 100))}})


def test_unknown_top_level_field_is_reported_per_point() -> None:
    with pytest.raises(SpecError, match="unknown field 'colour'"):
        parse_sweep({"colour": "red", "grid": {"batch": [1]}})


def test_parse_bytes() -> None:
    assert parse_bytes("16GiB") == 16 << 30
    assert parse_bytes("80 GB") == 80 * 10**9
    assert parse_bytes(1024) == 1024
    for bad in ("lots", -1, True, "0GB"):
        with pytest.raises(SpecError, match="max_memory"):
            parse_bytes(bad)


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    doc = {"phases": ["forward"], "grid": {"batch": [1, 2]}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "mine.json").write_text(json.dumps({**doc, "name": "from-json", "max_memory": "1GiB"}))
    s = load_sweep(tmp_path / "mine.yaml")
    assert s.name == "mine" and len(s.specs) == 2
    j = load_sweep(tmp_path / "mine.json")
    assert j.name == "from-json" and j.max_memory == 1 << 30
    assert parse_sweep(j.as_document()).as_document() == j.as_document()


def test_example_files_are_valid() -> None:
    s = load_sweep(EXAMPLES / "nightly-gpt2.yaml")
    assert s.name == "nightly-gpt2" and len(s.points) == 8 and not s.skipped
    from farm.spec import load_spec_file, parse_spec

    assert parse_spec(load_spec_file(EXAMPLES / "spec.yaml")).model_name
    smoke = load_sweep(EXAMPLES / "smoke-cpu.yaml")
    assert smoke.name == "smoke-cpu" and smoke.job_count() == 2 and not smoke.problems


def test_nightly_run_id_is_a_stable_key_per_night_or_interval() -> None:
    a = datetime(2026, 11, 28, 2, 0, 5, tzinfo=UTC)
    b = datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC)
    assert nightly_run_id("nightly-gpt2", a) == nightly_run_id("nightly-gpt2", b) == "nightly-gpt2-20261128"
    assert nightly_run_id("nightly-gpt2", datetime(2026, 11, 29, tzinfo=UTC)) == "nightly-gpt2-20261129"
    assert nightly_run_id("s", a, every_s=10) == "s-20261128T020000"
    assert nightly_run_id("s", a.replace(second=9), every_s=10) == "s-20261128T020000"
    assert nightly_run_id("s", a.replace(second=10), every_s=10) == "s-20261128T020010"


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.integers(min_value=-2, max_value=64), min_size=1, max_size=4, unique=True),
    seqs=st.lists(st.integers(min_value=1, max_value=2048), min_size=1, max_size=3, unique=True),
    dtypes=st.lists(st.sampled_from(["float32", "bfloat16", "float16", "float8"]), min_size=1, max_size=4, unique=True),
)
def test_every_grid_point_is_either_a_valid_spec_or_a_reported_skip(
    batches: list[int], seqs: list[int], dtypes: list[str]
) -> None:
    doc = {"model": "gpt2-tiny", "phases": ["forward"], "grid": {"batch": batches, "seq": seqs, "dtype": dtypes}}
    try:
        s = parse_sweep(doc)
    except SpecError as e:
        assert "no valid point" in str(e)  # refused whole, never half-way
        return
    assert len(s.points) == len(batches) * len(seqs) * len(dtypes)
    assert len(s.specs) + len(s.skipped) == len(s.points)
    for p in s.points:
        valid = p.params["batch"] > 0 and p.params["seq"] <= 1024 and p.params["dtype"] != "float8"
        assert p.ok == valid, (p.params, p.error)
        if p.spec is not None:
            assert (p.spec.batch, p.spec.seq, p.spec.dtype) == (p.params["batch"], p.params["seq"], p.params["dtype"])
