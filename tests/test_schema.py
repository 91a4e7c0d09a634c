"""`farm schema`: the committed JSON Schemas equal what the models produce, and real documents validate."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from farm.cli.main import app
from farm.cli.schema import schema_doc, schema_text
from farm.results.synthetic import result

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", ["spec", "result"])
def test_committed_schema_matches_the_models(kind: str) -> None:
    committed = (ROOT / "schema" / f"{kind}.schema.json").read_text()
    assert committed == schema_text(kind), f"schema/{kind}.schema.json is stale: run `farm schema {kind} -o ...`"


@pytest.mark.parametrize("kind", ["spec", "result"])
def test_cli_prints_the_schema(kind: str) -> None:
    res = CliRunner().invoke(app, ["schema", kind])
    assert res.exit_code == 0 and json.loads(res.stdout) == schema_doc(kind)


def test_documents_validate_against_their_schemas() -> None:
    jsonschema.Draft202012Validator.check_schema(schema_doc("spec"))
    spec_schema = jsonschema.Draft202012Validator(schema_doc("spec"))
    for p in sorted((ROOT / "examples").glob("*.yaml")):
        doc = yaml.safe_load(p.read_text())
        if isinstance(doc, dict) and "grid" not in doc:  # sweeps have their own fields
            spec_schema.validate(doc)
    assert list(spec_schema.iter_errors({"model": "gpt2", "batch": 0})), "batch 0 must not validate"
    result_schema = jsonschema.Draft202012Validator(schema_doc("result"))
    result_schema.validate(json.loads(result("r1", 0, "cpu", {"forward": [0.1, 0.11, 0.1]}).model_dump_json()))


def test_bad_kind_is_bad_input() -> None:
    res = CliRunner().invoke(app, ["schema", "sweep"])
    assert res.exit_code == 2
