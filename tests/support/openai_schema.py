"""Validate response bodies against JSON Schemas taken from OpenAI's OpenAPI spec.

The schemas live in ``tests/fixtures/openai_schemas.json`` (produced by
``tests/fixtures/extract_openai_schemas.py``). Usage::

    from tests.support.openai_schema import validate

    validate("CreateChatCompletionResponse", body)  # AssertionError if invalid
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError, best_match  # type: ignore[import-untyped]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openai_schemas.json"


@functools.cache
def _schemas() -> dict[str, Any]:
    with FIXTURE.open(encoding="utf-8") as fh:
        schemas: dict[str, Any] = json.load(fh)["schemas"]
    Draft202012Validator.check_schema({"$defs": schemas})
    return schemas


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schemas = _schemas()
    if name not in schemas:
        raise KeyError(f"unknown OpenAI schema {name!r}; known: {', '.join(sorted(schemas))}")
    return Draft202012Validator({"$defs": schemas, "$ref": f"#/$defs/{name}"})


def schema_names() -> list[str]:
    """Names of all schemas in the fixture."""
    return sorted(_schemas())


def _where(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate(name: str, instance: object) -> None:
    """Raise AssertionError unless ``instance`` is valid against OpenAI schema ``name``."""
    errors = list(_validator(name).iter_errors(instance))
    if not errors:
        return
    best = best_match(errors)
    more = f" (+{len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    raise AssertionError(f"not a valid {name}: at {_where(best)}: {best.message}{more}")
