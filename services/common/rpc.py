"""gRPC conventions shared by the services, their interceptors and the edge's transcoder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# Initial metadata naming the HTTP status a REST transcoder should answer with instead of
# 200 (grpc-gateway's convention); seed 002's stats answer 201.
HTTP_CODE_KEY = "x-http-code"
# Trailers every error carries beside grpc-status-details-bin: the public error body
# (ASCII JSON) and its HTTP status, for a REST transcoder that cannot read ErrorInfo
# (Envoy's gRPC-JSON transcoder; gateway/envoy/errors.lua answers with them).
ERROR_BODY_KEY = "x-interlock-error"
ERROR_STATUS_KEY = "x-interlock-http-status"
# The request id a caller passes as metadata (the edge, and Envoy for every request).
REQUEST_ID_KEY = "x-request-id"

UnaryBehavior = Callable[..., Awaitable[Any]]
StreamBehavior = Callable[..., AsyncIterator[Any]]


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with its unary-unary or unary-stream behaviour wrapped; what a server
    interceptor returns. None (an unknown method) stays None: grpc answers UNIMPLEMENTED."""
    found: Any = handler
    if found is None:
        return None  # type: ignore[return-value]
    if found.unary_unary is not None:
        return found._replace(unary_unary=unary(found.unary_unary))  # type: ignore[no-any-return]
    if found.unary_stream is not None:
        return found._replace(unary_stream=stream(found.unary_stream))  # type: ignore[no-any-return]
    return found  # type: ignore[no-any-return]
