"""The one error hierarchy of Interlock and its mapping to gRPC and HTTP.

Services raise these; an interceptor turns them into a gRPC status carrying
a google.rpc.ErrorInfo, and the edge turns that status back into the public
error shape. Nothing else sets status codes by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from services.common.rpc import ERROR_BODY_KEY, ERROR_STATUS_KEY

ERROR_DOMAIN = "interlock.dev"
_DETAILS_KEY = "grpc-status-details-bin"


class ConfigError(ValueError):
    """A setting or configuration file is invalid; the process refuses to start."""


class InterlockError(Exception):
    """An error with a public meaning: HTTP status, type, code and param."""

    http_status = 500
    error_type = "server_error"
    code = "internal_error"
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.param = param
        self.retry_after = retry_after


class InvalidRequestError(InterlockError):
    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class AuthenticationError(InterlockError):
    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(InterlockError):
    http_status = 403
    error_type = "permission_error"
    code = "permission_denied"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class NotFoundError(InterlockError):
    http_status = 404
    error_type = "not_found_error"
    code = "not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class RequestTooLargeError(InterlockError):
    http_status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class RateLimitError(InterlockError):
    http_status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UpstreamError(InterlockError):
    """The provider failed or could not be reached: 502, 503 or 504."""

    http_status = 502
    error_type = "upstream_error"
    code = "upstream_error"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ServerError(InterlockError):
    pass


class LedgerUnavailableError(InterlockError):
    """The ledger's database cannot be reached right now; the call may be retried later.

    UNAVAILABLE tells producers to keep their spooled events and send them again.
    """

    http_status = 503
    code = "ledger_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE


def error_body(error: InterlockError, request_id: str) -> dict[str, Any]:
    """The public error shape every HTTP answer (the edge's, Envoy's 429) uses."""
    return {
        "error": {"type": error.error_type, "message": error.message, "param": error.param, "code": error.code},
        "request_id": request_id,
        "status": error.http_status,
    }


# Metadata must stay well under the peers' header limits (8 KiB by default in gRPC).
_TRAILER_MESSAGE_CHARS = 2000


def rest_trailers(error: InterlockError, request_id: str) -> tuple[tuple[str, str], ...]:
    """The error body and status as plain trailers (services.common.rpc.ERROR_BODY_KEY),
    ASCII-only JSON since metadata values are printable ASCII."""
    body = error_body(error, request_id)
    if len(error.message) > _TRAILER_MESSAGE_CHARS:
        body["error"]["message"] = error.message[:_TRAILER_MESSAGE_CHARS] + "..."
    text = json.dumps(body, ensure_ascii=True, separators=(",", ":"))
    return ((ERROR_BODY_KEY, text), (ERROR_STATUS_KEY, str(error.http_status)))


def _all_subclasses(cls: type[InterlockError]) -> list[type[InterlockError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


# Every domain error by class name, so a peer rebuilds exactly the class that was raised.
_BY_NAME: dict[str, type[InterlockError]] = {cls.__name__: cls for cls in _all_subclasses(InterlockError)}

# Used when a status arrives without ErrorInfo (a transport failure, a peer
# that is not ours): what the client is told in each case.
_FALLBACK: Mapping[grpc.StatusCode, tuple[type[InterlockError], int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (InvalidRequestError, 400, "invalid_request"),
    grpc.StatusCode.UNAUTHENTICATED: (AuthenticationError, 401, "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (PermissionDeniedError, 403, "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (NotFoundError, 404, "not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (RateLimitError, 429, "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (UpstreamError, 503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (UpstreamError, 504, "timeout"),
}


def to_status(error: InterlockError) -> grpc.Status:
    """Build the gRPC status (with ErrorInfo details) for a domain error."""
    info = error_details_pb2.ErrorInfo(
        reason=error.code,
        domain=ERROR_DOMAIN,
        metadata={
            "type": error.error_type,
            "class": type(error).__name__,
            "http_status": str(error.http_status),
            **({"param": error.param} if error.param else {}),
            **({"retry_after": f"{error.retry_after:.3f}"} if error.retry_after is not None else {}),
        },
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.grpc_code.value[0], message=error.message, details=[detail])
    return _Status(error.grpc_code, error.message, ((_DETAILS_KEY, status.SerializeToString()),))


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, bytes], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def from_rpc_error(exc: grpc.RpcError) -> InterlockError:
    """Rebuild the domain error a peer raised, or a fallback for transport errors."""
    call = cast(grpc.Call, exc)
    code = call.code()
    message: str = call.details() or code.name.lower()
    trailing = cast(Iterable[tuple[str, str | bytes]], call.trailing_metadata() or ())
    for key, value in trailing:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                cls = _BY_NAME.get(info.metadata.get("class", ""), ServerError)
                retry = info.metadata.get("retry_after")
                return cls(
                    status.message,
                    code=info.reason,
                    param=info.metadata.get("param") or None,
                    http_status=int(info.metadata.get("http_status", cls.http_status)),
                    retry_after=float(retry) if retry else None,
                )
    cls, http_status, fallback_code = _FALLBACK.get(code, (ServerError, 500, "internal_error"))
    if cls is UpstreamError or cls is ServerError:
        # Transport details of an internal hop are not the client's business.
        message = "a gateway service is unavailable" if cls is UpstreamError else "internal error"
    return cls(message, code=fallback_code, http_status=http_status)
