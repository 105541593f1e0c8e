"""Anthropic's Messages API on the edge, end to end: the official `anthropic` SDK (base_url
changed, nothing else) against the real stack, served by an OpenAI-compatible upstream
(fake-chat), the demo provider (demo-chat) and a Gemini upstream (gemini-test)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from interlock.router.v1 import router_pb2 as pb
from services.common import tokens
from tests.conftest import GEMINI_KEY
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_openai import FakeOpenAI
from tests.support.limits import create_key
from tests.support.stack import Stack, stack_on_catalog

pytestmark = pytest.mark.e2e
HI: list[Any] = [{"role": "user", "content": "hi there"}]
LOOKUP: Any = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
}
SCHEMA: Any = {"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"]}
GEMINI_KEY_ENV = "INTERLOCK_TEST_GEMINI_KEY"
STREAM_NAMES = {
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}


@pytest.fixture
def claude(stack: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0, timeout=30) as sdk:
        yield sdk


def sse_events(url: str, body: dict[str, Any], headers: dict[str, str]) -> list[tuple[float, str, Any]]:
    """(arrival time, event name, data) of each event of a raw Messages stream."""
    events: list[tuple[float, str, Any]] = []
    name = ""
    with httpx.stream("POST", f"{url}/v1/messages", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["request-id"] == response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((time.monotonic(), name, orjson.loads(line[6:])))
    return events


def anthropic_headers(stack: Stack) -> dict[str, str]:
    return {"x-api-key": stack.api_key, "anthropic-version": "2023-06-01"}


def ledger_endpoint(stack: Stack, request_id: str) -> str:
    assert stack.wait_for_events(1, request_id=request_id) == 1
    with closing(sqlite3.connect(f"file:{stack.data_dir / 'usage.db'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT endpoint FROM events WHERE request_id = ?", (request_id,)).fetchone()
    return str(row[0])


# ---------------------------------------------------------------- text


def test_text_message_non_stream(claude: anthropic.Anthropic, stack: Stack, upstream: FakeOpenAI) -> None:
    message = claude.messages.create(
        model="fake-chat",
        max_tokens=50,
        system="Be brief.",
        messages=HI,
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        # Older SDKs have temperature as a parameter; the wire still carries it.
        extra_body={"temperature": 0.5},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Echo: hi there")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # The fake counts words: "Be brief." + "hi there" in, "Echo: hi there" out.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    assert message.model == "fake-model"
    sent = upstream.requests[-1]["json"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"], sent["user"]) == (50, 0.5, ["END"], "user-7")
    assert message._request_id is not None
    assert message.id == "msg_" + message._request_id.removeprefix("req_")
    assert ledger_endpoint(stack, message._request_id) == "/v1/messages"


def test_content_blocks_and_images_reach_the_upstream(claude: anthropic.Anthropic, upstream: FakeOpenAI) -> None:
    message = claude.messages.create(
        model="fake-chat",
        max_tokens=20,
        system=[{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "noted"}]},
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                    {"type": "text", "text": "what is this"},
                ],
            },
        ],
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    assert message.content[0].type == "text" and message.content[0].text == "Echo: what is this"
    sent = upstream.requests[-1]["json"]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert sent["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}]},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "noted"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "text", "text": "what is this"},
            ],
        },
    ]


# ---------------------------------------------------------------- streams


def test_stream_event_sequence_is_anthropics(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.token_delay = 0.15
    body = {"model": "fake-chat", "max_tokens": 50, "messages": HI, "stream": True}
    events = sse_events(stack.url, body, anthropic_headers(stack))
    names = [name for _, name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for _, name, data in events)
    start = events[0][2]["message"]
    assert start["id"].startswith("msg_") and start["role"] == "assistant" and start["content"] == []
    assert start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert events[1][2] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for _, name, data in events if name == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    assert "".join(d["text"] for d in deltas) == "Echo: hi there"
    final = events[-2][2]
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert (final["usage"]["input_tokens"], final["usage"]["output_tokens"]) == (2, 3)
    # Unbuffered: each piece is relayed when the upstream sends it, a token delay apart.
    times = [t for t, name, _ in events if name == "content_block_delta"]
    assert times[-1] - times[0] >= 0.2
    assert events[0][0] < times[-1] - 0.2


def test_sdk_stream_helper(claude: anthropic.Anthropic, stack: Stack) -> None:
    with claude.messages.stream(model="demo-chat", max_tokens=200, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 5  # the demo streams token by token
    assert "".join(pieces).startswith('Hello! You said: "hi there".')
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 5
    # Raw events through the SDK: the same order (the SDK drops pings).
    raw = list(claude.messages.create(model="demo-chat", max_tokens=200, messages=HI, stream=True))
    assert [e.type for e in raw[:2]] == ["message_start", "content_block_start"]
    assert [e.type for e in raw[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert stream.response.headers["request-id"]
    assert ledger_endpoint(stack, stream.response.headers["request-id"]) == "/v1/messages"


def test_stream_that_fails_mid_way_ends_with_an_error_event(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.die_mid_stream_after(2)
    body = {"model": "fake-chat", "max_tokens": 50, "messages": HI, "stream": True}
    events = sse_events(stack.url, body, anthropic_headers(stack))
    assert events[0][1] == "message_start"
    name, data = events[-1][1], events[-1][2]
    assert name == "error" and "message_stop" not in [n for _, n, _ in events]
    assert data["type"] == "error" and data["error"]["type"] in ("api_error", "overloaded_error")
    assert data["error"]["message"] and data["request_id"]


def test_stream_that_fails_before_its_first_byte_is_an_http_error(
    claude: anthropic.Anthropic, upstream: FakeOpenAI
) -> None:
    upstream.fail_next(500, times=20)  # outlasts every retry
    with pytest.raises(anthropic.InternalServerError) as caught:
        list(claude.messages.create(model="fake-chat", max_tokens=50, messages=HI, stream=True))
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "api_error"


# ---------------------------------------------------------------- tools


def tool_round_trip(claude: anthropic.Anthropic, model: str, *, stream: bool) -> tuple[Any, Any]:
    """A forced tool call, then its result sent back; returns both answers."""
    ask: Any = {"role": "user", "content": "look up x"}
    kwargs: Any = {"model": model, "max_tokens": 50, "tools": [LOOKUP], "tool_choice": {"type": "any"}}
    if stream:
        with claude.messages.stream(messages=[ask], **kwargs) as events:
            called = events.get_final_message()
    else:
        called = claude.messages.create(messages=[ask], **kwargs)
    assert called.stop_reason == "tool_use"
    uses = [b for b in called.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "lookup" and uses[0].input == {"x": 1}
    history: Any = [
        ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in called.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "42"}]},
    ]
    answered = claude.messages.create(model=model, max_tokens=50, tools=[LOOKUP], messages=history)
    return called, answered


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_with_an_openai_compatible_upstream(
    claude: anthropic.Anthropic, upstream: FakeOpenAI, stream: bool
) -> None:
    called, answered = tool_round_trip(claude, "fake-chat", stream=stream)
    first = upstream.requests[-2]["json"]
    assert first["tools"] == [
        {
            "type": "function",
            "function": {"name": "lookup", "description": LOOKUP["description"], "parameters": LOOKUP["input_schema"]},
        }
    ]
    assert first["tool_choice"] == "required"
    assert called.content[-1].id == "call_fake1"
    assert upstream.requests[-1]["json"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_fake1", "type": "function", "function": {"name": "lookup", "arguments": '{"x":1}'}}
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_fake1"},
    ]
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


def test_named_tool_choice_streams_input_json_deltas(stack: Stack, upstream: FakeOpenAI) -> None:
    body = {
        "model": "fake-chat",
        "max_tokens": 50,
        "messages": HI,
        "tools": [LOOKUP],
        "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True},
        "stream": True,
    }
    events = sse_events(stack.url, body, anthropic_headers(stack))
    sent = upstream.requests[-1]["json"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert sent["parallel_tool_calls"] is False
    starts = [data for _, name, data in events if name == "content_block_start"]
    assert starts == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "call_fake1",
                                                                      "name": "lookup", "input": {}}},
    ]  # fmt: skip
    deltas = [data["delta"] for _, name, data in events if name == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"input_json_delta"}
    assert orjson.loads("".join(d["partial_json"] for d in deltas)) == {"x": 1}
    assert events[-2][2]["delta"]["stop_reason"] == "tool_use"


# ---------------------------------------------------------------- Gemini


@pytest.fixture(scope="module")
def gemini_stack(tmp_path_factory: pytest.TempPathFactory, gemini_fake: FakeGemini) -> Iterator[Stack]:
    catalog: dict[str, Any] = {
        "providers": {
            "demo": {"kind": "demo"},
            "gem": {"kind": "gemini", "base_url": gemini_fake.base_url, "api_key_env": GEMINI_KEY_ENV},
        },
        "models": [
            {"id": "demo-chat", "type": "chat", "deployments": [{"provider": "demo", "model": "demo-chat"}]},
            {"id": "gemini-test", "type": "chat", "capabilities": ["chat", "tools"],
             "deployments": [{"provider": "gem", "model": "gemini-up"}]},
        ],
    }  # fmt: skip
    with stack_on_catalog(tmp_path_factory.mktemp("messages-gemini"), catalog, {GEMINI_KEY_ENV: GEMINI_KEY}) as stack:
        yield stack


@pytest.fixture
def gemini_claude(gemini_stack: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gemini_stack.url, api_key=gemini_stack.api_key, max_retries=0) as sdk:
        yield sdk


def test_gemini_text(gemini_claude: anthropic.Anthropic, gemini: FakeGemini) -> None:
    message = gemini_claude.messages.create(model="gemini-test", max_tokens=20, system="Be brief.", messages=HI)
    assert message.content[0].type == "text" and message.content[0].text == "Echo: hi there"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    assert gemini.requests[-1]["json"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_tool_use(gemini_claude: anthropic.Anthropic, gemini: FakeGemini, stream: bool) -> None:
    called, answered = tool_round_trip(gemini_claude, "gemini-test", stream=stream)
    assert gemini.requests[-2]["json"]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    # The id carries Gemini's thought signature, which must come back with the call.
    contents = gemini.requests[-1]["json"]["contents"]
    assert contents[1]["parts"][0]["functionCall"] == {"name": "lookup", "args": {"x": 1}}
    assert contents[1]["parts"][0]["thoughtSignature"]
    assert contents[2]["parts"] == [{"functionResponse": {"name": "lookup", "response": {"content": "42"}}}]
    assert answered.content[0].type == "text" and answered.content[0].text == 'Tool said: {"content":"42"}'
    assert called.usage.output_tokens == 3


# ---------------------------------------------------------------- count_tokens


def test_count_tokens(claude: anthropic.Anthropic, stack: Stack) -> None:
    counted = claude.messages.count_tokens(model="fake-chat", system="Be brief.", messages=HI)
    expected = tokens.count_messages(
        [pb.Message(role=pb.ROLE_SYSTEM, content="Be brief."), pb.Message(role=pb.ROLE_USER, content="hi there")],
        "fake-chat",
    )
    assert counted.input_tokens == expected
    with_tools = claude.messages.count_tokens(model="fake-chat", system="Be brief.", messages=HI, tools=[LOOKUP])
    assert with_tools.input_tokens > expected
    assert counted._request_id is not None
    assert stack.count_events(request_id=counted._request_id) == 0  # no model was called
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=HI)


# ---------------------------------------------------------------- errors


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"] == response.headers["request-id"]
    return body


def test_sdk_errors(stack: Stack, claude: anthropic.Anthropic) -> None:
    wrong = anthropic.Anthropic(base_url=stack.url, api_key="il-wrong", max_retries=0)
    with wrong, pytest.raises(anthropic.AuthenticationError) as auth:
        wrong.messages.create(model="demo-chat", max_tokens=5, messages=HI)
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
        "request_id": auth.value.request_id,
    }
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=HI)
    assert isinstance(missing.value.body, dict) and missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="demo-chat", max_tokens=5, messages=[{"role": "system", "content": "x"}])  # type: ignore[list-item]
    assert "messages[0].role" in str(bad.value)


def test_rate_limit_error(stack: Stack) -> None:
    secret = create_key(stack, [stack.url], requests_per_minute=1)
    with anthropic.Anthropic(base_url=stack.url, api_key=secret, max_retries=0) as limited:
        limited.messages.create(model="demo-chat", max_tokens=5, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as caught:
            limited.messages.create(model="demo-chat", max_tokens=5, messages=HI)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"model": "demo-chat", "messages": HI}, "max_tokens"),
        ({"model": "demo-chat", "max_tokens": "5", "messages": HI}, "max_tokens"),
        ({"model": "demo-chat", "max_tokens": 0, "messages": HI}, "max_tokens"),
        ({"max_tokens": 5, "messages": HI}, "model"),
        ({"model": "demo-chat", "max_tokens": 5}, "messages"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": "hi"}, "messages"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user"}]}, "content"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}, "content"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
         "'video'"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "type"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "x"}}]}]},
         "media_type"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": "x"}]}]}, "input"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "system": 3}, "system"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "temperature": 1.5}, "temperature"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "stop_sequences": "END"}, "stop_sequences"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "tools": [{"name": "f"}]}, "input_schema"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "tool_choice": {"type": "any"}}, "tool_choice"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "tools": [LOOKUP],
          "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice.name"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "stream": "yes"}, "stream"),
        ({"model": "demo-chat", "max_tokens": 5, "messages": HI, "frobnicate": 1}, "frobnicate"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_400(stack: Stack, payload: dict[str, Any], needle: str) -> None:
    response = httpx.post(f"{stack.url}/v1/messages", json=payload, headers=anthropic_headers(stack), timeout=30)
    body = assert_anthropic_error(response, 400, "invalid_request_error")
    assert needle in body["error"]["message"]


def test_malformed_requests(stack: Stack) -> None:
    url, headers = f"{stack.url}/v1/messages", anthropic_headers(stack)
    assert_anthropic_error(httpx.post(url, content=b"{nope", headers=headers), 400, "invalid_request_error")
    assert_anthropic_error(httpx.post(url, content=b"[1]", headers=headers), 400, "invalid_request_error")
    bad_version = {**headers, "anthropic-version": "latest"}
    body = assert_anthropic_error(httpx.post(url, json={}, headers=bad_version), 400, "invalid_request_error")
    assert "anthropic-version" in body["error"]["message"]
    assert_anthropic_error(httpx.get(url, headers=headers), 405, "invalid_request_error")
    assert_anthropic_error(httpx.post(f"{url}/batches", json={}, headers=headers), 404, "not_found_error")
    assert_anthropic_error(httpx.post(url, json={}, headers={}), 401, "authentication_error")
    huge = {"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 300_000}]}
    assert_anthropic_error(httpx.post(url, json=huge, headers=headers), 413, "request_too_large")
    # Other routes keep the public shape.
    other = httpx.post(f"{stack.base_url}/chat/completions", json={}, headers=headers)
    assert other.status_code == 400 and set(other.json()) == {"error", "request_id", "status"}
