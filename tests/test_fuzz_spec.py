"""Property-based fuzzing (hypothesis) of specs, spec files and `farm run` options.

Invalid input never ends in a traceback: the library raises `SpecError` (naming the field), the
CLI exits 2 with one line on stderr. Strings that end up in Redis keys, queue names or file
names (run and job ids, tags, device tags) only ever use a safe character set.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from farm.cli.main import app
from farm.cli.options import build_spec
from farm.errors import SpecError
from farm.spec import BenchSpec, Job, parse_device_tag, parse_spec, queue_for

# Characters that may appear in anything the farm turns into a key, a queue name or a file name.
SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
SAFE_TAG = re.compile(r"^[a-z0-9_.:-]+$")

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)

# Tallies printed at the end of the session (pytest -s) for the closing figures.
TALLY: Counter[str] = Counter()

FIELDS = list(BenchSpec.model_fields)
# Control characters in names echoed back are covered apart (test_control_characters_not_echoed).
printable_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40)
nasty_text = st.one_of(
    printable_text,
    st.sampled_from(
        [
            "",
            " ",
            "../../etc/passwd",
            "a/b",
            "cpu;rm -rf /",
            "cuda:*",
            "cuda:H100",
            "cuda:h100 ",
            "cpu:box 7",
            "farm:result:x",
            "${HOME}",
            "'; DROP TABLE",
            "é",
            "cuda:" + "a" * 80,
            "gpt2-xxl",
            "all,init",
            "train,bogus",
            "nan",
            "-1",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4), max_leaves=8
)
# A mapping that looks like a spec: mostly real field names with wild values, sometimes unknown keys.
spec_dicts = st.dictionaries(st.sampled_from(FIELDS) | nasty_text, values, max_size=6)


def _check_accepted(spec: BenchSpec) -> None:
    """What a valid spec lets through into keys and queue names is from the safe set."""
    for tag in spec.devices:
        assert SAFE_TAG.match(tag), tag
        if not tag.endswith("*"):
            assert re.match(r"^[a-z0-9_.-]+$", queue_for(tag)), tag
    for k, v in spec.tags.items():
        assert SAFE_ID.match(k) and SAFE_ID.match(v), (k, v)
    assert re.match(r"^[0-9a-f]{12}$", spec.spec_hash())


def _check_rejected(e: SpecError) -> None:
    assert e.field and isinstance(e.field, str)
    assert e.message and isinstance(e.message, str)


@FUZZ
@given(spec_dicts)
def test_parse_spec_never_crashes(data: dict[str, Any]) -> None:
    """Any mapping either validates or raises SpecError naming a field; nothing else escapes."""
    try:
        spec = parse_spec(data)
    except SpecError as e:
        TALLY["parse_spec rejected"] += 1
        _check_rejected(e)
        return
    TALLY["parse_spec accepted"] += 1
    _check_accepted(spec)


@FUZZ
@given(st.one_of(values, st.binary(max_size=20), st.tuples(st.integers())))
def test_parse_spec_non_mapping(data: Any) -> None:
    assume(not isinstance(data, dict))
    with pytest.raises(SpecError) as ei:
        parse_spec(data)
    TALLY["parse_spec rejected"] += 1
    assert ei.value.field == "spec"


@FUZZ
@given(nasty_text | st.text(alphabet=string.ascii_lowercase + string.digits + ":_-*.", max_size=20))
def test_device_tags_safe(tag: str) -> None:
    """A device tag is accepted only in the safe form; its queue name is then safe too."""
    try:
        kind, narrow = parse_device_tag(tag)
    except SpecError as e:
        TALLY["device tag rejected"] += 1
        _check_rejected(e)
        return
    TALLY["device tag accepted"] += 1
    assert kind in ("cpu", "cuda", "mps")
    assert narrow is None or narrow == "*" or re.match(r"^[a-z0-9][a-z0-9_-]{0,62}$", narrow)
    if narrow != "*":
        assert re.match(r"^[a-z0-9_.-]{1,70}$", queue_for(tag))


@FUZZ
@given(nasty_text | st.text(alphabet=string.printable, max_size=140), nasty_text)
def test_job_and_run_ids_safe(job_id: str, run_id: str) -> None:
    """Job and run ids (they become Redis keys and may become file names) are from the safe set."""
    spec = parse_spec({"model": "gpt2-tiny", "seq": 8, "batch": 1})
    try:
        job = Job(job_id=job_id, run_id=run_id, device="cpu", spec=spec)
    except ValueError:  # pydantic's ValidationError is a ValueError
        TALLY["job/run id rejected"] += 1
        return
    TALLY["job/run id accepted"] += 1
    assert SAFE_ID.match(job.job_id) and SAFE_ID.match(job.run_id)
    assert "/" not in job.job_id and ":" not in job.job_id


@FUZZ
@given(st.dictionaries(nasty_text, nasty_text, min_size=1, max_size=3))
def test_tags_safe(tags: dict[str, str]) -> None:
    try:
        spec = parse_spec({"model": "gpt2-tiny", "seq": 8, "tags": tags})
    except SpecError as e:
        TALLY["tags rejected"] += 1
        assert e.field.startswith("tags")
        return
    TALLY["tags accepted"] += 1
    _check_accepted(spec)


# -- the CLI -------------------------------------------------------------------------------------

runner = CliRunner()

opt_values = st.one_of(nasty_text, st.integers(min_value=-(2**40), max_value=2**40).map(str), st.just("0"))
CLI_OPTIONS = [
    "--model",
    "--phases",
    "--devices",
    "--batch",
    "--seq",
    "--repeats",
    "--warmup",
    "--dtype",
    "--precision-mode",
    "--matmul-precision",
    "--threads",
    "--optimizer",
    "--seed",
    "--time-limit",
    "--tag",
]
cli_args = st.lists(st.tuples(st.sampled_from(CLI_OPTIONS), opt_values), min_size=1, max_size=5)


def _options(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The keyword options `build_spec` gets for these CLI pairs, or None if click would refuse a type."""
    ints = {"--batch", "--seq", "--repeats", "--warmup", "--threads", "--seed"}
    # click keeps the last value of an option given twice and converts only that one.
    last = {opt: val for opt, val in pairs if opt != "--tag"}
    pairs = [p for p in pairs if p[0] == "--tag"] + list(last.items())
    out: dict[str, Any] = {}
    for opt, val in pairs:
        key = opt.removeprefix("--").replace("-", "_")
        if opt in ints:
            out[key] = int(val)
        elif opt == "--time-limit":
            out[key] = float(val)
        elif opt == "--tag":
            out.setdefault("tag", []).append(val)
        else:
            out[key] = val
    return out


def assert_clean_failure(result: Any, *, one_line: bool) -> None:
    """Exit 2, no traceback; a farm-level refusal is one `error:` line on stderr."""
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text, text
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    if one_line:
        lines = [ln for ln in result.stderr.split("\n") if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


@FUZZ
@given(cli_args)
def test_farm_run_bad_options(pairs: list[tuple[str, str]]) -> None:
    """Bad `farm run` options: exit 2, one line, nothing run. (Valid combinations are skipped.)"""
    argv = [x for p in pairs for x in p]
    try:
        opts = _options(pairs)
    except ValueError:
        # click refuses the type itself (usage error on stderr, exit 2).
        result = runner.invoke(app, ["run", *argv])
        TALLY["cli type rejected"] += 1
        assert_clean_failure(result, one_line=True)
        return
    try:
        build_spec(None, **opts)
    except SpecError:
        pass
    else:
        assume(False)  # a valid spec would really run a benchmark
    result = runner.invoke(app, ["run", *argv])
    TALLY["cli spec rejected"] += 1
    # An integer click accepts may still be out of range for pydantic: a one-line farm error.
    assert_clean_failure(result, one_line=True)


def _dump(data: Any, fmt: str) -> str:
    return json.dumps(data, default=str) if fmt == "json" else yaml.safe_dump(data, allow_unicode=True)


@FUZZ
@given(
    st.one_of(
        spec_dicts.map(lambda d: ("yaml", d)),
        spec_dicts.map(lambda d: ("json", d)),
        st.text(max_size=200).map(lambda t: ("raw", t)),  # YAML parse errors are quoted by the loader
        st.binary(max_size=100).map(lambda b: ("bin", b)),
    )
)
def test_farm_run_bad_spec_files(tmp_path_factory: pytest.TempPathFactory, case: tuple[str, Any]) -> None:
    """A bad spec file (bad fields, bad YAML/JSON, not a mapping, binary junk): exit 2 and one line."""
    fmt, data = case
    d = tmp_path_factory.mktemp("spec")
    if fmt == "bin":
        path = d / "spec.yaml"
        path.write_bytes(data)
    elif fmt == "raw":
        path = d / "spec.yaml"
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    else:
        try:
            text = _dump(data, fmt)
        except (ValueError, yaml.YAMLError):
            assume(False)
        path = d / f"spec.{fmt}"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        build_spec(path)
    except SpecError:
        pass
    else:
        assume(False)  # a valid file would really run
    result = runner.invoke(app, ["run", str(path)])
    TALLY["spec file rejected"] += 1
    assert_clean_failure(result, one_line=True)


@pytest.mark.parametrize("data", [{"a\nb": 1}, {"\x1b[2Jclear": 1}, {"tags": {"a\nb": "c"}}])
def test_control_characters_not_echoed(tmp_path: Path, data: dict[str, Any]) -> None:
    """A newline or an ESC sequence in a spec file's key is shown escaped: one line, no terminal escape."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["run", str(path)])
    assert_clean_failure(result, one_line=True)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.stderr), repr(result.stderr)


def test_farm_run_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert_clean_failure(result, one_line=True)
    assert "nope.yaml" in result.stderr


@pytest.fixture(autouse=True, scope="module")
def _print_tally() -> Any:
    yield
    rejected = sum(v for k, v in TALLY.items() if "rejected" in k)
    print("\nfuzz tally:", dict(sorted(TALLY.items())), "rejected total:", rejected)
