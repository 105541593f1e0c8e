"""Pure ASGI middleware: request ids, rate-limit headers and the last-resort
error handler, so every response carries X-Request-Id and the error shape;
and the HTTP metrics, measured outside all of that."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from services.common import anthropic_errors
from services.common.errors import ServerError

log = logging.getLogger(__name__)
# Accept a caller's request id only when it is short and plain, so logs stay clean.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
OVERHEAD_HEADER = b"x-interlock-overhead-ms"


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _CLIENT_ID.match(incoming) else "req_" + uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(state.get("ratelimit_headers", ()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error on %s %s (%s)", scope.get("method"), scope.get("path"), request_id)
            if started:
                raise  # too late for a clean answer; the server closes the connection
            error = ServerError("The server had an error while processing your request.")
            # The Messages API's clients read Anthropic's shape, even for our own failures.
            body = orjson.dumps(anthropic_errors.error_body_for(scope.get("path", ""), error, request_id))
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts and times every HTTP request by route template, and for streams the
    time to the first body chunk. Outermost, so it sees the status actually sent.
    A response the router had a part in carries X-Interlock-Overhead-Ms: the edge's
    time until the response started minus the router's wait on providers until then."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before answering, the server answers 500
        streaming = False
        ttft: float | None = None

        with metrics.exchange() as seen:

            async def observing_send(message: Message) -> None:
                nonlocal status, streaming, ttft
                if message["type"] == "http.response.start":
                    status = message["status"]
                    streaming = any(
                        key == b"content-type" and value.startswith(b"text/event-stream")
                        for key, value in message.get("headers", ())
                    )
                    overhead = seen.overhead_ms(time.perf_counter() - started)
                    if overhead is not None:
                        message["headers"] = [*message.get("headers", ()), (OVERHEAD_HEADER, overhead)]
                elif streaming and ttft is None and message.get("body"):
                    ttft = time.perf_counter() - started
                await send(message)

            try:
                await self.app(scope, receive, observing_send)
            finally:
                elapsed = time.perf_counter() - started
                metrics.observe(metrics.route_of(scope), scope["method"], status, elapsed, ttft, seen)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
