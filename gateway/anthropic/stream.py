"""Router chat chunks as the Messages API's named SSE events, relayed unbuffered.

A stream is message_start, then per content block content_block_start, its deltas
(text_delta, or input_json_delta for a tool_use block) and content_block_stop, with one
ping after the first block opens; then message_delta (stop reason, final usage) and
message_stop. A failure after the first byte ends it with an `error` event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import orjson

from gateway.anthropic.response import JSON, stop_reason, tool_use_id, usage_to_json
from gateway.sse import EventStreamResponse, closed
from interlock.router.v1 import router_pb2 as pb
from services.common.anthropic_errors import error_body
from services.common.errors import from_rpc_error

log = logging.getLogger(__name__)
M = TypeVar("M")
Event = tuple[str, JSON]


def frame(event: Event) -> bytes:
    name, payload = event
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class StreamTranslator:
    """Turns the chunks of one router stream (choice 0) into Messages API events."""

    message_id: str
    model: str
    # The prompt as counted before the call; the final usage replaces it in message_delta.
    input_tokens: int
    usage: pb.Usage | None = None
    stop: str | None = None
    started: bool = False
    pinged: bool = False
    blocks: int = 0
    # The open content block's index and whether it is text (else a tool_use block).
    open: int | None = None
    open_is_text: bool = False
    # Tool call index -> its tool_use block's index.
    tools: dict[int, int] = field(default_factory=dict)

    def on_chunk(self, chunk: pb.ChatChunk) -> list[Event]:
        events: list[Event] = []
        if not self.started:
            self.started = True
            events.append(self._message_start(chunk.model or self.model))
        if chunk.HasField("usage"):
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # a Messages request never asks for n > 1
            text = choice.delta.content + choice.delta.refusal
            if text:
                events += self._text(text)
            for call in choice.delta.tool_calls:
                events += self._tool(call)
            if choice.finish_reason:
                self.stop = stop_reason(choice.finish_reason)
        return events

    def finish(self) -> list[Event]:
        """The closing events, once the router's stream has ended."""
        usage = usage_to_json(self.usage or pb.Usage(prompt_tokens=self.input_tokens))
        delta = {"stop_reason": self.stop or "end_turn", "stop_sequence": None}
        return [
            *self._close(),
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            ("message_stop", {"type": "message_stop"}),
        ]

    def _message_start(self, model: str) -> Event:
        message: JSON = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_to_json(pb.Usage(prompt_tokens=self.input_tokens)),
        }
        return "message_start", {"type": "message_start", "message": message}

    def _open(self, block: JSON, *, text: bool) -> list[Event]:
        events = self._close()
        self.open, self.open_is_text = self.blocks, text
        self.blocks += 1
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": self.open, "content_block": block})
        )
        if not self.pinged:
            self.pinged = True
            events.append(("ping", {"type": "ping"}))
        return events

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, index: int, delta: JSON) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}

    def _text(self, text: str) -> list[Event]:
        events = (
            [] if self.open is not None and self.open_is_text else self._open({"type": "text", "text": ""}, text=True)
        )
        assert self.open is not None
        events.append(self._delta(self.open, {"type": "text_delta", "text": text}))
        return events

    def _tool(self, call: pb.ToolCall) -> list[Event]:
        events: list[Event] = []
        index = self.tools.get(call.index)
        if index is None:
            block = {"type": "tool_use", "id": tool_use_id(call.id), "name": call.function.name, "input": {}}
            events += self._open(block, text=False)
            index = self.tools[call.index] = self.blocks - 1
        if call.function.arguments:
            events.append(self._delta(index, {"type": "input_json_delta", "partial_json": call.function.arguments}))
        return events


def relay_events(
    call: grpc.aio.UnaryStreamCall[Any, M],
    first: M,
    rest: AsyncIterator[M],
    render: Callable[[M], list[Event]],
    *,
    finish: Callable[[], list[Event]],
    request_id: str,
    headers: Mapping[str, str],
    on_close: Callable[[], None],
) -> EventStreamResponse:
    """Stream each message's events as soon as it arrives (one write per message), then the
    closing ones; a failure after the first byte ends the stream with an `error` event."""

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b"".join(map(frame, render(first)))
            async for message in rest:
                events = render(message)
                if events:
                    yield b"".join(map(frame, events))
            yield b"".join(map(frame, finish()))
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            log.warning("stream %s failed after its first byte: %s", request_id, error.message)
            yield frame(("error", error_body(error, request_id)))

    return EventStreamResponse(body(), headers=headers, on_close=lambda: closed(call, on_close))
