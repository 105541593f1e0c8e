"""Chat answers and stream chunks as Messages API objects and events (gateway/anthropic/)."""

from __future__ import annotations

import pytest

from gateway.anthropic.response import message_id, message_to_json, usage_to_json
from gateway.anthropic.stream import StreamTranslator, frame
from interlock.router.v1 import router_pb2 as pb
from services.common.anthropic_errors import error_body, error_body_for, serves
from services.common.errors import (
    AuthenticationError,
    InterlockError,
    InvalidRequestError,
    ModelNotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
    UpstreamError,
)


def call(index: int, arguments: str, *, call_id: str = "", name: str = "") -> pb.ToolCall:
    return pb.ToolCall(id=call_id, index=index, function=pb.FunctionCall(name=name, arguments=arguments))


def chunk(
    content: str | None = None,
    calls: list[pb.ToolCall] | None = None,
    finish: pb.FinishReason.ValueType = pb.FINISH_REASON_UNSPECIFIED,
) -> pb.ChatChunk:
    delta = pb.Message(tool_calls=calls or [])
    if content is not None:
        delta.content = content
    return pb.ChatChunk(model="up-1", choices=[pb.ChunkChoice(index=0, delta=delta, finish_reason=finish)])


def test_message_with_text_and_tool_use() -> None:
    response = pb.ChatResponse(
        model="up-1",
        choices=[
            pb.Choice(
                message=pb.Message(
                    content="Let me look.",
                    tool_calls=[
                        call(0, '{"q": "x"}', call_id="call_1", name="lookup"),
                        call(1, "not json", name="broken"),
                    ],
                ),
                finish_reason=pb.FINISH_REASON_TOOL_CALLS,
            )
        ],
        usage=pb.Usage(prompt_tokens=100, completion_tokens=7, cached_tokens=60, cache_write_tokens=10, cost_usd=0.5),
        routing_decision=pb.RoutingDecision(provider="p", model="m", reason="direct"),
    )
    body = message_to_json(response, "msg_1", "requested")
    content = body.pop("content")
    assert content[:2] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}},
    ]
    # A provider's call without an id gets one; arguments that are no object become {}.
    assert content[2]["id"].startswith("toolu_") and content[2]["input"] == {}
    assert body.pop("routing_decision")["provider"] == "p"
    assert body == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "up-1",
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 30,
            "output_tokens": 7,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 60,
            "cost_usd": 0.5,
            "latency_ms": 0,
        },
    }


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        (pb.FINISH_REASON_STOP, "end_turn"),
        (pb.FINISH_REASON_LENGTH, "max_tokens"),
        (pb.FINISH_REASON_TOOL_CALLS, "tool_use"),
        (pb.FINISH_REASON_CONTENT_FILTER, "refusal"),
        (pb.FINISH_REASON_UNSPECIFIED, "end_turn"),
    ],
)
def test_stop_reasons(finish: pb.FinishReason.ValueType, reason: str) -> None:
    response = pb.ChatResponse(choices=[pb.Choice(message=pb.Message(content=""), finish_reason=finish)])
    body = message_to_json(response, "msg_x", "requested")
    assert body["stop_reason"] == reason
    assert body["content"] == [] and body["model"] == "requested"


def test_message_id_keeps_the_request_id() -> None:
    assert message_id("req_abc") == "msg_abc"
    assert message_id("client-given-id") == "msg_client-given-id"


def test_stream_text_then_tools() -> None:
    stream = StreamTranslator("msg_1", "requested", input_tokens=12)
    events = stream.on_chunk(chunk(""))  # the role chunk: nothing to show but the start
    events += stream.on_chunk(chunk("Hel"))
    events += stream.on_chunk(chunk("lo"))
    events += stream.on_chunk(chunk(calls=[call(0, "", call_id="c1", name="a")]))
    events += stream.on_chunk(chunk(calls=[call(0, '{"x":')]))
    events += stream.on_chunk(chunk(calls=[call(0, " 1}")]))
    events += stream.on_chunk(chunk(calls=[call(1, "{}", call_id="c2", name="b")], finish=pb.FINISH_REASON_TOOL_CALLS))
    usage = pb.ChatChunk(usage=pb.Usage(prompt_tokens=13, completion_tokens=9))
    events += stream.on_chunk(usage)
    events += stream.finish()

    assert events[0] == (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "up-1",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage_to_json(pb.Usage(prompt_tokens=12)),
            },
        },
    )
    assert [(name, data.get("index"), data.get("delta") or data.get("content_block")) for name, data in events[1:]] == [
        ("content_block_start", 0, {"type": "text", "text": ""}),
        ("ping", None, None),
        ("content_block_delta", 0, {"type": "text_delta", "text": "Hel"}),
        ("content_block_delta", 0, {"type": "text_delta", "text": "lo"}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "tool_use", "id": "c1", "name": "a", "input": {}}),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '{"x":'}),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": " 1}"}),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, {"type": "tool_use", "id": "c2", "name": "b", "input": {}}),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": "{}"}),
        ("content_block_stop", 2, None),
        ("message_delta", None, {"stop_reason": "tool_use", "stop_sequence": None}),
        ("message_stop", None, None),
    ]
    assert events[-2][1]["usage"]["input_tokens"] == 13 and events[-2][1]["usage"]["output_tokens"] == 9


def test_stream_without_usage_falls_back_to_the_counted_prompt() -> None:
    stream = StreamTranslator("msg_1", "requested", input_tokens=5)
    events = stream.on_chunk(pb.ChatChunk())
    events += stream.finish()
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[0][1]["message"]["model"] == "requested"
    assert events[1][1]["usage"]["input_tokens"] == 5
    assert events[1][1]["delta"]["stop_reason"] == "end_turn"


def test_frames_are_named_sse_events() -> None:
    assert frame(("ping", {"type": "ping"})) == b'event: ping\ndata: {"type":"ping"}\n\n'


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequestError("x"), "invalid_request_error"),
        (InvalidRequestError("x", http_status=405), "invalid_request_error"),
        (AuthenticationError("x"), "authentication_error"),
        (PermissionDeniedError("x"), "permission_error"),
        (ModelNotFoundError("x"), "not_found_error"),
        (RequestTooLargeError("x"), "request_too_large"),
        (RateLimitError("x"), "rate_limit_error"),
        (ServerError("x"), "api_error"),
        (UpstreamError("x"), "api_error"),
        (UpstreamError("x", http_status=504), "api_error"),
        (UpstreamError("x", http_status=503), "overloaded_error"),
    ],
)
def test_error_shape(error: InterlockError, kind: str) -> None:
    assert error_body(error, "req_1") == {
        "type": "error",
        "error": {"type": kind, "message": "x"},
        "request_id": "req_1",
    }


def test_only_the_messages_paths_speak_anthropic() -> None:
    assert serves("/v1/messages") and serves("/v1/messages/count_tokens") and serves("/v1/messages/batches")
    assert not serves("/v1/messagesx") and not serves("/v1/chat/completions") and not serves("")


def test_the_shape_follows_the_path() -> None:
    error = RateLimitError("slow down")
    assert error_body_for("/v1/messages", error, "req_1") == error_body(error, "req_1")
    public = error_body_for("/v1/chat/completions", error, "req_1")
    assert public["error"]["code"] == "rate_limit_exceeded" and public["status"] == 429
