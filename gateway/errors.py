"""The public error shape, and the handlers that render every failure in it."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from services.common import anthropic_errors
from services.common.errors import (
    InterlockError,
    InvalidRequestError,
    NotFoundError,
    from_rpc_error,
)

log = logging.getLogger(__name__)


def error_response(error: InterlockError, request_id: str, path: str = "") -> Response:
    """The error in the public shape, or in Anthropic's on the Messages API's paths."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if anthropic_errors.serves(path):
        headers["request-id"] = request_id  # where Anthropic's SDKs look for it
    return Response(
        orjson.dumps(anthropic_errors.error_body_for(path, error, request_id)),
        status_code=error.http_status,
        media_type="application/json",
        headers=headers,
    )


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


async def on_interlock_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InterlockError)
    return error_response(exc, request_id_of(request), request.url.path)


async def on_rpc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, grpc.RpcError)
    return error_response(from_rpc_error(exc), request_id_of(request), request.url.path)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: InterlockError
    if exc.status_code == 404:
        error = NotFoundError(f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url")
    elif exc.status_code == 405:
        error = InvalidRequestError(
            f"Method {request.method} is not allowed on {request.url.path}.", code="method_not_allowed", http_status=405
        )
    else:
        error = InvalidRequestError(str(exc.detail), http_status=exc.status_code)
    return error_response(error, request_id_of(request), request.url.path)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    InterlockError: on_interlock_error,
    grpc.RpcError: on_rpc_error,
    HTTPException: on_http_exception,
}
