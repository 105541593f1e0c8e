"""The official openai SDK against the real stack (every service a process)."""

from __future__ import annotations

import base64
import struct
import time

import httpx
import openai
import orjson
import pytest

from tests.conftest import DEMO_TOKEN_DELAY_MS
from tests.support.openai_schema import validate
from tests.support.stack import Stack, stack_in_each_mode

pytestmark = pytest.mark.e2e
# Chat and streams are in the core subset that runs in both modes.
stack = stack_in_each_mode()


def test_models_list(client: openai.OpenAI, stack: Stack) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"demo-chat", "demo-embed", "demo-instruct", "router:fast"} <= set(ids)
    raw = httpx.get(f"{stack.base_url}/models", headers=stack.headers())
    validate("ListModelsResponse", raw.json())
    by_id = {m["id"]: m for m in raw.json()["data"]}
    assert by_id["demo-embed"]["dims"] == 256
    assert by_id["demo-chat"]["context_window"] == 8192
    assert by_id["demo-chat"]["pricing"] == {"input": 0.1, "output": 0.4, "unit": "usd_per_million_tokens"}
    assert by_id["router:fast"]["type"] == "profile"


def test_models_filters_and_get(client: openai.OpenAI, stack: Stack) -> None:
    embeddings = httpx.get(f"{stack.base_url}/models", params={"type": "embedding"}, headers=stack.headers()).json()
    assert {m["type"] for m in embeddings["data"]} == {"embedding"}
    fake = httpx.get(f"{stack.base_url}/models", params={"provider": "fake"}, headers=stack.headers()).json()
    assert {m["id"] for m in fake["data"]} == {"fake-chat", "fake-instruct", "fake-embed"}
    model = client.models.retrieve("router:fast")
    assert model.id == "router:fast"
    validate("Model", httpx.get(f"{stack.base_url}/models/demo-chat", headers=stack.headers()).json())


def test_chat_non_stream(client: openai.OpenAI, stack: Stack) -> None:
    reply = client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "hi"}], metadata={"trace": "t1"}
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert '"hi"' in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    extra = usage.model_extra or {}
    assert extra["cost_usd"] == pytest.approx((usage.prompt_tokens * 0.1 + usage.completion_tokens * 0.4) / 1e6)
    assert isinstance(extra["latency_ms"], int)
    routing = (reply.model_extra or {})["routing_decision"]
    assert routing["provider"] == "demo" and routing["reason"] == "direct"
    assert routing["attempts"][0]["outcome"] == "ok"

    raw = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=stack.headers(),
        json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "n": 2},
    )
    assert raw.status_code == 200
    validate("CreateChatCompletionResponse", raw.json())
    assert [c["index"] for c in raw.json()["choices"]] == [0, 1]
    assert raw.headers["x-request-id"].startswith("req_")
    for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert raw.headers[header].isdigit()


def test_chat_stream_is_incremental_with_usage(client: openai.OpenAI) -> None:
    started = time.monotonic()
    arrivals: list[float] = []
    text: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model="demo-chat",
        messages=[{"role": "user", "content": "tell me something"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
    assert usage is not None and usage.completion_tokens == len(text) > 10
    # The stream lasts about completion_tokens * delay; the first chunk must arrive long before the
    # provider produced its last token, so it cannot have been buffered.
    stream_span = (len(text) - 1) * DEMO_TOKEN_DELAY_MS / 1000
    assert arrivals[-1] - arrivals[0] >= 0.6 * stream_span
    assert arrivals[0] < arrivals[-1] - 0.5 * stream_span


def test_chat_stream_raw_chunks_validate(stack: Stack) -> None:
    body = {
        "model": "demo-chat",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 6,
    }
    events: list[bytes] = []
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", headers=stack.headers(), json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(line[6:].encode())
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_chat_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=3
    ))  # fmt: skip
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_legacy_completions(client: openai.OpenAI, stack: Stack) -> None:
    reply = client.completions.create(model="demo-instruct", prompt="Once upon a time", max_tokens=5)
    assert reply.object == "text_completion"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    raw = httpx.post(
        f"{stack.base_url}/completions",
        headers=stack.headers(),
        json={"model": "demo-instruct", "prompt": ["a", "b"], "max_tokens": 3},
    )
    validate("CreateCompletionResponse", raw.json())
    assert len(raw.json()["choices"]) == 2
    pieces = [
        c.choices[0].text
        for c in client.completions.create(model="demo-instruct", prompt="x", max_tokens=4, stream=True)
        if c.choices
    ]
    assert len(pieces) == 4


def test_embeddings(client: openai.OpenAI, stack: Stack) -> None:
    # The SDK asks for base64 by default and decodes it itself.
    result = client.embeddings.create(model="demo-embed", input=["alpine light", "glass frames"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 256 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert sum(v * v for v in result.data[0].embedding) == pytest.approx(1.0, rel=1e-4)
    small = client.embeddings.create(model="demo-embed", input="alpine light", dimensions=32, encoding_format="float")
    assert len(small.data[0].embedding) == 32

    raw = httpx.post(
        f"{stack.base_url}/embeddings",
        headers=stack.headers(),
        json={"model": "demo-embed", "input": ["a b c"], "encoding_format": "float", "dimensions": 16},
    ).json()
    validate("CreateEmbeddingResponse", raw)
    assert raw["usage"]["prompt_tokens"] == 3
    b64 = httpx.post(
        f"{stack.base_url}/embeddings",
        headers=stack.headers(),
        json={"model": "demo-embed", "input": "a b c", "encoding_format": "base64", "dimensions": 16},
    ).json()
    decoded = struct.unpack("<16f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(raw["data"][0]["embedding"], rel=1e-6)


def test_x_api_key_header_works(stack: Stack) -> None:
    for header in ("X-API-Key", "x-api-key"):
        reply = httpx.get(f"{stack.base_url}/models", headers={header: stack.api_key})
        assert reply.status_code == 200


def test_profile_resolves_to_a_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="router:fast", messages=[{"role": "user", "content": "hi"}])
    routing = (reply.model_extra or {})["routing_decision"]
    assert routing["model"] == "demo-chat" and routing["reason"] == "profile:fast"
