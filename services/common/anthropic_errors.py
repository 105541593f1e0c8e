"""Anthropic's error shape, for the paths that speak its API (the edge, Envoy's
local replies and the ratelimit service's 429 for Envoy all write it):
{"type": "error", "error": {"type", "message"}, "request_id"}."""

from __future__ import annotations

from typing import Any

from services.common.errors import InterlockError
from services.common.errors import error_body as public_error_body

PATH = "/v1/messages"
# Our statuses keep their meaning; only the type names are Anthropic's.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    # Unavailable for now (a provider, a breaker, ratelimit): worth retrying, as Anthropic's 529.
    503: "overloaded_error",
}


def serves(path: str) -> bool:
    """Whether a request path belongs to the Messages API (its 404s and 405s included)."""
    return path == PATH or path.startswith(PATH + "/")


def error_type(error: InterlockError) -> str:
    status = error.http_status
    if status in _TYPES:
        return _TYPES[status]
    # As Anthropic documents: other 4xx are invalid requests; anything else is the API's fault.
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(error: InterlockError, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type(error), "message": error.message},
        "request_id": request_id,
    }


def error_body_for(path: str, error: InterlockError, request_id: str) -> dict[str, Any]:
    """The error as a request on this path should read it: Anthropic's shape on the
    Messages API, the public shape everywhere else."""
    shape = error_body if serves(path) else public_error_body
    return shape(error, request_id)
