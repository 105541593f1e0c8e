"""Envoy's own answers (no route, body too large, upstream down, bad transcoding
input) rewritten into the public error shape, as the edge would have written them.

Only local replies pass through local_reply_config, so the edge's and the
services' answers are never touched. The ratelimit service's 429 comes with its
own body already in the shape, Anthropic's on the Messages API
(services/ratelimit/envoy.py), so no mapper matches 429 and that body passes
through. On the Messages API's paths the other replies are in Anthropic's error
shape too, as the edge writes them there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common import anthropic_errors
from services.common.errors import (
    InterlockError,
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
    ServerError,
    UpstreamError,
    error_body,
)

REQUEST_ID = "%REQ(X-REQUEST-ID)%"
# What the edge says when a service cannot be reached (services.common.errors.from_rpc_error).
UNAVAILABLE = "a gateway service is unavailable"


@dataclass(frozen=True)
class Reply:
    status: int
    error: InterlockError


def replies(max_body_bytes: int) -> list[Reply]:
    return [
        Reply(400, InvalidRequestError("%LOCAL_REPLY_BODY%", code="invalid_request")),
        Reply(404, NotFoundError("Unknown request URL: %REQ(:METHOD)% %REQ(:PATH)%.", code="unknown_url")),
        Reply(405, InvalidRequestError("%LOCAL_REPLY_BODY%", code="method_not_allowed", http_status=405)),
        Reply(
            408, InvalidRequestError("The request was not received in time.", code="request_timeout", http_status=408)
        ),
        Reply(413, RequestTooLargeError(f"Request body is larger than the limit of {max_body_bytes} bytes.")),
        Reply(
            431, InvalidRequestError("The request headers are too large.", code="headers_too_large", http_status=431)
        ),
        Reply(500, ServerError("internal error")),
        Reply(502, UpstreamError(UNAVAILABLE, code="bad_gateway", http_status=502)),
        Reply(503, UpstreamError(UNAVAILABLE, code="service_unavailable", http_status=503)),
        Reply(504, UpstreamError(UNAVAILABLE, code="timeout", http_status=504)),
    ]


def _status_filter(status: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": status, "runtime_key": f"local_reply.status_{status}"},
            }
        }
    }


# Paths whose clients read Anthropic's error shape (services.common.anthropic_errors.serves).
ANTHROPIC_PREFIX = "/v1/messages"


def _mapper(reply: Reply) -> dict[str, Any]:
    body = error_body(reply.error, REQUEST_ID)
    return {
        "filter": _status_filter(reply.status),
        "body_format_override": {"json_format": body, "content_type": "application/json"},
    }


def _anthropic_mapper(reply: Reply) -> dict[str, Any]:
    on_messages_api = {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": ANTHROPIC_PREFIX}}}}
    return {
        "filter": {"and_filter": {"filters": [_status_filter(reply.status), on_messages_api]}},
        "body_format_override": {
            "json_format": anthropic_errors.error_body(reply.error, REQUEST_ID),
            "content_type": "application/json",
        },
    }


def local_reply_config(max_body_bytes: int) -> dict[str, Any]:
    # The first mapper that matches wins: the Messages API's before the general ones.
    everything = replies(max_body_bytes)
    return {"mappers": [*map(_anthropic_mapper, everything), *map(_mapper, everything)]}
