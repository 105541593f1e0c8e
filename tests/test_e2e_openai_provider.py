"""The `openai` provider kind against a local fake that speaks OpenAI's wire protocol."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import UPSTREAM_KEY
from tests.support.fake_openai import FakeOpenAI
from tests.support.openai_schema import validate
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "hi there"}]


def test_non_stream_passes_through(client: openai.OpenAI, upstream: FakeOpenAI, stack: Stack) -> None:
    raw = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=stack.headers(),
        json={"model": "fake-chat", "messages": HI, "temperature": 0.3, "reasoning_effort": "low", "seed": 7},
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "Echo: hi there"
    assert body["usage"]["cost_usd"] == pytest.approx((2 * 1.0 + 3 * 2.0) / 1e6)
    assert body["routing_decision"]["provider"] == "fake"
    sent = upstream.requests[-1]
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["json"]["model"] == "fake-model"
    # Known parameters and ones the gateway does not type both reach the provider unchanged.
    assert sent["json"]["temperature"] == 0.3 and sent["json"]["seed"] == 7
    assert sent["json"]["reasoning_effort"] == "low"
    assert "stream" not in sent["json"]


def test_tool_call_round_trip(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string", "maxLength": 5}}},
            },
        }
    ]
    reply = client.chat.completions.create(model="fake-chat", messages=HI, tools=tools, tool_choice="required")  # type: ignore[arg-type]
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup"  # type: ignore[union-attr]
    assert upstream.requests[-1]["json"]["tools"] == tools  # integers stay integers
    follow = client.chat.completions.create(
        model="fake-chat",
        messages=[
            *HI,
            reply.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "42"},
        ],  # type: ignore[list-item]
    )
    assert follow.choices[0].message.content
    assert upstream.requests[-1]["json"]["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "42"}


def test_stream_passes_through_and_always_asks_for_usage(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake-chat", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hi there"
    assert all(c.usage is None for c in chunks)
    assert upstream.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    with_usage = list(
        client.chat.completions.create(
            model="fake-chat", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 3


def test_completions_and_embeddings(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    done = client.completions.create(model="fake-instruct", prompt="say hi")
    assert done.choices[0].text
    vectors = client.embeddings.create(model="fake-embed", input=["a", "b"], dimensions=8)
    assert [len(d.embedding) for d in vectors.data] == [8, 8]
    assert upstream.requests[-1]["json"]["encoding_format"] == "base64"


@pytest.mark.parametrize(
    ("status", "expected_status", "code"),
    [(500, 502, "upstream_error"), (503, 502, "upstream_error"), (429, 503, "upstream_rate_limited")],
)
def test_upstream_errors_map_to_gateway_errors(
    stack: Stack, upstream: FakeOpenAI, status: int, expected_status: int, code: str
) -> None:
    upstream.fail_next(status, retry_after="2" if status == 429 else None, times=20)  # outlasts every retry
    model = "fakeb-chat" if status == 429 else "fake-chat"  # a Retry-After keeps its deployment away for a while
    response = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": model, "messages": HI}
    )
    assert response.status_code == expected_status
    body = response.json()
    validate("ErrorResponse", body)
    assert body["error"]["type"] == "upstream_error" and body["error"]["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "2"


def test_upstream_client_error_is_a_400(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.fail_next(
        400,
        body={"error": {"message": "bad thing", "type": "invalid_request_error", "param": None, "code": "bad_thing"}},
    )
    response = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": "fake-chat", "messages": HI}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_thing"
    assert "bad thing" in response.json()["error"]["message"]


def test_stream_error_before_first_byte_is_an_http_error(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.fail_next(502, times=20)  # outlasts every retry
    response = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=stack.headers(),
        json={"model": "fake-chat", "messages": HI, "stream": True},
    )
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_unreachable_and_unconfigured_providers_are_503(stack: Stack) -> None:
    for model, code in (("dead-chat", "provider_unavailable"), ("nokey-chat", "provider_unavailable")):
        response = httpx.post(
            f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": model, "messages": HI}
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == code
    unconfigured = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": "nokey-chat", "messages": HI}
    )
    assert "INTERLOCK_TEST_NEVER_SET" in unconfigured.json()["error"]["message"]
    listed = {m["id"]: m for m in httpx.get(f"{stack.base_url}/models", headers=stack.headers()).json()["data"]}
    assert listed["nokey-chat"]["available"] is False and listed["fake-chat"]["available"] is True


def test_upstream_dying_mid_stream_ends_with_an_error_event(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.token_delay = 0.01
    upstream.die_mid_stream_after(3)
    words = [{"role": "user", "content": "one two three four five six"}]
    with httpx.stream(
        "POST", f"{stack.base_url}/chat/completions", headers=stack.headers(),
        json={"model": "fake-chat", "messages": words, "stream": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] != "[DONE]"
    last = orjson.loads(events[-1])
    validate("ErrorResponse", last)
    assert last["error"]["type"] == "upstream_error" and last["request_id"]


def test_client_disconnect_cancels_upstream(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.token_delay = 0.05
    long_prompt = [{"role": "user", "content": " ".join(["word"] * 200)}]
    with httpx.stream(
        "POST", f"{stack.base_url}/chat/completions", headers=stack.headers(),
        json={"model": "fake-chat", "messages": long_prompt, "stream": True},
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
    # Leaving the block closed the connection mid-stream.
    deadline = time.monotonic() + 5
    while upstream.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.cancelled == 1


def test_upstream_timeout_is_a_504(stack: Stack, upstream: FakeOpenAI) -> None:
    upstream.first_token_delay = 1.5  # the "slow" provider gives up after 0.5 s
    response = httpx.post(
        f"{stack.base_url}/chat/completions", headers=stack.headers(), json={"model": "slow-chat", "messages": HI}
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "provider_timeout"
    assert response.json()["error"]["type"] == "upstream_error"


def test_image_parts_reach_the_provider_unchanged(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
    ]
    messages: Any = [{"role": "user", "content": parts}]
    reply = client.chat.completions.create(model="fake-chat", messages=messages)
    assert reply.choices[0].message.content == "Echo: what is this?"
    assert upstream.requests[-1]["json"]["messages"][0]["content"] == parts
