"""Bounded reading of outside documents (farm.untrusted): every limit refuses with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.errors import SpecError
from farm.untrusted import MAX_DEPTH, MAX_ITEMS, MAX_STRING, load_document, parse_text

BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
)


def refused(text: str, yaml_allowed: bool) -> str:
    with pytest.raises(SpecError) as e:
        parse_text(text, "spec_file", yaml_allowed=yaml_allowed)
    assert e.value.field.startswith("spec_file")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300
    return msg


def test_yaml_aliases_and_anchors_are_refused() -> None:
    assert "anchors" in refused(BOMB, True)
    assert "aliases" in refused("a: *x\n", True)


@pytest.mark.parametrize("yaml_allowed", [True, False])
def test_deep_nesting_is_refused_not_a_recursion_error(yaml_allowed: bool) -> None:
    assert "deeper than" in refused("[" * 100_000 + "]" * 100_000, yaml_allowed)
    assert "deeper than" in refused("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), yaml_allowed)
    assert parse_text("[" * MAX_DEPTH + "]" * MAX_DEPTH, "f", yaml_allowed=yaml_allowed) is not None


def test_long_strings_and_long_lists_are_refused() -> None:
    assert "characters" in refused('{"name": "' + "x" * (MAX_STRING + 1) + '"}', False)
    assert "entries" in refused("[" + ",".join(["1"] * (MAX_ITEMS + 1)) + "]", False)
    assert "not valid JSON" in refused('{"seed": ' + "1" * 5000 + "}", False)


def test_big_file_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_bytes(b" " * 2048)
    with pytest.raises(SpecError) as e:
        load_document(p, "file", max_bytes=1024)
    assert "2,048 bytes (at most 1,024)" in str(e.value)
    with pytest.raises(SpecError, match="not UTF-8"):
        (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
        load_document(tmp_path / "bin.yaml", "file", max_bytes=1024)
    with pytest.raises(SpecError, match="does not exist"):
        load_document(tmp_path / "nope.yaml", "file", max_bytes=1024)


def test_ordinary_documents_read() -> None:
    assert parse_text("model: gpt2\nbatch: 8\ngrid: {seq: [128, 256]}\n", "f", yaml_allowed=True) == {
        "model": "gpt2",
        "batch": 8,
        "grid": {"seq": [128, 256]},
    }


def test_checkpoint_config_is_bounded(tmp_path: Path) -> None:
    from farm.engine.model import read_hf_config
    from farm.errors import CheckpointError

    (tmp_path / "config.json").write_text('{"n_embd": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(CheckpointError, match="deeper than"):
        read_hf_config(tmp_path)
