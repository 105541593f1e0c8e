"""The Anthropic adapter over real HTTP against a fake that speaks the Messages API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError, UpstreamError
from services.router.providers.anthropic import AnthropicProvider, messages_request
from services.router.providers.base import Target
from tests.support.fake_anthropic import FakeAnthropic, error_body
from tests.support.stack import free_port

KEY = "sk-ant-test-key"
KEY_ENV = "TEST_ANTHROPIC_KEY"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
TOOLS = [
    pb.Tool(
        type="function",
        function=pb.FunctionDefinition(
            name="lookup",
            description="Look a word up.",
            parameters_json='{"type":"object","properties":{"q":{"type":"string","maxLength":5}}}',
        ),
    )
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(required_api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeAnthropic) -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
async def provider() -> AsyncIterator[AnthropicProvider]:
    async with httpx.AsyncClient() as client:
        yield AnthropicProvider(client, {KEY_ENV: KEY})


def target(
    base_url: str, *, max_output: int = 64, headers: dict[str, str] | None = None, key_env: str = KEY_ENV
) -> Target:
    provider = cpb.Provider(
        id="anthropic", kind=cpb.PROVIDER_KIND_ANTHROPIC, base_url=base_url, api_key_env=key_env,
        headers=headers or {}, timeout_seconds=10, available=True,
    )  # fmt: skip
    model = cpb.Model(id="claude-test", type=cpb.MODEL_TYPE_CHAT, max_output_tokens=max_output, provider="anthropic")
    deployment = cpb.Deployment(provider="anthropic", upstream_model="claude-up")
    model.deployments.append(deployment)
    return Target(model=model, deployment=deployment, provider=provider)


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


def chat(*messages: pb.Message, **kwargs: object) -> pb.ChatRequest:
    return pb.ChatRequest(model="claude-test", messages=messages, **kwargs)  # type: ignore[arg-type]


def sent(fake: FakeAnthropic) -> dict[str, object]:
    body = fake.requests[-1]["json"]
    assert isinstance(body, dict)
    return body


async def collect(stream: AsyncIterator[pb.ChatChunk]) -> list[pb.ChatChunk]:
    return [chunk async for chunk in stream]


# ---------------------------------------------------------------- non-stream


async def test_text_chat(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    response = await provider.chat(chat(user("hello there world")), target(fake.base_url))
    choice = response.choices[0]
    assert choice.message.role == pb.ROLE_ASSISTANT and choice.message.content == "Echo: hello there world"
    assert choice.finish_reason == pb.FINISH_REASON_STOP and not choice.message.tool_calls
    assert response.id.startswith("msg_") and response.model == "claude-up" and response.created > 0
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (3, 4, 7)
    request = fake.requests[-1]
    assert request["method"] == "POST" and request["path"] == "/v1/messages"
    assert request["headers"]["x-api-key"] == KEY
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["headers"]["content-type"] == "application/json"
    assert "authorization" not in request["headers"]
    assert request["json"] == {
        "model": "claude-up",
        "max_tokens": 64,  # the catalog model's max_output_tokens: Anthropic requires one
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there world"}]}],
    }


async def test_system_and_developer_messages_become_system(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    request = chat(
        pb.Message(role=pb.ROLE_SYSTEM, content="Be brief."),
        pb.Message(role=pb.ROLE_DEVELOPER, parts=[pb.ContentPart(text="Use metric units.")]),
        user("hi"),
        sampling=pb.Sampling(
            temperature=1.6, top_p=0.9, max_tokens=50, max_completion_tokens=20, stop=["STOP"], user="u-42", seed=3
        ),
    )
    await provider.chat(request, target(fake.base_url))
    body = sent(fake)
    assert body["system"] == "Be brief.\n\nUse metric units."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["temperature"] == 1.0  # clamped to Anthropic's 0..1
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 20  # max_completion_tokens wins over max_tokens
    assert body["stop_sequences"] == ["STOP"]
    assert body["metadata"] == {"user_id": "u-42"}
    assert "seed" not in body and "stream" not in body


async def test_provider_headers_are_sent_and_may_set_the_version(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    headers = {"Anthropic-Version": "2023-01-01", "anthropic-beta": "prompt-caching-2024-07-31"}
    await provider.chat(chat(user("hi")), target(fake.base_url, headers=headers))
    sent_headers = fake.requests[-1]["headers"]
    assert sent_headers["anthropic-version"] == "2023-01-01"
    assert sent_headers["anthropic-beta"] == "prompt-caching-2024-07-31"


async def test_limits_and_stop_sequences_map_to_finish_reasons(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    cut = await provider.chat(
        chat(user("one two three four"), sampling=pb.Sampling(max_tokens=2)), target(fake.base_url)
    )
    assert cut.choices[0].message.content == "Echo: one"
    assert cut.choices[0].finish_reason == pb.FINISH_REASON_LENGTH
    stopped = await provider.chat(
        chat(user("one two three"), sampling=pb.Sampling(stop=["two"])), target(fake.base_url)
    )
    assert stopped.choices[0].message.content == "Echo: one "
    assert stopped.choices[0].finish_reason == pb.FINISH_REASON_STOP


async def test_usage_counts_cached_prompt_tokens(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.cache_read_tokens, fake.cache_write_tokens = 100, 20
    response = await provider.chat(chat(user("a b")), target(fake.base_url))
    usage = response.usage
    # input_tokens (2) exclude the cache; OpenAI's prompt_tokens include it.
    assert usage.prompt_tokens == 2 + 100 + 20
    assert usage.cached_tokens == 100 and usage.cache_write_tokens == 20
    assert usage.completion_tokens == 3 and usage.total_tokens == 125


async def test_tool_call_round_trip(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    ask = chat(user("define cat"), tools=TOOLS, tool_choice_json='"required"')
    first = await provider.chat(ask, target(fake.base_url))
    body = sent(fake)
    assert body["tools"] == [
        {
            "name": "lookup",
            "description": "Look a word up.",
            "input_schema": {"type": "object", "properties": {"q": {"type": "string", "maxLength": 5}}},
        }
    ]
    assert body["tool_choice"] == {"type": "any"}
    choice = first.choices[0]
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert not choice.message.HasField("content")
    (call,) = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("toolu_fake1", "function", "lookup")
    assert json.loads(call.function.arguments) == {"x": 1}

    follow = chat(
        user("define cat"),
        choice.message,
        pb.Message(role=pb.ROLE_TOOL, tool_call_id=call.id, content="a small feline"),
        tools=TOOLS,
        tool_choice_json='"auto"',
        parallel_tool_calls=False,
    )
    answer = await provider.chat(follow, target(fake.base_url))
    assert answer.choices[0].message.content == "Echo: a small feline"
    body = sent(fake)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "define cat"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_fake1", "name": "lookup", "input": {"x": 1}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_fake1", "content": "a small feline"}],
        },
    ]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_consecutive_tool_results_and_user_text_merge_into_one_turn(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    calls = [
        pb.ToolCall(id="toolu_a", type="function", function=pb.FunctionCall(name="lookup", arguments='{"q":"a"}')),
        pb.ToolCall(id="toolu_b", type="function", function=pb.FunctionCall(name="lookup", arguments="")),
    ]
    request = chat(
        user("look up a and b"),
        pb.Message(role=pb.ROLE_ASSISTANT, content="Looking both up.", tool_calls=calls),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id="toolu_a", content="A"),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id="toolu_b", parts=[pb.ContentPart(text="B")]),
        user("thanks"),
        tools=TOOLS,
    )
    answer = await provider.chat(request, target(fake.base_url))  # the fake checks the tool_use ids
    assert answer.choices[0].message.content == "Echo: thanks"
    messages = sent(fake)["messages"]
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "look up a and b"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking both up."},
                {"type": "tool_use", "id": "toolu_a", "name": "lookup", "input": {"q": "a"}},
                {"type": "tool_use", "id": "toolu_b", "name": "lookup", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "A"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "B"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert "tool_choice" not in sent(fake)  # Anthropic's default is auto


def test_tool_choice_mapping() -> None:
    t = target("http://unused/v1")

    def choice(raw: str | None, parallel: bool | None = None) -> object:
        request = chat(user("x"), tools=TOOLS)
        if raw is not None:
            request.tool_choice_json = raw
        if parallel is not None:
            request.parallel_tool_calls = parallel
        return messages_request(request, t, stream=False).get("tool_choice")

    assert choice('"auto"') == {"type": "auto"}
    assert choice('"required"') == {"type": "any"}
    assert choice('"required"', parallel=False) == {"type": "any", "disable_parallel_tool_use": True}
    assert choice('"none"') == {"type": "none"}
    assert choice('{"type":"function","function":{"name":"lookup"}}') == {"type": "tool", "name": "lookup"}
    assert choice(None) is None
    assert choice(None, parallel=True) is None
    # tool_choice without tools is not sent at all
    assert "tool_choice" not in messages_request(chat(user("x"), tool_choice_json='"none"'), t, stream=False)


async def test_forced_tool_by_name(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    other = pb.Tool(type="function", function=pb.FunctionDefinition(name="other"))
    request = chat(user("x"), tools=[*TOOLS, other], tool_choice_json='{"type":"function","function":{"name":"other"}}')
    response = await provider.chat(request, target(fake.base_url))
    assert response.choices[0].message.tool_calls[0].function.name == "other"
    # A tool without parameters still gets the input_schema Anthropic requires.
    assert sent(fake)["tools"][1] == {"name": "other", "input_schema": {"type": "object", "properties": {}}}  # type: ignore[index]


async def test_image_parts(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    message = pb.Message(
        role=pb.ROLE_USER,
        parts=[
            pb.ContentPart(text="What is in these?"),
            pb.ContentPart(image_url=pb.ImageUrl(url=f"data:image/png;base64,{PNG}", detail="low")),
            pb.ContentPart(image_url=pb.ImageUrl(url="https://example.com/cat.jpg")),
        ],
    )
    response = await provider.chat(chat(message), target(fake.base_url))
    assert response.choices[0].message.content == "Echo: What is in these?"
    assert sent(fake)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


async def test_untranslatable_requests_are_refused_before_calling(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    bad_image = pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(image_url=pb.ImageUrl(url="ftp://x/y.png"))])
    audio = pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(other_json='{"type":"input_audio"}')])
    bad_args = pb.Message(
        role=pb.ROLE_ASSISTANT,
        tool_calls=[pb.ToolCall(id="t", type="function", function=pb.FunctionCall(name="f", arguments="[1]"))],
    )
    cases = [
        (chat(bad_image), "messages[0].content[0].image_url.url"),
        (chat(audio), "messages[0].content[0]"),
        (chat(user("x"), bad_args), "messages[1].tool_calls[0].function.arguments"),
        (chat(user("x"), sampling=pb.Sampling(n=2)), "n"),
    ]
    for request, param in cases:
        with pytest.raises(InvalidRequestError) as caught:
            await provider.chat(request, target(fake.base_url))
        assert caught.value.param == param
    assert fake.requests == []


# ---------------------------------------------------------------- streams


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


# ---------------------------------------------------------------- errors


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


# ---------------------------------------------------------------- legacy completions, embeddings


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


# ---------------------------------------------------------------- the fake itself


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
