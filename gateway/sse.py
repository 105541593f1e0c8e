"""Relaying a router stream to the client as Server-Sent Events, unbuffered."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import orjson
from starlette.responses import StreamingResponse

from services.common.errors import InterlockError, UpstreamError, error_body, from_rpc_error

log = logging.getLogger(__name__)
M = TypeVar("M")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def open_stream(call: grpc.aio.UnaryStreamCall[Any, M]) -> tuple[M, AsyncIterator[M]]:
    """Wait for the first message, so errors before it become plain HTTP errors."""
    messages = aiter(call)
    try:
        first = await anext(messages)
    except StopAsyncIteration:
        raise UpstreamError("The provider sent an empty stream.", code="upstream_empty_stream") from None
    return first, messages


def relay(
    call: grpc.aio.UnaryStreamCall[Any, M],
    first: M,
    rest: AsyncIterator[M],
    render: Callable[[M], dict[str, Any] | None],
    request_id: str,
    *,
    on_close: Callable[[], None] | None = None,
) -> StreamingResponse:
    """Stream first and every later message, rendered; errors after the first
    byte end the stream with an error event in the public shape."""

    async def body() -> AsyncIterator[bytes]:
        try:
            payload = render(first)
            if payload is not None:
                yield event(payload)
            async for message in rest:
                payload = render(message)
                if payload is not None:
                    yield event(payload)
            yield DONE
        except grpc.aio.AioRpcError as exc:
            error: InterlockError = from_rpc_error(exc)
            log.warning("stream %s failed after its first byte: %s", request_id, error.message)
            yield event(error_body(error, request_id))
        finally:
            # The client left (or we are done): stop the router and, through it, the provider.
            call.cancel()
            if on_close is not None:
                on_close()

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)
