"""JSON Schemas reduced to the OpenAPI subset that Gemini's `Schema` accepts, no I/O."""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidRequestError

JSON = dict[str, Any]

# Keys of Gemini's `Schema` (an OpenAPI 3.0 subset); anything else is dropped.
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "anyOf",
        "propertyOrdering",
        "default",
    }
)
_FORMATS = {"string": {"enum", "date-time"}, "number": {"float", "double"}, "integer": {"int32", "int64"}}
_MAX_SCHEMA_DEPTH = 32


def _resolve_ref(ref: str, root: JSON) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def clean_schema(schema: Any, root: JSON | None = None, depth: int = 0) -> Any:
    """A JSON Schema reduced to what Gemini's OpenAPI-subset `Schema` accepts.

    Unknown keys such as ``additionalProperties``, ``$schema`` or ``strict`` are dropped, local
    ``$ref``s are inlined, ``oneOf`` becomes ``anyOf``, ``const`` becomes ``enum``, a ``null`` type
    becomes ``nullable``, and string formats other than ``enum``/``date-time`` are dropped: the
    API refuses a schema with any of them.
    """
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    if depth > _MAX_SCHEMA_DEPTH:
        return {}  # a recursive $ref: stop unrolling rather than loop
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve_ref(ref, root)
        if not isinstance(target, dict):
            raise InvalidRequestError(f"JSON Schema reference {ref!r} cannot be resolved", param="tools")
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return clean_schema(merged, root, depth + 1)
    out: JSON = {}
    any_of: list[Any] | None = None
    for key, value in schema.items():
        if key in ("anyOf", "oneOf") and isinstance(value, list):
            any_of = [clean_schema(branch, root, depth + 1) for branch in value]
        elif key == "const":
            out.setdefault("enum", [value])
        elif key not in _SCHEMA_KEYS:
            continue  # additionalProperties, $schema, strict, $defs, examples, ...
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: clean_schema(sub, root, depth + 1) for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = clean_schema(value, root, depth + 1)
        elif key == "type" and isinstance(value, list):
            kinds = [t for t in value if t != "null"]
            if len(kinds) < len(value):
                out["nullable"] = True
            if len(kinds) == 1:
                out["type"] = kinds[0]
            elif kinds:
                any_of = [{"type": t} for t in kinds]
        else:
            out[key] = value
    if any_of is not None:
        branches = [b for b in any_of if not (isinstance(b, dict) and b.get("type") == "null" and len(b) == 1)]
        if len(branches) < len(any_of):
            out["nullable"] = True
        if len(branches) == 1 and isinstance(branches[0], dict):
            out = {**branches[0], **out}
        elif branches:
            out["anyOf"] = branches
    enum = out.get("enum")
    if enum is not None and not (isinstance(enum, list) and all(isinstance(v, str) for v in enum)):
        del out["enum"]  # Gemini enums are strings only
    fmt, kind = out.get("format"), out.get("type")
    if fmt is not None and fmt not in _FORMATS.get(str(kind).lower(), set()):
        del out["format"]
    return out
