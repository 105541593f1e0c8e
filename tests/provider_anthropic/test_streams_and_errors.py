"""The Anthropic adapter streaming, failing, and serving legacy completions; and the fake itself."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError, UpstreamError
from services.router.providers.anthropic import AnthropicProvider
from tests.provider_anthropic.helpers import KEY, KEY_ENV, TOOLS, chat, collect, sent, target, user
from tests.support.fake_anthropic import FakeAnthropic, error_body
from tests.support.stack import free_port


async def test_stream_is_incremental_and_ends_with_usage(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.token_delay = 0.1
    fake.cache_read_tokens, fake.cache_write_tokens = 7, 5
    started = time.monotonic()
    arrivals: list[tuple[float, pb.ChatChunk]] = []
    async for chunk in provider.chat_stream(chat(user("one two three four")), target(fake.base_url)):
        arrivals.append((time.monotonic() - started, chunk))
    chunks = [c for _, c in arrivals]
    assert sent(fake)["stream"] is True
    first = chunks[0]
    assert first.id.startswith("msg_") and first.model == "claude-up"
    assert first.choices[0].delta.role == pb.ROLE_ASSISTANT and first.choices[0].delta.content == ""
    texts = [(t, c.choices[0].delta.content) for t, c in arrivals[1:] if c.choices and c.choices[0].delta.content]
    assert "".join(text for _, text in texts) == "Echo: one two three four"
    assert len(texts) == 5
    # Each piece is passed on when it arrives, not when the stream ends.
    assert texts[0][0] < arrivals[-1][0] - 0.25
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == pb.FINISH_REASON_STOP
    last = chunks[-1]
    assert not last.choices and last.HasField("usage")
    assert all(not c.HasField("usage") for c in chunks[:-1])
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4 + 7 + 5, 5)
    assert (last.usage.cached_tokens, last.usage.cache_write_tokens, last.usage.total_tokens) == (7, 5, 21)
    assert all(c.id == first.id for c in chunks)


async def test_stream_tool_call_becomes_openai_tool_call_deltas(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    request = chat(user("define cat"), tools=TOOLS, tool_choice_json='"required"')
    chunks = await collect(provider.chat_stream(request, target(fake.base_url)))
    assert sent(fake)["tool_choice"] == {"type": "any"}
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    head = calls[0]
    assert (head.index, head.id, head.type, head.function.name, head.function.arguments) == (
        0, "toolu_fake1", "function", "lookup", "",
    )  # fmt: skip
    assert all(c.index == 0 and not c.id and not c.function.name for c in calls[1:])
    assert json.loads("".join(c.function.arguments for c in calls)) == {"x": 1}
    assert chunks[-2].choices[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert chunks[-1].usage.completion_tokens == 2 and not chunks[-1].choices


async def test_error_event_mid_stream_is_an_upstream_error(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.error_mid_stream_after(4, message="Overloaded right now")
    received: list[pb.ChatChunk] = []
    with pytest.raises(UpstreamError) as caught:
        async for chunk in provider.chat_stream(chat(user("one two three")), target(fake.base_url)):
            received.append(chunk)
    assert caught.value.code == "upstream_stream_error"
    assert "Overloaded right now" in caught.value.message
    assert [c.choices[0].delta.content for c in received] == ["", "Echo: "]


async def test_stream_cut_off_is_an_upstream_error(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.die_mid_stream_after(5)
    with pytest.raises(UpstreamError) as caught:
        await collect(provider.chat_stream(chat(user("one two three")), target(fake.base_url)))
    assert caught.value.code == "upstream_stream_error"


async def test_leaving_a_stream_early_cancels_the_upstream(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.token_delay = 0.2
    stream = provider.chat_stream(chat(user("one two three four five six")), target(fake.base_url))
    assert (await anext(stream)).choices[0].delta.role == pb.ROLE_ASSISTANT
    await stream.aclose()
    for _ in range(250):  # the fake notices at its next write, within a token delay
        if fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.cancelled == 1


async def test_400_is_an_invalid_request_with_anthropics_message(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.fail_next(400, error_body(400, "messages.0.content: bad things"))
    with pytest.raises(InvalidRequestError) as caught:
        await provider.chat(chat(user("hi")), target(fake.base_url))
    assert "messages.0.content: bad things" in caught.value.message
    assert caught.value.http_status == 400
    # The fake validates like the real server: a conversation must open with the user.
    opener = pb.Message(role=pb.ROLE_ASSISTANT, content="Hello!")
    with pytest.raises(InvalidRequestError) as caught:
        await provider.chat(chat(opener, user("hi")), target(fake.base_url))
    assert 'first message must use the "user" role' in caught.value.message


async def test_529_is_a_retryable_upstream_error_with_retry_after(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.fail_next(529, retry_after="7")
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(chat(user("hi")), target(fake.base_url))
    assert caught.value.retry_after == 7.0 and caught.value.http_status == 503
    assert caught.value.code == "upstream_overloaded"
    fake.fail_next(529, retry_after="3")
    with pytest.raises(UpstreamError) as caught:
        await collect(provider.chat_stream(chat(user("hi")), target(fake.base_url)))
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize(
    ("status", "code", "http_status"),
    [(429, "upstream_rate_limited", 503), (500, "upstream_error", 502), (401, "provider_auth_failed", 502)],
)
async def test_other_statuses(
    fake: FakeAnthropic, provider: AnthropicProvider, status: int, code: str, http_status: int
) -> None:
    fake.fail_next(status)
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(chat(user("hi")), target(fake.base_url))
    assert (caught.value.code, caught.value.http_status) == (code, http_status)


async def test_wrong_key_and_missing_key(fake: FakeAnthropic) -> None:
    async with httpx.AsyncClient() as client:
        wrong = AnthropicProvider(client, {KEY_ENV: "sk-ant-wrong"})
        with pytest.raises(UpstreamError) as caught:
            await wrong.chat(chat(user("hi")), target(fake.base_url))
        assert caught.value.code == "provider_auth_failed"
        missing = AnthropicProvider(client, {})
        with pytest.raises(UpstreamError) as caught:
            await missing.chat(chat(user("hi")), target(fake.base_url))
        assert (caught.value.code, caught.value.http_status) == ("provider_unavailable", 503)
        with pytest.raises(UpstreamError) as caught:
            await collect(missing.chat_stream(chat(user("hi")), target(fake.base_url)))
        assert caught.value.code == "provider_unavailable"


async def test_unreachable_provider(provider: AnthropicProvider) -> None:
    dead = target(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(chat(user("hi")), dead)
    assert (caught.value.code, caught.value.http_status) == ("provider_unavailable", 503)


async def test_complete_and_complete_stream(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    request = pb.CompleteRequest(model="claude-test", prompts=["say hi", "say bye"], sampling=pb.Sampling(max_tokens=9))
    response = await provider.complete(request, target(fake.base_url))
    assert [c.text for c in response.choices] == ["Echo: say hi", "Echo: say bye"]
    assert [c.index for c in response.choices] == [0, 1]
    assert response.usage.prompt_tokens == 4 and response.usage.completion_tokens == 6
    assert fake.requests[-1]["json"]["messages"] in (
        [{"role": "user", "content": "say hi"}],
        [{"role": "user", "content": "say bye"}],
    )
    one = pb.CompleteRequest(model="claude-test", prompts=["say hi"], echo=True)
    chunks = [c async for c in provider.complete_stream(one, target(fake.base_url))]
    assert "".join(c.text for chunk in chunks for c in chunk.choices) == "say hiEcho: say hi"
    assert chunks[-2].choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert chunks[-1].usage.completion_tokens == 3 and not chunks[-1].choices


async def test_embed_is_not_supported(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await provider.embed(pb.EmbedRequest(model="claude-test", inputs=["x"]), target(fake.base_url))
    assert (caught.value.code, caught.value.param) == ("model_not_supported", "model")
    assert fake.requests == []


def test_fake_refuses_what_anthropic_refuses(fake: FakeAnthropic) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    hi = {"role": "user", "content": "hi"}
    cases = [
        ({"model": "m", "messages": [hi]}, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": 5, "messages": [hi, hi]}, "roles must alternate"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]}, "first message"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
        ({"model": "m", "max_tokens": 5, "messages": [hi], "n": 2}, "Extra inputs are not permitted"),
    ]
    for body, message in cases:
        response = httpx.post(f"{fake.base_url}/messages", headers=headers, json=body)
        assert response.status_code == 400
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert message in error["error"]["message"]
    ok = httpx.post(
        f"{fake.base_url}/messages", headers=headers, json={"model": "m", "max_tokens": 5, "messages": [hi]}
    )
    assert ok.status_code == 200
    assert ok.json() == {
        "id": ok.json()["id"],
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "Echo: hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 2,
        },
    }
    assert ok.json()["id"].startswith("msg_")


def test_fake_streams_named_events(fake: FakeAnthropic) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{fake.base_url}/messages", headers=headers, json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    names = [line[7:] for line in lines if line.startswith("event: ")]
    assert names == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data] == names
    assert data[-2]["usage"] == {"output_tokens": 2} and data[-2]["delta"]["stop_reason"] == "end_turn"
