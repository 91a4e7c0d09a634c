"""`farm schema spec|result`: the JSON Schema of a spec file or of a stored result (from the models)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer

from farm.cli.lazy import lazy_module
from farm.cli.output import Output, write
from farm.spec import BenchSpec

if TYPE_CHECKING:
    from farm.results import result
else:
    result = lazy_module("farm.results.result")  # numpy: run on first use (farm.cli.lazy)


class SchemaKind(StrEnum):
    spec = "spec"
    result = "result"


def schema_doc(kind: str) -> dict[str, Any]:
    """The JSON Schema: a spec as files and `farm.api.spec` take it; a result as `farm results --json` prints it."""
    if kind == "spec":
        doc = BenchSpec.model_json_schema(mode="validation")
        doc["title"] = "farm spec"
    else:
        doc = result.JobResult.model_json_schema(mode="serialization")
        doc["title"] = "farm result"
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return doc


def schema_text(kind: str) -> str:
    return json.dumps(schema_doc(kind), indent=2, sort_keys=True) + "\n"


def schema(
    kind: SchemaKind = typer.Argument(..., help="spec (a spec file's fields) or result (a stored result)."),
    output: Output = None,
) -> None:
    """Print the JSON Schema of a spec file or of a stored result (also committed under schema/)."""
    write(schema_text(kind.value), output, "json")
