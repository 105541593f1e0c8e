"""Relaying a router stream to the client as Server-Sent Events, unbuffered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import grpc
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.common.errors import InterlockError, UpstreamError, error_body, from_rpc_error

log = logging.getLogger(__name__)
M = TypeVar("M")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(Response):
    """Server-Sent Events from an async generator, each chunk sent as it comes.

    Starlette's StreamingResponse wraps every stream in an anyio task group (under ASGI
    spec 2.3, which uvicorn reports); this runs the body in the calling task, with one
    small task that waits for the client to leave and then cancels it. The generator is
    closed however the stream ends, so its `finally` runs; its exceptions propagate."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: Mapping[str, str] | None = None,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.body_iterator = body
        # Runs once the stream is over, whether or not the body ever started (a client that
        # leaves before the first chunk closes a generator whose `finally` never ran).
        self._on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streamer = asyncio.current_task()
        assert streamer is not None
        ended = False  # set before the watcher is cancelled: from then on it cancels nothing
        left = False  # the client left (or receive() failed) and the watcher cancelled us

        async def watch() -> None:
            nonlocal left
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            finally:
                if not ended:
                    left = True
                    streamer.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # The watcher only runs while we wait inside this block, so its cancel lands here.
            if not left or streamer.uncancel():
                raise  # a cancel from outside as well: not ours to swallow
        finally:
            ended = True
            watcher.cancel()
            try:
                await self.body_iterator.aclose()
            finally:
                if self._on_close is not None:
                    self._on_close()
                await _reap(watcher)


async def _reap(task: asyncio.Task[None]) -> None:
    """Wait for a task we cancelled: its CancelledError is not ours, a failure of it is."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


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
) -> EventStreamResponse:
    """Stream first and every later message, rendered; errors after the first
    byte end the stream with an error event in the public shape."""

    async def body() -> AsyncGenerator[bytes, None]:
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

    return EventStreamResponse(body(), on_close=lambda: closed(call, on_close))


def closed(call: grpc.aio.UnaryStreamCall[Any, Any], on_close: Callable[[], None] | None) -> None:
    """The client left, or the stream is done: stop the router and, through it, the provider."""
    call.cancel()
    if on_close is not None:
        on_close()
