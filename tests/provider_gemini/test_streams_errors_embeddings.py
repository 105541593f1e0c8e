"""The Gemini adapter streaming, failing, serving legacy completions and embeddings."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from interlock.router.v1 import router_pb2 as pb
from services.common import tokens
from services.common.errors import InvalidRequestError, UpstreamError
from services.router.providers.gemini import (
    GeminiProvider,
)
from tests.provider_gemini.helpers import (
    KEY,
    KEY_ENV,
    TOOLS,
    chat,
    collect,
    sent,
    target,
    user,
)
from tests.support.fake_gemini import TOOL_ARGS, FakeGemini
from tests.support.stack import free_port


async def test_stream_is_incremental_and_ends_with_usage(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.token_delay = 0.15
    started = time.monotonic()
    arrivals: list[tuple[float, pb.ChatChunk]] = []
    async for chunk in provider.chat_stream(chat(user("one two three four")), target(fake.base_url)):
        arrivals.append((time.monotonic() - started, chunk))
    chunks = [c for _, c in arrivals]
    call = fake.requests[-1]
    assert call["path"] == "/v1beta/models/gemini-up:streamGenerateContent" and call["query"] == {"alt": "sse"}
    assert call["headers"]["x-goog-api-key"] == KEY
    first = chunks[0].choices[0]
    assert first.delta.role == pb.ROLE_ASSISTANT and first.delta.HasField("content") and first.delta.content == ""
    deltas = [(t, c.choices[0].delta.content) for t, c in arrivals[1:] if c.choices and c.choices[0].delta.content]
    assert "".join(text for _, text in deltas) == "Echo: one two three four"
    assert len(deltas) == 5
    # Passed on as they arrive: the first words came long before the last.
    assert deltas[-1][0] - deltas[0][0] >= 3 * 0.15 * 0.8
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [pb.FINISH_REASON_STOP]
    last = chunks[-1]
    assert not last.choices and last.HasField("usage")
    assert last.usage == pb.Usage(prompt_tokens=4, completion_tokens=5, total_tokens=9)
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.model == "gemini-up-001" for c in chunks)


async def test_stream_tool_call(provider: GeminiProvider, fake: FakeGemini) -> None:
    chunks = await collect(
        provider.chat_stream(chat(user("call it"), tools=TOOLS, tool_choice_json='"required"'), target(fake.base_url))
    )
    calls = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls]
    assert len(calls) == 1
    (call,) = calls
    assert call.index == 0 and call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == TOOL_ARGS
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == [pb.FINISH_REASON_TOOL_CALLS]
    assert chunks[-1].HasField("usage") and chunks[-1].usage.completion_tokens == 3


async def test_stream_broken_mid_way(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.die_mid_stream_after(2)
    stream = provider.chat_stream(chat(user("one two three four")), target(fake.base_url))
    with pytest.raises(UpstreamError) as info:
        await collect(stream)
    assert info.value.code == "upstream_stream_error"


async def test_closing_the_stream_cancels_upstream(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.token_delay = 0.5
    stream = provider.chat_stream(chat(user("one two three four five six")), target(fake.base_url))
    assert (await anext(stream)).choices[0].delta.role == pb.ROLE_ASSISTANT
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(250):  # the fake notices when its next write fails
        if fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.cancelled == 1


async def test_bad_request_is_the_clients(provider: GeminiProvider, fake: FakeGemini) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await provider.chat(chat(user("hi"), sampling=pb.Sampling(n=9)), target(fake.base_url))
    assert "candidate_count" in info.value.message and info.value.http_status == 400
    fake.fail_next(404)
    with pytest.raises(InvalidRequestError):
        await provider.chat(chat(user("hi")), target(fake.base_url))


async def test_rate_limit_and_overload_are_retryable(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.fail_next(429, retry_after="3")
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat(user("hi")), target(fake.base_url))
    assert info.value.code == "upstream_rate_limited" and info.value.retry_after == 3.0
    assert info.value.http_status == 503 and "fake failure" in info.value.message
    fake.fail_next(429, retry_delay="7s")
    with pytest.raises(UpstreamError) as info:
        await collect(provider.chat_stream(chat(user("hi")), target(fake.base_url)))
    assert info.value.retry_after == 7.0
    fake.fail_next(503, retry_delay="1.5s")
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat(user("hi")), target(fake.base_url))
    assert info.value.http_status == 503 and info.value.retry_after == 1.5
    fake.fail_next(500)
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat(user("hi")), target(fake.base_url))
    assert info.value.http_status == 502 and info.value.code == "upstream_error"


async def test_credentials(fake: FakeGemini) -> None:
    async with httpx.AsyncClient() as client:
        wrong = GeminiProvider(client, {KEY_ENV: "not-the-key"})
        with pytest.raises(UpstreamError) as info:
            await wrong.chat(chat(user("hi")), target(fake.base_url))
        assert info.value.code == "provider_auth_failed" and info.value.http_status == 502
        no_env = GeminiProvider(client, {})
        with pytest.raises(UpstreamError) as info:
            await no_env.chat(chat(user("hi")), target(fake.base_url))
        assert info.value.code == "provider_unavailable" and info.value.http_status == 503
        assert len(fake.requests) == 1  # only the wrong key's request: none is sent without a key
        keyless = GeminiProvider(client, {})
        with pytest.raises(UpstreamError) as info:  # a provider without api_key_env sends none: 403
            await keyless.chat(chat(user("hi")), target(fake.base_url, key_env=""))
        assert info.value.code == "provider_auth_failed"


async def test_unreachable(provider: GeminiProvider) -> None:
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat(user("hi")), target(f"http://127.0.0.1:{free_port()}/v1beta"))
    assert info.value.code == "provider_unavailable" and info.value.http_status == 503


async def test_complete_and_complete_stream(provider: GeminiProvider, fake: FakeGemini) -> None:
    request = pb.CompleteRequest(model="gemini-test", prompts=["say this", "and that"], echo=True)
    response = await provider.complete(request, target(fake.base_url))
    assert [(c.index, c.text) for c in response.choices] == [
        (0, "say thisEcho: say this"),
        (1, "and thatEcho: and that"),
    ]
    assert response.usage.prompt_tokens == 4 and response.usage.completion_tokens == 6
    chunks = [c async for c in provider.complete_stream(request, target(fake.base_url))]
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "say thisEcho: say this", 1: "and thatEcho: and that"}
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 6
    assert sent(fake)["contents"] == [{"role": "user", "parts": [{"text": "and that"}]}]


async def test_embeddings_with_dimensions(provider: GeminiProvider, fake: FakeGemini) -> None:
    embed_target = target(fake.base_url, upstream="gemini-embed-up")
    request = pb.EmbedRequest(model="gemini-embed-test", inputs=["first text", "second, longer text"], dimensions=4)
    response = await provider.embed(request, embed_target)
    assert fake.requests[-1]["path"] == "/v1beta/models/gemini-embed-up:batchEmbedContents"
    assert sent(fake) == {
        "requests": [
            {"model": "models/gemini-embed-up", "content": {"parts": [{"text": t}]}, "outputDimensionality": 4}
            for t in request.inputs
        ]
    }
    assert [e.index for e in response.embeddings] == [0, 1]
    assert all(len(e.values) == 4 for e in response.embeddings)
    expected = sum(tokens.count_text(t) for t in request.inputs)  # estimated: Gemini reports no counts
    assert response.usage.prompt_tokens == expected == response.usage.total_tokens
    assert response.model == "gemini-embed-up"

    default = await provider.embed(pb.EmbedRequest(model="m", inputs=["x"]), embed_target)
    assert "outputDimensionality" not in sent(fake)["requests"][0] and len(default.embeddings[0].values) == 8


async def test_embeddings_in_batches_of_100(provider: GeminiProvider, fake: FakeGemini) -> None:
    inputs = [f"text number {i}" for i in range(150)]
    response = await provider.embed(pb.EmbedRequest(model="m", inputs=inputs), target(fake.base_url))
    assert [len(r["json"]["requests"]) for r in fake.requests] == [100, 50]
    assert [e.index for e in response.embeddings] == list(range(150))
    with pytest.raises(InvalidRequestError):
        await provider.embed(pb.EmbedRequest(model="m", token_inputs=[pb.TokenList(tokens=[1, 2])]), target(""))
