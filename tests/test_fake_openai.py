"""Tests for the fake OpenAI provider used as the gateway's upstream in tests and benchmarks."""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.fake_openai import BAD_API_KEY, DEFAULT_FAILURE, FakeOpenAI
from tests.support.openai_schema import validate

USER = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello big world"}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=5) as c:
        yield c


def sse(lines: Iterator[str]) -> Iterator[str]:
    """The payloads of `data:` lines."""
    for line in lines:
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_chat_non_stream_shape(client: httpx.Client) -> None:
    content = [{"type": "text", "text": "hello big"}, {"type": "image_url", "image_url": {"url": "x"}}]
    content.append({"type": "text", "text": " world"})
    r = client.post(
        "/chat/completions",
        json={"model": "gpt-x", "messages": [USER[0], {"role": "user", "content": content}], "n": 2},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    validate("CreateChatCompletionResponse", body)
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    assert (body["object"], body["model"], body["system_fingerprint"]) == ("chat.completion", "gpt-x", "fp_fake")
    message = {"role": "assistant", "content": "Echo: hello big world", "refusal": None}
    assert body["choices"] == [
        {"index": i, "message": message, "logprobs": None, "finish_reason": "stop"} for i in range(2)
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}

    r = client.post("/chat/completions", json={"model": "m", "messages": USER, "max_completion_tokens": 2})
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Echo: hello", "length")
    assert r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "second"}}])
def test_chat_tool_call(client: httpx.Client, tool_choice: Any) -> None:
    tools = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in ("first", "second")]
    body = {"model": "m", "messages": USER, "tools": tools, "tool_choice": tool_choice}
    data = client.post("/chat/completions", json=body).json()
    validate("CreateChatCompletionResponse", data)
    name = "first" if tool_choice == "required" else "second"
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    assert data["choices"][0]["message"]["content"] is None
    assert data["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": '{"x": 1}'}}
    ]


def test_chat_stream_is_incremental_and_ends_with_usage_and_done(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.token_delay = 0.03
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    arrivals: list[tuple[float, str]] = []
    with client.stream("POST", "/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        arrivals = [(time.monotonic(), data) for data in sse(r.iter_lines())]
    payloads = [data for _, data in arrivals]
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == chunks[0]["id"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1])
    assert text == "Echo: hello big world"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]] == ["Echo: ", "hello ", "big ", "world"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    # Eight events 30 ms apart: buffered output would arrive all at once.
    assert arrivals[-1][0] - arrivals[0][0] > 0.1


def test_legacy_completions(client: httpx.Client) -> None:
    body = client.post("/completions", json={"model": "m", "prompt": ["a b", "c"], "max_tokens": 2}).json()
    validate("CreateCompletionResponse", body)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "Echo: a", "length"),
        (1, "Echo: c", "stop"),
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}

    r = client.post("/completions", json={"model": "m", "prompt": "x y", "stream": True})
    payloads = list(sse(r.iter_lines()))
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Echo: x y"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_fail_next_returns_status_and_body_then_recovers(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.fail_next(429, times=2, retry_after="7")
    for _ in range(2):
        r = client.post("/chat/completions", json={"model": "m", "messages": USER})
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (429, DEFAULT_FAILURE, "7")
        validate("ErrorResponse", r.json())
    assert client.post("/chat/completions", json={"model": "m", "messages": USER}).status_code == 200

    custom = {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": "x"}}
    fake.fail_next(503, custom)
    r = client.get("/models")
    assert (r.status_code, r.json(), "retry-after" in r.headers) == (503, custom, False)
    assert client.get("/models").status_code == 200


def test_embeddings_base64_and_float_agree(client: httpx.Client) -> None:
    def embed(**extra: Any) -> dict[str, Any]:
        r = client.post("/embeddings", json={"model": "emb", "input": ["one two", "three"], **extra})
        assert r.status_code == 200
        data: dict[str, Any] = r.json()
        return data

    plain = embed(dimensions=16)
    validate("CreateEmbeddingResponse", plain)
    packed = embed(dimensions=16, encoding_format="base64")
    assert plain["usage"] == {"prompt_tokens": 3, "total_tokens": 3} and packed["model"] == "emb"
    for p, b in zip(plain["data"], packed["data"], strict=True):
        raw = base64.b64decode(b["embedding"])
        assert len(raw) == 16 * 4
        vector = list(struct.unpack("<16f", raw))
        assert vector == p["embedding"]
        assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert plain["data"][0]["embedding"] != plain["data"][1]["embedding"]
    assert embed(dimensions=16) == plain  # deterministic
    assert len(embed()["data"][0]["embedding"]) == 8  # default dimensions


def test_required_api_key(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.required_api_key = "sk-right"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        r = client.get("/models", headers=headers)
        assert (r.status_code, r.json()) == (401, BAD_API_KEY)
    r = client.get("/models", headers={"Authorization": "Bearer sk-right"})
    assert r.status_code == 200
    validate("ListModelsResponse", r.json())
    assert r.json()["data"][0]["id"] == "fake-model"


def test_die_mid_stream_drops_the_connection(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.die_mid_stream_after(2)
    body = {"model": "m", "messages": USER, "stream": True}
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200
        received.extend(sse(r.iter_lines()))
    assert len(received) == 2
    # One-shot: the next stream is whole again.
    assert list(sse(client.post("/chat/completions", json=body).iter_lines()))[-1] == "[DONE]"
    assert fake.cancelled == 0


def test_client_disconnect_counts_as_cancelled(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.token_delay = 0.05
    body = {"model": "m", "messages": USER, "stream": True}
    with client.stream("POST", "/chat/completions", json=body) as r:
        next(sse(r.iter_lines()))  # leave after the first chunk; closing drops the connection
    assert wait_for(lambda: fake.cancelled == 1)


def test_requests_are_recorded(fake: FakeOpenAI, client: httpx.Client) -> None:
    client.post("/chat/completions", json={"model": "m", "messages": USER}, headers={"X-Trace": "t1"})
    client.get("/models")
    r = client.post("/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    first, second, _ = fake.requests
    assert (first["method"], first["path"], first["json"]) == (
        "POST",
        "/v1/chat/completions",
        {"model": "m", "messages": USER},
    )
    assert first["headers"]["x-trace"] == "t1" and first["headers"]["content-type"] == "application/json"
    assert (second["method"], second["path"], second["json"]) == ("GET", "/v1/models", None)


def test_official_sdk_understands_the_fake(fake: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as sdk:
        done = sdk.chat.completions.create(model="m", messages=USER)
        assert done.choices[0].message.content == "Echo: hello big world"
        stream = sdk.chat.completions.create(model="m", messages=USER, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: hello big world"
        vectors = sdk.embeddings.create(model="e", input="hi", dimensions=4)  # SDK asks for base64
        assert len(vectors.data[0].embedding) == 4
    assert fake.requests[0]["headers"]["authorization"] == "Bearer sk-test"
