"""Typed field readers that raise InvalidRequestError naming the field."""

from __future__ import annotations

import math
from typing import Any

import orjson

from services.common.errors import InvalidRequestError

MISSING = "ERR_MISSING_FIELD"
INVALID_TYPE = "ERR_INVALID_TYPE"
INVALID_VALUE = "ERR_INVALID_VALUE"

_TYPE_NAMES = {str: "a string", bool: "a boolean", dict: "an object", list: "an array"}


def missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(f"Missing '{param}' field.", code=MISSING, param=param)


def wrong_type(param: str, expected: str) -> InvalidRequestError:
    return InvalidRequestError(f"'{param}' must be {expected}.", code=INVALID_TYPE, param=param)


def bad_value(param: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"'{param}' {why}.", code=INVALID_VALUE, param=param)


def is_int(value: object) -> bool:
    # bool is an int subclass in Python, but true is not a number on the wire.
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def req_str(body: dict[str, Any], key: str, param: str | None = None) -> str:
    param = param or key
    if key not in body or body[key] is None:
        raise missing(param)
    value = body[key]
    if not isinstance(value, str):
        raise wrong_type(param, "a string")
    if not value:
        raise bad_value(param, "must not be empty")
    return value


def opt_str(body: dict[str, Any], key: str, param: str | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise wrong_type(param or key, "a string")
    return value


def opt_bool(body: dict[str, Any], key: str, param: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise wrong_type(param or key, "a boolean")
    return value


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def opt_int(
    body: dict[str, Any], key: str, *, lo: int = INT64_MIN, hi: int = INT64_MAX, param: str | None = None
) -> int | None:
    """An integer within [lo, hi]; the default bounds are int64's, which every proto field holds."""
    value = body.get(key)
    param = param or key
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
        value = int(value)
    if not is_int(value):
        raise wrong_type(param, "an integer")
    _check_range(param, value, lo, hi)
    return int(value)


def opt_number(
    body: dict[str, Any], key: str, *, lo: float | None = None, hi: float | None = None, param: str | None = None
) -> float | None:
    value = body.get(key)
    param = param or key
    if value is None:
        return None
    if not is_number(value):
        raise wrong_type(param, "a number")
    _check_range(param, value, lo, hi)
    return float(value)


def _check_range(param: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise bad_value(param, f"must be at least {lo}" + (f" and at most {hi}" if hi is not None else ""))
    if hi is not None and value > hi:
        raise bad_value(param, f"must be at most {hi}" + (f" and at least {lo}" if lo is not None else ""))


def opt_object(body: dict[str, Any], key: str, param: str | None = None) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type(param or key, "an object")
    return value


def opt_list(body: dict[str, Any], key: str, param: str | None = None) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise wrong_type(param or key, "an array")
    return value


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def loads(text: str) -> Any:
    return orjson.loads(text)


def json_or_empty(value: object) -> str:
    """JSON text of value, or "" for None so the proto field stays unset."""
    return "" if value is None else dumps(value)
