"""Chat codec: strict client parsing, upstream serialization, lenient response/chunk round trips."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError
from services.common.wire.chat import (
    chat_request_to_json,
    chat_response_from_json,
    chat_response_to_json,
    chunk_from_json,
    chunk_to_json,
    parse_chat_request,
)
from services.common.wire.fields import INVALID_TYPE, INVALID_VALUE, MISSING

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 5},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "ratio": {"type": "number", "multipleOf": 0.25},
    },
    "required": ["city"],
    "additionalProperties": False,
}


def rich_body() -> dict[str, Any]:
    return {
        "model": "router:fast",
        "reasoning_effort": "low",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "name": "alice",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "parameters": WEATHER_SCHEMA,
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": True, "schema": {"type": "object", "maxProperties": 3}},
        },
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 100,
        "max_completion_tokens": 120,
        "n": 2,
        "stop": ["END", "STOP"],
        "seed": 42,
        "presence_penalty": -0.5,
        "frequency_penalty": 1.5,
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": {"50256": -100, "1234": 5},
        "user": "user-7",
        "stream": False,
        "stream_options": {"include_usage": False},
        "route": {"provider": "demo", "latency_budget_ms": 1500, "cost_ceiling_usd": 0.25, "fallback": ["demo-chat"]},
        "service_tier": "flex",
    }


def test_rich_body_round_trips_to_upstream_json() -> None:
    body = rich_body()
    original = copy.deepcopy(body)
    request, stream = parse_chat_request(body)
    assert stream is False
    assert body == original, "parsing must not mutate the client's body"

    out = chat_request_to_json(request, "upstream-x", stream=True)

    expected = copy.deepcopy(original)
    expected["model"] = "upstream-x"
    expected["stream"] = True
    expected["stream_options"] = {"include_usage": True}
    del expected["route"]  # gateway-only hints never go upstream
    assert out == expected


def test_json_schema_integers_stay_integers() -> None:
    request, _ = parse_chat_request(rich_body())
    out = chat_request_to_json(request, "upstream-x", stream=False)
    props = out["tools"][0]["function"]["parameters"]["properties"]
    assert props["city"]["maxLength"] == 5 and type(props["city"]["maxLength"]) is int
    assert type(props["days"]["minimum"]) is int and type(props["days"]["maximum"]) is int
    assert props["ratio"]["multipleOf"] == 0.25
    assert type(out["response_format"]["json_schema"]["schema"]["maxProperties"]) is int
    assert type(out["seed"]) is int and type(out["max_tokens"]) is int and type(out["n"]) is int


def test_parsed_message_shapes() -> None:
    request, _ = parse_chat_request(rich_body())
    user = request.messages[1]
    assert user.role == pb.ROLE_USER and not user.HasField("content")
    assert [p.WhichOneof("part") for p in user.parts] == ["text", "image_url", "image_url", "other_json"]
    assert user.parts[1].image_url.detail == "high"
    assert request.messages[3].tool_call_id == "call_1"
    assert list(request.route.fallbacks) == ["demo-chat"]
    assert request.route.latency_budget_ms == 1500
    assert request.stream_options.include_usage is False


def test_non_stream_upstream_body_has_no_stream_keys() -> None:
    request, _ = parse_chat_request(rich_body())
    out = chat_request_to_json(request, "upstream-x", stream=False)
    assert "stream" not in out and "stream_options" not in out
    assert out["reasoning_effort"] == "low" and out["service_tier"] == "flex"


def test_stop_string_becomes_one_entry_list() -> None:
    request, _ = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "END"})
    assert list(request.sampling.stop) == ["END"]
    assert chat_request_to_json(request, "u", stream=False)["stop"] == ["END"]


def test_minimal_request_adds_nothing() -> None:
    request, stream = parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    assert stream is True
    assert chat_request_to_json(request, "u", stream=False) == {
        "model": "u",
        "messages": [{"role": "user", "content": "hi"}],
    }


def _msgs(*messages: dict[str, Any]) -> list[dict[str, Any]]:
    return list(messages)


USER = {"role": "user", "content": "hi"}
BAD_INPUTS = [
    pytest.param({"messages": [USER]}, "model", MISSING, id="model-missing"),
    pytest.param({"model": 7, "messages": [USER]}, "model", INVALID_TYPE, id="model-not-string"),
    pytest.param({"model": "m"}, "messages", MISSING, id="messages-missing"),
    pytest.param({"model": "m", "messages": {"role": "user"}}, "messages", INVALID_TYPE, id="messages-not-array"),
    pytest.param({"model": "m", "messages": []}, "messages", INVALID_VALUE, id="messages-empty"),
    pytest.param({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", MISSING, id="role-missing"),
    pytest.param(
        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
        "messages[0].role",
        INVALID_VALUE,
        id="role-unknown",
    ),
    pytest.param(
        {"model": "m", "messages": [{"role": "user"}]}, "messages[0].content", MISSING, id="user-content-missing"
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "temperature": True}, "temperature", INVALID_TYPE, id="temperature-bool"
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "temperature": "0.5"}, "temperature", INVALID_TYPE, id="temperature-string"
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "temperature": 2.5}, "temperature", INVALID_VALUE, id="temperature-range"
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "max_tokens": 0}, "max_tokens", INVALID_VALUE, id="max-tokens-zero"
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "max_tokens": 1.5}, "max_tokens", INVALID_TYPE, id="max-tokens-fraction"
    ),
    pytest.param({"model": "m", "messages": [USER], "n": True}, "n", INVALID_TYPE, id="n-bool"),
    pytest.param(
        {"model": "m", "messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop", INVALID_VALUE, id="stop-5"
    ),
    pytest.param({"model": "m", "messages": [USER], "stop": 3}, "stop", INVALID_TYPE, id="stop-number"),
    pytest.param({"model": "m", "messages": [USER], "logprobs": "yes"}, "logprobs", INVALID_TYPE, id="logprobs-string"),
    pytest.param(
        {"model": "m", "messages": [USER], "top_logprobs": 21}, "top_logprobs", INVALID_VALUE, id="top-logprobs-range"
    ),
    pytest.param({"model": "m", "messages": [USER], "stream": "true"}, "stream", INVALID_TYPE, id="stream-string"),
    pytest.param(
        {"model": "m", "messages": [USER], "stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
        INVALID_TYPE,
        id="include-usage-int",
    ),
    pytest.param(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {}}]}
            ],
        },
        "messages[0].content[1].image_url.url",
        MISSING,
        id="image-url-without-url",
    ),
    pytest.param(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}]}
            ],
        },
        "messages[0].content[0].image_url.detail",
        INVALID_VALUE,
        id="image-detail",
    ),
    pytest.param(
        {"model": "m", "messages": [USER, {"role": "tool", "content": "18C"}]},
        "messages[1].tool_call_id",
        MISSING,
        id="tool-without-id",
    ),
    pytest.param(
        {
            "model": "m",
            "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}
            ],
        },
        "messages[0].tool_calls[0].function.arguments",
        INVALID_TYPE,
        id="tool-call-args-object",
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "tools": [{"type": "function", "function": {}}]},
        "tools[0].function.name",
        MISSING,
        id="tool-no-name",
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "tools": [{"type": "retrieval"}]},
        "tools[0].type",
        INVALID_VALUE,
        id="tool-type",
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "tool_choice": "always"}, "tool_choice", INVALID_VALUE, id="tool-choice-word"
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "tool_choice": 1}, "tool_choice", INVALID_TYPE, id="tool-choice-number"
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "response_format": {"json_schema": {}}},
        "response_format.type",
        MISSING,
        id="response-format-type",
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "route": {"fallback": [1]}},
        "route.fallback",
        INVALID_TYPE,
        id="route-fallback",
    ),
    pytest.param(
        {"model": "m", "messages": [USER], "logit_bias": [1]}, "logit_bias", INVALID_TYPE, id="logit-bias-array"
    ),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_INPUTS)
def test_bad_input_names_param_and_code(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(body)
    assert (info.value.param, info.value.code, info.value.http_status) == (param, code, 400)
    assert param in info.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        pytest.param({"seed": 2**63}, "seed", id="seed"),
        pytest.param({"max_tokens": 2**63}, "max_tokens", id="max_tokens"),
        pytest.param({"route": {"latency_budget_ms": 2**64 - 1}}, "route.latency_budget_ms", id="latency_budget_ms"),
    ],
)
def test_integer_beyond_int64_is_a_400_not_a_crash(extra: dict[str, Any], param: str) -> None:
    # orjson parses integers up to 2**64-1, so such a body reaches the codec.
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request({"model": "m", "messages": [USER], **extra})
    assert info.value.param == param


UPSTREAM_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1_731_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_0ba0d124f1",
    "service_tier": "default",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
                ],
            },
            "logprobs": {
                "content": [
                    {
                        "token": "Hi",
                        "logprob": -0.0123,
                        "bytes": [72, 105],
                        "top_logprobs": [{"token": "Hi", "logprob": -0.0123, "bytes": [72, 105]}],
                    }
                ],
                "refusal": None,
            },
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "It is sunny.", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        },
    ],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 0},
    },
}


def test_chat_response_round_trip() -> None:
    out = chat_response_to_json(chat_response_from_json(copy.deepcopy(UPSTREAM_RESPONSE)))
    for key in ("id", "object", "created", "model", "system_fingerprint", "service_tier"):
        assert out[key] == UPSTREAM_RESPONSE[key], key
    assert len(out["choices"]) == 2
    for got, want in zip(out["choices"], UPSTREAM_RESPONSE["choices"], strict=True):
        assert got["index"] == want["index"]
        assert got["message"] == want["message"]
        assert got["logprobs"] == want["logprobs"]
        assert got["finish_reason"] == want["finish_reason"]
    usage = out["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (120, 30, 150)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 64}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 10}


def test_tool_call_delta_chunk_round_trip_keeps_index() -> None:
    first = {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_731_000_001, "model": "gpt-4o-mini",
        "system_fingerprint": "fp_x",
        "choices": [{
            "index": 0,
            "delta": {"tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ]},
            "logprobs": None,
            "finish_reason": None,
        }],
    }  # fmt: skip
    assert chunk_to_json(chunk_from_json(copy.deepcopy(first))) == first
    follow = copy.deepcopy(first)
    follow["choices"][0]["delta"] = {"tool_calls": [{"index": 1, "function": {"arguments": '{"tz":'}}]}
    assert chunk_to_json(chunk_from_json(copy.deepcopy(follow))) == follow


def test_finish_and_role_chunks_round_trip() -> None:
    role = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}]}  # fmt: skip
    done = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]}  # fmt: skip
    assert chunk_to_json(chunk_from_json(copy.deepcopy(role))) == role
    assert chunk_to_json(chunk_from_json(copy.deepcopy(done))) == done


def test_usage_chunk_round_trip() -> None:
    raw = {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "gpt-4o-mini", "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}},
    }  # fmt: skip
    chunk = chunk_from_json(copy.deepcopy(raw))
    assert chunk.HasField("usage")
    out = chunk_to_json(chunk)
    assert out["choices"] == []
    usage = out["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (11, 7, 18)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 3}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2}


def test_chunk_without_usage_has_no_usage_key() -> None:
    raw = {
        "id": "c",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    out = chunk_to_json(chunk_from_json(raw))
    assert "usage" not in out
    assert out["choices"][0]["delta"] == {"content": "Hi"}
