"""Evaluator specs: one validator for the catalog YAML (a model's `evaluators:`) and a
chat request's `evaluate` list, so both accept exactly the same shapes.

A spec is a mapping with `type` (json, json_schema, regex, length, refusal, judge),
an optional `name` (defaults to the type) and `sample_rate` (0..1, default 1.0), and
the options of its type: json_schema `schema` (an object), regex `pattern`, length
`min_chars` / `max_chars`, judge `model`, `rubric` and `pass_threshold` (default 0.5).
Problems raise EvaluatorSpecError with the path of the offending key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import jsonschema
import orjson
import regex

from interlock.catalog.v1 import catalog_pb2 as cpb

KINDS: Final = ("json", "json_schema", "regex", "length", "refusal", "judge")
_COMMON_KEYS: Final = ("type", "name", "sample_rate")
_KIND_KEYS: Final = {
    "json": (),
    "json_schema": ("schema",),
    "regex": ("pattern",),
    "length": ("min_chars", "max_chars"),
    "refusal": (),
    "judge": ("model", "rubric", "pass_threshold"),
}
_INT32_MAX = 2**31 - 1
# Bounds on a request's own evaluators: they run in the router for every sampled request.
MAX_PER_REQUEST = 8
MAX_TEXT_CHARS = 20_000


class EvaluatorSpecError(ValueError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _number(node: Mapping[str, Any], key: str, path: str, default: float) -> float:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EvaluatorSpecError(f"{path}.{key}", "must be a number")
    if not 0.0 <= value <= 1.0:
        raise EvaluatorSpecError(f"{path}.{key}", f"must be between 0 and 1 (got {value})")
    return float(value)


def _count(node: Mapping[str, Any], key: str, path: str) -> int:
    value = node.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT32_MAX:
        raise EvaluatorSpecError(f"{path}.{key}", "must be a non-negative integer")
    return value


def _text(node: Mapping[str, Any], key: str, path: str, *, required: bool) -> str:
    value = node.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        problem = "is required (a non-empty string)" if value is None else "must be a non-empty string"
        raise EvaluatorSpecError(f"{path}.{key}", problem)
    if len(value) > MAX_TEXT_CHARS:
        raise EvaluatorSpecError(f"{path}.{key}", f"must be at most {MAX_TEXT_CHARS} characters")
    return value


def parse_evaluator(raw: object, path: str) -> cpb.Evaluator:
    """One spec as a catalog Evaluator message; raises EvaluatorSpecError."""
    if not isinstance(raw, Mapping):
        raise EvaluatorSpecError(path, "must be an object")
    kind = raw.get("type")
    if kind not in KINDS:
        raise EvaluatorSpecError(f"{path}.type", f"must be one of {', '.join(KINDS)}")
    allowed = (*_COMMON_KEYS, *_KIND_KEYS[kind])
    for key in raw:
        if key not in allowed:
            raise EvaluatorSpecError(
                f"{path}.{key}", f"is not a key of a {kind} evaluator (expected: {', '.join(allowed)})"
            )
    spec = cpb.Evaluator(
        kind=kind,
        name=_text(raw, "name", path, required=False) or kind,
        sample_rate=_number(raw, "sample_rate", path, 1.0),
    )
    if kind == "json_schema":
        schema = raw.get("schema")
        if not isinstance(schema, Mapping):
            raise EvaluatorSpecError(f"{path}.schema", "is required (a JSON Schema object)")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise EvaluatorSpecError(f"{path}.schema", f"is not a valid JSON Schema: {exc.message}") from exc
        spec.schema_json = orjson.dumps(schema).decode()
    elif kind == "regex":
        spec.pattern = _text(raw, "pattern", path, required=True)
        try:
            regex.compile(spec.pattern)  # the engine the evaluator runs it with
        except regex.error as exc:
            raise EvaluatorSpecError(f"{path}.pattern", f"is not a valid regular expression: {exc}") from exc
    elif kind == "length":
        spec.min_chars = _count(raw, "min_chars", path)
        spec.max_chars = _count(raw, "max_chars", path)
        if not spec.min_chars and not spec.max_chars:
            raise EvaluatorSpecError(path, "a length evaluator needs min_chars or max_chars")
        if spec.max_chars and spec.min_chars > spec.max_chars:
            raise EvaluatorSpecError(f"{path}.max_chars", "must not be below min_chars")
    elif kind == "judge":
        spec.judge_model = _text(raw, "model", path, required=True)
        spec.rubric = _text(raw, "rubric", path, required=True)
        spec.pass_threshold = _number(raw, "pass_threshold", path, 0.5)
    return spec


def parse_evaluators(raw: object, path: str, *, limit: int | None = None) -> list[cpb.Evaluator]:
    """A list of specs; names must be unique within it."""
    if not isinstance(raw, list):
        raise EvaluatorSpecError(path, "must be a list")
    if limit is not None and len(raw) > limit:
        raise EvaluatorSpecError(path, f"may hold at most {limit} evaluators")
    specs = [parse_evaluator(item, f"{path}[{i}]") for i, item in enumerate(raw)]
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise EvaluatorSpecError(f"{path}[{i}].name", f"duplicate evaluator name {name!r}")
    return specs
