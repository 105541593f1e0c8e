"""The `anthropic` provider kind end to end: the official OpenAI SDK against the real
stack, whose router speaks Anthropic's Messages API to a local fake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import orjson
import pytest

from tests.support.fake_anthropic import FakeAnthropic, error_body
from tests.support.openai_schema import validate
from tests.support.stack import Stack, stack_on_catalog

pytestmark = pytest.mark.e2e
KEY = "sk-ant-e2e-key"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]


@dataclass
class Env:
    stack: Stack
    fake: FakeAnthropic


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("anthropic-stack")
    with FakeAnthropic(required_api_key=KEY) as fake:
        catalog = {
            "providers": {
                "demo": {"kind": "demo"},
                "claude": {
                    "kind": "anthropic",
                    "base_url": fake.base_url,
                    "api_key_env": "E2E_ANTHROPIC_KEY",
                    "timeout_seconds": 10,
                },
            },
            "models": [
                {"id": "demo-chat", "type": "chat", "deployments": [{"provider": "demo", "model": "demo-chat"}]},
                {
                    "id": "claude-test",
                    "type": "chat",
                    "capabilities": ["chat", "tools", "vision"],
                    "context_window": 200000,
                    "max_output_tokens": 256,
                    "pricing": {"input": 3.0, "output": 15.0},
                    "deployments": [{"provider": "claude", "model": "claude-upstream-1"}],
                },
            ],
        }
        with stack_on_catalog(root, catalog, {"E2E_ANTHROPIC_KEY": KEY}) as stack:
            yield Env(stack, fake)


@pytest.fixture
def fake(env: Env) -> Iterator[FakeAnthropic]:
    env.fake.reset()
    yield env.fake
    env.fake.reset()


@pytest.fixture
def client(env: Env) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=env.stack.base_url, api_key=env.stack.api_key, max_retries=0, timeout=30) as sdk:
        yield sdk


def test_chat(env: Env, fake: FakeAnthropic, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-test",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        temperature=1.5,
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    reply = raw.parse()
    assert reply.choices[0].message.content == "Echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "claude-upstream-1"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 3)
    assert raw.http_response.json()["routing_decision"]["provider"] == "claude"
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == KEY and sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["json"] == {
        "model": "claude-upstream-1",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "max_tokens": 256,
        "temperature": 1.0,
    }


def test_stream_with_usage(env: Env, fake: FakeAnthropic, client: openai.OpenAI) -> None:
    fake.cache_read_tokens = 10
    body = {
        "model": "claude-test",
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events: list[bytes] = []
    stack = env.stack
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", headers=stack.headers(), json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:].encode() for line in response.iter_lines() if line]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == (
        "Echo: one two three"
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3 + 10, 4)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 10}
    assert fake.requests[-1]["json"]["stream"] is True

    stream = client.chat.completions.create(
        model="claude-test",
        messages=[{"role": "user", "content": "four five"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    sdk_chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in sdk_chunks if c.choices) == "Echo: four five"
    assert sdk_chunks[-1].usage is not None and sdk_chunks[-1].usage.completion_tokens == 3


def test_tool_call(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "define cat"}]
    raw = client.chat.completions.with_raw_response.create(
        model="claude-test", messages=question, tools=TOOLS, tool_choice="required"
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    reply = raw.parse()
    assert reply.choices[0].finish_reason == "tool_calls"
    call = reply.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "lookup"
    assert orjson.loads(call.function.arguments) == {"x": 1}
    sent = fake.requests[-1]["json"]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["tools"] == [
        {"name": "lookup", "description": "Look a word up.", "input_schema": TOOLS[0]["function"]["parameters"]}
    ]

    follow = client.chat.completions.create(
        model="claude-test",
        messages=[
            *question,
            reply.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "a small feline"},
        ],
        tools=TOOLS,
    )
    assert follow.choices[0].message.content == "Echo: a small feline"
    assert fake.requests[-1]["json"]["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": "lookup", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a small feline"}]},
    ]

    streamed = list(
        client.chat.completions.create(
            model="claude-test",
            messages=question,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "lookup"}},
            stream=True,
        )
    )
    deltas = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id and deltas[0].function.name == "lookup"
    assert orjson.loads("".join(d.function.arguments or "" for d in deltas)) == {"x": 1}
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    assert fake.requests[-1]["json"]["tool_choice"] == {"type": "tool", "name": "lookup"}


def test_upstream_400_reaches_the_client_as_a_400(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    fake.fail_next(400, error_body(400, "prompt is too long: 300000 tokens > 200000 maximum"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude-test", messages=[{"role": "user", "content": "hi"}])
    assert "prompt is too long" in str(caught.value)
