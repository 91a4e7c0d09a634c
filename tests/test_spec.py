"""The spec: validation names the field and what is allowed; expansion, tags and hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.errors import SpecError
from farm.spec import (
    ALL_PHASES,
    PRESETS,
    BenchSpec,
    Job,
    ModelShape,
    load_spec_file,
    parse_device_tag,
    parse_spec,
    queue_for,
    resolve_model,
)


def test_defaults_are_the_seed_protocol() -> None:
    spec = parse_spec({})
    assert (spec.model_name, spec.batch, spec.seq, spec.repeats) == ("gpt2", 8, 1024, 5)
    assert spec.phases == ALL_PHASES
    assert spec.devices == ("cpu",)
    assert spec.dtype == "float32"


def test_alias_and_presets() -> None:
    assert resolve_model("gpt2-small") is PRESETS["gpt2"]
    assert parse_spec({"model": "gpt2-small"}).model == "gpt2"
    assert set(PRESETS) == {"gpt2-tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}
    tiny = PRESETS["gpt2-tiny"]
    assert (tiny.vocab_size, tiny.n_layer, tiny.n_embd, tiny.block_size) == (4096, 2, 128, 1024)


def test_custom_shape() -> None:
    spec = parse_spec({"model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128}, "seq": 128})
    assert isinstance(spec.model, ModelShape)
    assert spec.shape.block_size == 128
    assert spec.model_name == "custom"


def test_phases_all_and_order() -> None:
    assert parse_spec({"phases": "all"}).phases == ALL_PHASES
    assert parse_spec({"phases": "train,init,train"}).phases == ("init", "train")
    assert parse_spec({"phases": ["forward"]}).phases == ("forward",)


def test_devices_normalised_and_deduplicated() -> None:
    assert parse_spec({"devices": "CPU, cpu,cuda:h100"}).devices == ("cpu", "cuda:h100")
    assert parse_device_tag("cuda:h100") == ("cuda", "h100")
    assert queue_for("cuda:h100") == "cuda.h100"
    assert queue_for("cpu") == "cpu"
    with pytest.raises(SpecError) as e:
        queue_for("cuda:*")
    assert e.value.field == "devices"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"model": "gpt5"}, "model", ["unknown preset", "gpt2-tiny"]),
        ({"batch": 0}, "batch", ["greater than 0"]),
        ({"batch": -3}, "batch", ["greater than 0"]),
        ({"seq": 0}, "seq", ["greater than 0"]),
        ({"repeats": 0}, "repeats", ["greater than 0"]),
        ({"threads": 0}, "threads", ["greater than 0"]),
        ({"warmup": -1}, "warmup", ["greater than or equal to 0"]),
        ({"seq": 1025}, "seq", ["above the model's context", "1024"]),
        ({"model": "gpt2-tiny", "seq": 4096}, "seq", ["context"]),
        ({"devices": "tpu"}, "devices", ["unknown device", "cpu, cuda, mps"]),
        ({"devices": []}, "devices", ["at least one device"]),
        ({"dtype": "float64"}, "dtype", ["float32", "bfloat16", "float16"]),
        ({"phases": "init,backward"}, "phases", ["unknown phase 'backward'", "init, forward, train"]),
        ({"phases": []}, "phases", ["at least one phase"]),
        ({"batch": "eight"}, "batch", ["valid integer"]),
        ({"batch": 2.5}, "batch", ["valid integer"]),
        ({"batch": True}, "batch", ["integer"]),
        ({"seq": False}, "seq", ["integer"]),
        ({"repeats": None}, "repeats", ["integer"]),
        ({"compile": "maybe"}, "compile", ["boolean"]),
        ({"optimizer": "adam"}, "optimizer", ["adamw", "sgd"]),
        ({"batchsize": 8}, "batchsize", ["unknown field", "batch"]),
        ({"model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "dropout": 0.1}}, "model.dropout", ["unknown field"]),
        ({"model": {"n_layer": 2, "n_head": 3, "n_embd": 64}}, "model", ["multiple of n_head"]),
        ({"model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 16}, "seq": 32}, "seq", ["context"]),
        ({"model": 5}, "model", ["string"]),
        ({"tags": {"team": "a b"}}, "tags", ["A-Z"]),
        ({"time_limit_s": 0}, "time_limit_s", ["greater than 0"]),
    ],
)
def test_bad_input_names_the_field(data: dict, field: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")
    for w in words:
        assert w in e.value.message
    assert "\n" not in str(e.value)


def test_all_inside_a_list_means_all() -> None:
    assert parse_spec({"phases": "all,train"}).phases == ALL_PHASES


def test_spec_is_frozen_and_not_a_mapping() -> None:
    spec = parse_spec({"batch": 2})
    with pytest.raises(Exception):  # noqa: B017  pydantic's ValidationError for a frozen model
        spec.batch = 3  # type: ignore[misc]
    with pytest.raises(SpecError) as e:
        parse_spec(["batch", 2])
    assert e.value.field == "spec"


def test_expand_one_job_per_device() -> None:
    spec = parse_spec({"devices": "cpu,cuda,cuda:h100"})
    jobs = spec.expand(run_id="r1")
    assert [j.device for j in jobs] == ["cpu", "cuda", "cuda:h100"]
    assert [j.queue for j in jobs] == ["cpu", "cuda", "cuda.h100"]
    assert len({j.job_id for j in jobs}) == 3
    assert all(j.run_id == "r1" and j.spec.devices == (j.device,) for j in jobs)
    # A job survives a JSON round trip (as it does through the queue).
    assert Job.model_validate_json(jobs[2].model_dump_json()) == jobs[2]
    with pytest.raises(SpecError):
        parse_spec({"devices": "cuda:*"}).expand()


def test_spec_hash_is_the_workload_not_the_place() -> None:
    a = parse_spec({"batch": 2, "devices": "cpu"})
    b = parse_spec({"batch": 2, "devices": "cuda", "seed": 7, "tags": {"team": "x"}})
    c = parse_spec({"batch": 4})
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
    # A preset and the same shape written out are the same work.
    custom = parse_spec({"model": PRESETS["gpt2"].model_dump(), "batch": 2})
    assert custom.spec_hash() == a.spec_hash()


def test_spec_round_trips_through_json() -> None:
    spec = parse_spec({"model": {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 16}, "seq": 16})
    assert parse_spec(spec.model_dump(mode="json")) == spec
    assert BenchSpec.model_validate_json(spec.model_dump_json()) == spec


def test_load_spec_file_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("model: gpt2-tiny\nbatch: 2\nphases: [init, forward]\n")
    assert parse_spec(load_spec_file(y)).phases == ("init", "forward")
    j = tmp_path / "s.json"
    j.write_text('{"model": "gpt2-tiny", "seq": 64}')
    assert parse_spec(load_spec_file(j)).seq == 64
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_spec_file(empty) == {}


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("missing.yaml", None, "does not exist"),
        ("broken.yaml", "model: gpt2\nbatch: [1\n", "not valid YAML/JSON"),
        ("broken.json", '{"batch": ', "not valid YAML/JSON"),
        ("list.yaml", "- a\n- b\n", "must hold a mapping"),
    ],
)
def test_load_spec_file_errors(tmp_path: Path, name: str, text: str | None, words: str) -> None:
    p = tmp_path / name
    if text is not None:
        p.write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec_file(p)
    assert e.value.field == "spec_file"
    assert words in e.value.message
    assert "\n" not in str(e.value)


def test_precision_mode_auto_is_cast_on_cpu_and_autocast_on_gpus() -> None:
    spec = parse_spec({"dtype": "bfloat16", "devices": "cpu,cuda:h100"})
    cpu_job, gpu_job = spec.expand(run_id="r")
    assert spec.precision_mode == "auto"
    assert cpu_job.spec.mode_for() == "cast" and gpu_job.spec.mode_for() == "autocast"
    assert cpu_job.spec.spec_hash() == gpu_job.spec.spec_hash()  # same work, comparable across devices
    forced = parse_spec({"dtype": "bfloat16", "precision_mode": "autocast"})
    assert forced.mode_for("cpu") == "autocast"


def test_repeats_auto_and_its_fields() -> None:
    spec = parse_spec({"repeats": "auto", "ci_target": 0.01, "repeat_budget_s": 5, "max_repeats": 20})
    assert spec.repeats == "auto" and spec.auto_repeats
    assert (spec.ci_target, spec.repeat_budget_s, spec.max_repeats) == (0.01, 5.0, 20)
    assert parse_spec({"repeats": "AUTO"}).repeats == "auto" and parse_spec({"repeats": "7"}).repeats == 7
    assert BenchSpec.model_validate_json(spec.model_dump_json()) == spec
    bad_cases = [
        ({"repeats": "often"}, "integer or 'auto'"),
        ({"repeats": 1001}, "1000"),
        ({"max_repeats": 1001}, "1000"),
        ({"max_repeats": 2}, "greater than or equal to 5"),
        ({"ci_target": 0}, "greater than 0"),
    ]
    for bad, words in bad_cases:
        with pytest.raises(SpecError) as e:
            parse_spec(bad)
        assert e.value.field == next(iter(bad)) and words in e.value.message


def test_generate_is_selectable_but_not_in_all() -> None:
    spec = parse_spec({"model": "gpt2-tiny", "seq": 64, "phases": "all,generate"})
    assert spec.phases == (*ALL_PHASES, "generate")
    with pytest.raises(SpecError) as e:  # the default seq 1024 leaves no room in GPT-2's context
        parse_spec({"phases": "generate"})
    assert e.value.field == "gen_tokens" and "1024" in e.value.message


def test_fields_added_after_hash_v2_keep_old_hashes() -> None:
    base = parse_spec({"model": "gpt2-tiny", "seq": 64})
    assert (
        parse_spec({"model": "gpt2-tiny", "seq": 64, "gen_tokens": 128, "world_size": 1}).spec_hash()
        == base.spec_hash()
    )
    assert parse_spec({"model": "gpt2-tiny", "seq": 64, "gen_tokens": 32}).spec_hash() != base.spec_hash()
    two = parse_spec({"model": "gpt2-tiny", "seq": 64, "world_size": 2})
    assert two.spec_hash() != base.spec_hash()
    assert two.expand()[0].queue == "cpu.x2" and base.expand()[0].queue == "cpu"
