"""Messages API requests -> the router's ChatRequest (gateway/anthropic/request.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.anthropic.request import check_version, parse_messages_request
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError
from services.common.wire import fields as f
from services.common.wire.chat import message_to_json

USER = {"role": "user", "content": "x"}
TOOL = {"name": "lookup", "description": "Look up.", "input_schema": {"type": "object", "properties": {}}}


def parse(**body: Any) -> pb.ChatRequest:
    request, _ = parse_messages_request({"model": "m", "max_tokens": 10, **body})
    return request


def as_openai(request: pb.ChatRequest) -> list[dict[str, Any]]:
    return [message_to_json(m) for m in request.messages]


def test_plain_text_and_sampling() -> None:
    request, stream = parse_messages_request(
        {
            "model": "m",
            "max_tokens": 10,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["A", "B", "C", "D", "E"],
            "metadata": {"user_id": "u1"},
            "stream": True,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "cache_control": {"type": "ephemeral"},
            "speed": "fast",
            "service_tier": "auto",
            "output_config": {"effort": "high"},
        }
    )
    assert stream is True
    assert request.model == "m"
    assert as_openai(request) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (10, 0.3, 0.9)
    assert list(sampling.stop) == ["A", "B", "C", "D", "E"] and sampling.user == "u1"
    assert not request.extra_json  # nothing Anthropic-only leaks to the providers


def test_tool_results_come_before_the_rest_of_their_turn() -> None:
    request = parse(
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "t2", "name": "lookup", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and then?"},
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "no"},
                            {"type": "text", "text": "city"},
                            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        ],
                    },
                ],
            },
        ],
        tools=[TOOL],
    )
    assert as_openai(request)[1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": '{"city":"Oslo"}'}},
                {"id": "t2", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "t1"},
        {"role": "tool", "content": "Error: no\ncity", "tool_call_id": "t2"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and then?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
    ]


def test_an_assistant_turn_of_tool_calls_only_has_no_content() -> None:
    request = parse(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ]
    )
    assert not request.messages[1].HasField("content")
    assert as_openai(request)[2] == {"role": "tool", "content": "", "tool_call_id": "t1"}


@pytest.mark.parametrize(
    ("choice", "wire", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "lookup"}, {"type": "function", "function": {"name": "lookup"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ],
)
def test_tools_and_tool_choice(choice: dict[str, Any], wire: object, parallel: bool | None) -> None:
    request = parse(messages=[{"role": "user", "content": "x"}], tools=[TOOL], tool_choice=choice)
    assert request.tools[0] == pb.Tool(
        type="function",
        function=pb.FunctionDefinition(
            name="lookup", description="Look up.", parameters_json=f.dumps(TOOL["input_schema"])
        ),
    )
    assert f.loads(request.tool_choice_json) == wire
    assert (request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None) == parallel


def test_images_become_urls() -> None:
    request = parse(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "AAA"}}],
            }
        ]
    )
    assert request.messages[0].parts[0].image_url.url == "data:image/webp;base64,AAA"


def test_count_tokens_does_not_need_max_tokens() -> None:
    request, _ = parse_messages_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, counting=True)
    assert not request.sampling.HasField("max_tokens")
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        parse_messages_request({"model": "m", "messages": [{"role": "user", "content": "x"}]})


def test_structured_output_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = parse(messages=[USER], output_config={"format": {"type": "json_schema", "schema": schema}})
    assert f.loads(request.response_format_json) == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


def test_route_hints_are_interlocks_extension() -> None:
    request = parse(messages=[{"role": "user", "content": "x"}], route={"fallback": ["other"]})
    assert list(request.route.fallbacks) == ["other"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [USER], "system": [{"type": "image"}]}, "system[0].type"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
         "messages[0].content[0].type"),
        ({"messages": [{"role": "assistant", "content": [{"type": "image"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
         "messages[0].content[0].source.type"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}]}]},
         "messages[0].content[0].source.url"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages[0].content[0].tool_use_id"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 3}]}]},
         "messages[0].content[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                     "content": [{"type": "document"}]}]}]},
         "messages[0].content[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": 1}]}]},
         "messages[0].content[0].is_error"),
        ({"messages": [USER], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"messages": [USER], "tools": [{"name": "f", "input_schema": []}]}, "tools[0].input_schema"),
        ({"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"messages": [USER], "metadata": {"user_id": 5}}, "metadata.user_id"),
        ({"messages": [USER], "top_k": -1}, "top_k"),
        ({"messages": [USER], "stop_sequences": [""]}, "stop_sequences"),
        ({"messages": [USER], "n": 2}, "n"),
        ({"messages": [USER], "container": "c1"}, "container"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens"),
        ({"messages": [USER], "output_config": {"format": {"type": "regex"}}}, "output_config.format.type"),
        ({"messages": [USER], "output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
    ],
)  # fmt: skip
def test_bad_input_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse(**body)
    assert caught.value.param == param
    assert caught.value.http_status == 400


@pytest.mark.parametrize("version", [None, "2023-06-01", "2099-01-31"])
def test_dated_versions_are_accepted(version: str | None) -> None:
    check_version(version)


@pytest.mark.parametrize("version", ["", "latest", "2023-6-1"])
def test_other_versions_are_refused(version: str) -> None:
    with pytest.raises(InvalidRequestError, match="anthropic-version"):
        check_version(version)
