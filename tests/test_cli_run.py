"""`farm run` through the CLI: the JSON and table output, and every bad input refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import farm.engine.runner
from farm.cli.main import app

runner = CliRunner()

TINY_FAST = ["--model", "gpt2-tiny", "--batch", "1", "--seq", "32", "--repeats", "1", "--warmup", "0"]


@pytest.fixture()
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Replace `run_job` so that a test sees whether anything would have run."""
    calls: list[object] = []

    def forbidden(job: object, **kw: object) -> None:
        calls.append(job)
        raise AssertionError("a job ran despite bad input")

    monkeypatch.setattr(farm.engine.runner, "run_job", forbidden)
    return calls


def _files(tmp_path: Path) -> dict[str, Path]:
    texts = {
        "malformed.yaml": "model: gpt2-tiny\nbatch: [1\n",
        "malformed.json": '{"model": "gpt2-tiny", ',
        "types.yaml": "model: gpt2-tiny\nbatch: eight\n",
        "bool.yaml": "model: gpt2-tiny\nrepeats: true\n",
        "phases-type.yaml": "model: gpt2-tiny\nphases: 5\n",
        "unknown.yaml": "model: gpt2-tiny\nbatchsize: 2\n",
        "unknown-shape.yaml": "model: {n_layer: 2, n_head: 2, n_embd: 64, dropout: 0.1}\n",
        "list.yaml": "- model\n- gpt2\n",
    }
    out = {}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
        out[name] = tmp_path / name
    return out


BAD_OPTIONS = [
    (["--model", "gpt5"], "model", "unknown preset"),
    (["--model", "gpt2-tiny", "--batch", "0"], "batch", "greater than 0"),
    (["--model", "gpt2-tiny", "--batch", "-2"], "batch", "greater than 0"),
    (["--model", "gpt2-tiny", "--seq", "0"], "seq", "greater than 0"),
    (["--model", "gpt2-tiny", "--repeats", "0"], "repeats", "greater than 0"),
    (["--model", "gpt2-tiny", "--threads", "0"], "threads", "greater than 0"),
    (["--model", "gpt2-tiny", "--threads", "-1"], "threads", "greater than 0"),
    (["--model", "gpt2-tiny", "--seq", "2048"], "seq", "above the model's context (1024"),
    (["--model", "gpt2-tiny", "--devices", "tpu"], "devices", "unknown device 'tpu'"),
    (["--model", "gpt2-tiny", "--devices", "cpu,gpu"], "devices", "unknown device 'gpu'"),
    (["--model", "gpt2-tiny", "--dtype", "float64"], "dtype", "'float32', 'bfloat16' or 'float16'"),
    (["--model", "gpt2-tiny", "--phases", "init,backward"], "phases", "unknown phase 'backward'"),
    (["--model", "gpt2-tiny", "--optimizer", "adam"], "optimizer", "'adamw' or 'sgd'"),
    (["--model", "gpt2-tiny", "--warmup", "-1"], "warmup", "greater than or equal to 0"),
    (["--model", "gpt2-tiny", "--tag", "team"], "tags", "KEY=VALUE"),
]


def _assert_refused(result, field: str, words: str, nothing_runs: list[object]) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "\n" not in err, err  # one line
    assert err.startswith(f"error: {field}: "), err
    assert words in err, err
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert nothing_runs == []


def test_run_offers_the_issue_options() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0
    for opt in ("--model", "--phases", "--devices", "--batch", "--seq", "--repeats", "--warmup", "--dtype"):
        assert opt in result.stdout
    for opt in ("--threads", "--compile", "--seed", "--json", "--checkpoint", "--time-limit"):
        assert opt in result.stdout


@pytest.mark.parametrize(("args", "field", "words"), BAD_OPTIONS)
def test_bad_option(args: list[str], field: str, words: str, nothing_runs: list[object]) -> None:
    _assert_refused(runner.invoke(app, ["run", *args]), field, words, nothing_runs)


@pytest.mark.parametrize(
    ("name", "field", "words"),
    [
        ("missing.yaml", "spec_file", "does not exist"),
        ("malformed.yaml", "spec_file", "not valid YAML/JSON"),
        ("malformed.json", "spec_file", "not valid YAML/JSON"),
        ("list.yaml", "spec_file", "must hold a mapping"),
        ("types.yaml", "batch", "valid integer"),
        ("bool.yaml", "repeats", "integer"),
        ("phases-type.yaml", "phases", "tuple"),
        ("unknown.yaml", "batchsize", "unknown field 'batchsize'"),
        ("unknown-shape.yaml", "model.dropout", "unknown field 'dropout'"),
    ],
)
def test_bad_spec_file(tmp_path: Path, name: str, field: str, words: str, nothing_runs: list[object]) -> None:
    _files(tmp_path)
    result = runner.invoke(app, ["run", str(tmp_path / name)])
    _assert_refused(result, field, words, nothing_runs)


def test_error_text_is_printed_literally(tmp_path: Path, nothing_runs: list[object]) -> None:
    """Brackets in a message (a path, a value) are text, not terminal markup."""
    path = tmp_path / "[draft] spec.yaml"
    result = runner.invoke(app, ["run", str(path)])
    _assert_refused(result, "spec_file", "[draft] spec.yaml", nothing_runs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("devices", ["cpu,cuda", "cuda:0", "cuda:h100"])
def test_cuda_without_cuda(devices: str, nothing_runs: list[object]) -> None:
    result = runner.invoke(app, ["run", *TINY_FAST, "--devices", devices])
    _assert_refused(result, "devices", "no CUDA device", nothing_runs)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps(nothing_runs: list[object]) -> None:
    result = runner.invoke(app, ["run", *TINY_FAST, "--devices", "mps"])
    _assert_refused(result, "devices", "no MPS device", nothing_runs)


def test_job_predicted_not_to_fit(nothing_runs: list[object]) -> None:
    from farm.engine.runner import available_memory
    from farm.flops import predict_peak
    from farm.spec import parse_spec

    if predict_peak(parse_spec({"model": "gpt2-xl", "batch": 64})).total < available_memory(torch.device("cpu")):
        pytest.skip("this machine has the memory gpt2-xl at batch 64 needs")
    result = runner.invoke(app, ["run", "--model", "gpt2-xl", "--batch", "64", "--devices", "cpu"])
    _assert_refused(result, "batch", "is predicted to need", nothing_runs)
    assert "GiB" in result.stderr and "optimizer" in result.stderr and "free" in result.stderr


def test_click_rejects_a_non_number(nothing_runs: list[object]) -> None:
    result = runner.invoke(app, ["run", "--batch", "eight"])
    assert result.exit_code == 2
    assert "batch" in result.stderr and "Traceback" not in result.output
    assert nothing_runs == []


def test_run_json_three_phases() -> None:
    """The issue's acceptance command, on gpt2-tiny at batch 1 x 64 with 2 repeats."""
    args = ["run", "--model", "gpt2-tiny", "--phases", "all", "--devices", "cpu", "--json"]
    result = runner.invoke(app, [*args, "--batch", "1", "--seq", "64", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list) and len(data) == 1
    job = data[0]
    assert job["status"] == "ok" and job["device"] == "cpu"
    assert job["machine"]["hostname"] and job["machine"]["torch_version"]
    assert job["spec"]["batch"] == 1 and job["spec"]["seq"] == 64
    assert list(job["phases"]) == ["init", "forward", "train"]
    for phase in job["phases"].values():
        assert {"median_s", "flops", "achieved_flops", "mfu"} <= set(phase)
        assert phase["median_s"] > 0
        assert all(t > 0 for t in phase["times_s"])
    assert len(job["phases"]["forward"]["times_s"]) == 2
    for name in ("forward", "train"):
        phase = job["phases"][name]
        assert phase["flops"] > 0 and phase["achieved_flops"] > 0
        assert 0 < phase["mfu"] < 1
        # The MFU is against the CPU's theoretical peak, with the measured GEMM roofline beside it.
        assert phase["peak_source"].startswith("theoretical:")
        assert phase["roofline_flops"] > 0 and phase["roofline_source"].startswith("measured:")
    assert job["phases"]["train"]["flops"] == 3 * job["phases"]["forward"]["flops"]


def test_run_table_from_a_spec_file_with_overrides(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: gpt2-tiny\nbatch: 4\nseq: 32\nphases: [forward]\nrepeats: 1\nwarmup: 0\n")
    result = runner.invoke(app, ["run", str(spec), "--batch", "1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "gpt2-tiny, batch 1 x seq 32, float32" in out  # the option overrode the file
    assert "forward" in out and "MFU" in out and "ok" in out
    assert "train" not in out
    assert "forward.transfer_s=" in out


def test_a_failed_job_exits_1_with_its_result() -> None:
    result = runner.invoke(app, ["run", *TINY_FAST, "--time-limit", "0.000001", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data[0]["status"] == "timeout" and "time limit" in data[0]["error"]


@pytest.mark.parametrize("key", ["a\nb", "\x1b[2Jclear", "tab\there"])
def test_control_characters_in_a_spec_are_shown_escaped(tmp_path: Path, key: str, nothing_runs: list[object]) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({key: 1}))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert "\n" not in err and "\x1b" not in err and "\t" not in err
    assert repr(key)[1:-1] in err  # shown, escaped
    assert nothing_runs == []


def test_run_repeats_auto_through_the_cli() -> None:
    """`--repeats auto`: repeats until the median's CI is within 2% (or the budget/max), and says which."""
    args = ["run", "--model", "gpt2-tiny", "--phases", "forward", "--devices", "cpu", "--json"]
    result = runner.invoke(app, [*args, "--batch", "1", "--seq", "16", "--repeats", "auto", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)[0]
    assert job["spec"]["repeats"] == "auto"
    fwd = job["phases"]["forward"]
    assert fwd["repeats_stop"] in ("target", "budget", "max")
    assert len(fwd["times_s"]) >= 5  # the minimum before any stop
    if fwd["repeats_stop"] == "target":
        st = fwd["stats"]
        assert (st["ci_high_s"] - st["ci_low_s"]) / 2 <= 0.02 * st["median_s"] * 1.0001
    bad = runner.invoke(app, [*args, "--repeats", "sometimes"])
    assert bad.exit_code == 2
