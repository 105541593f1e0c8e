"""The `gemini` provider kind end to end: the official openai SDK against the real stack,
the stack against a fake that speaks the Gemini API's wire format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import GEMINI_KEY
from tests.support.fake_gemini import TOOL_ARGS, FakeGemini
from tests.support.openai_schema import validate
from tests.support.stack import Stack, stack_on_catalog

pytestmark = pytest.mark.e2e
KEY_ENV = "INTERLOCK_TEST_GEMINI_KEY"
HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
]


@pytest.fixture(scope="module")
def gemini_stack(tmp_path_factory: pytest.TempPathFactory, gemini_fake: FakeGemini) -> Iterator[Stack]:
    catalog: dict[str, Any] = {
        "providers": {
            "demo": {"kind": "demo"},
            "gem": {"kind": "gemini", "base_url": gemini_fake.base_url, "api_key_env": KEY_ENV, "timeout_seconds": 10},
        },
        "models": [
            {"id": "demo-chat", "type": "chat", "deployments": [{"provider": "demo", "model": "demo-chat"}]},
            {"id": "gemini-test", "type": "chat", "capabilities": ["chat", "tools", "vision"],
             "pricing": {"input": 1.0, "output": 2.0}, "deployments": [{"provider": "gem", "model": "gemini-up"}]},
            {"id": "gemini-embed-test", "type": "embedding", "dims": 8, "pricing": {"input": 0.5},
             "deployments": [{"provider": "gem", "model": "gemini-embed-up"}]},
        ],
    }  # fmt: skip
    with stack_on_catalog(tmp_path_factory.mktemp("gemini"), catalog, {KEY_ENV: GEMINI_KEY}) as stack:
        yield stack


@pytest.fixture
def sdk(gemini_stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gemini_stack.base_url, api_key=gemini_stack.api_key, max_retries=0, timeout=30) as c:
        yield c


def last_body(fake: FakeGemini) -> dict[str, Any]:
    body = fake.requests[-1]["json"]
    assert isinstance(body, dict)
    return body


def test_chat_non_stream(sdk: openai.OpenAI, gemini_stack: Stack, gemini: FakeGemini) -> None:
    raw = httpx.post(
        f"{gemini_stack.base_url}/chat/completions",
        headers=gemini_stack.headers(),
        json={"model": "gemini-test", "messages": HI, "temperature": 0.2, "max_tokens": 50},
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hi there", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "gemini-up-001"
    assert body["usage"]["prompt_tokens"] == 4 and body["usage"]["completion_tokens"] == 3
    assert body["usage"]["cost_usd"] == pytest.approx((4 * 1.0 + 3 * 2.0) / 1e6)
    assert body["routing_decision"]["provider"] == "gem" and body["routing_decision"]["deployment"] == "gemini-up"
    call = gemini.requests[-1]
    assert call["path"] == "/v1beta/models/gemini-up:generateContent"
    assert call["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert call["json"] == {
        "contents": [{"role": "user", "parts": [{"text": "hi there"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50},
    }

    reply = sdk.chat.completions.create(model="gemini-test", messages=HI)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Echo: hi there"
    assert reply.usage is not None and reply.usage.total_tokens == 7


def test_stream_with_include_usage(sdk: openai.OpenAI, gemini_stack: Stack, gemini: FakeGemini) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="gemini-test", messages=HI, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
    )
    assert gemini.requests[-1]["query"] == {"alt": "sse"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hi there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 3)
    assert all(c.usage is None for c in chunks[:-1])

    body = {"model": "gemini-test", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    events: list[bytes] = []
    with httpx.stream(
        "POST", f"{gemini_stack.base_url}/chat/completions", headers=gemini_stack.headers(), json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        events = [line[6:].encode() for line in response.iter_lines() if line]
    assert events[-1] == b"[DONE]"
    raw_chunks = [orjson.loads(e) for e in events[:-1]]
    for chunk in raw_chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert len({c["id"] for c in raw_chunks}) == 1


def test_tool_call_round_trip(sdk: openai.OpenAI, gemini: FakeGemini) -> None:
    question = {"role": "user", "content": "what does gemini mean?"}
    reply = sdk.chat.completions.create(model="gemini-test", messages=[question], tools=TOOLS, tool_choice="required")  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == TOOL_ARGS  # type: ignore[union-attr]
    declared = last_body(gemini)["tools"][0]["functionDeclarations"][0]
    assert declared["parameters"] == {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    assert last_body(gemini)["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    follow = sdk.chat.completions.create(
        model="gemini-test",
        messages=[
            question,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"meaning": "twins"}'},
        ],  # type: ignore[list-item]
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert follow.choices[0].message.content == 'Tool said: {"content":{"meaning":"twins"}}'
    contents = last_body(gemini)["contents"]
    assert contents[1]["role"] == "model" and contents[1]["parts"][0]["functionCall"] == {
        "name": "lookup",
        "args": TOOL_ARGS,
    }
    assert "thoughtSignature" in contents[1]["parts"][0]  # came back with the tool call id
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "lookup", "response": {"content": {"meaning": "twins"}}}}],
    }

    streamed = list(
        sdk.chat.completions.create(
            model="gemini-test", messages=[question], tools=TOOLS, tool_choice="required", stream=True
        )
    )
    deltas = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) == 1 and deltas[0].function.name == "lookup" and deltas[0].index == 0
    assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_embeddings_with_dimensions(sdk: openai.OpenAI, gemini_stack: Stack, gemini: FakeGemini) -> None:
    result = sdk.embeddings.create(model="gemini-embed-test", input=["alpine light", "glass frames"], dimensions=4)
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 4 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert last_body(gemini) == {
        "requests": [
            {"model": "models/gemini-embed-up", "content": {"parts": [{"text": t}]}, "outputDimensionality": 4}
            for t in ("alpine light", "glass frames")
        ]
    }
    raw = httpx.post(
        f"{gemini_stack.base_url}/embeddings",
        headers=gemini_stack.headers(),
        json={"model": "gemini-embed-test", "input": "a b c", "encoding_format": "float"},
        timeout=30,
    ).json()
    validate("CreateEmbeddingResponse", raw)
    assert len(raw["data"][0]["embedding"]) == 8
    assert raw["usage"]["prompt_tokens"] == 3  # estimated by the router: Gemini reports no counts


def test_upstream_errors(gemini_stack: Stack, gemini: FakeGemini) -> None:
    response = httpx.post(
        f"{gemini_stack.base_url}/chat/completions",
        headers=gemini_stack.headers(),
        json={"model": "gemini-test", "messages": HI, "n": 9},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert "candidate_count" in response.json()["error"]["message"]
    blocked = httpx.post(
        f"{gemini_stack.base_url}/chat/completions",
        headers=gemini_stack.headers(),
        json={"model": "gemini-test", "messages": [{"role": "user", "content": "unsafe-trigger"}]},
        timeout=30,
    )
    assert blocked.status_code == 200
    validate("CreateChatCompletionResponse", blocked.json())
    assert blocked.json()["choices"][0]["finish_reason"] == "content_filter"
