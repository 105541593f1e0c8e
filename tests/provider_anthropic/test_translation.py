"""The Anthropic adapter translating requests and answers, over real HTTP against the fake Messages API."""

from __future__ import annotations

import json

import pytest

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError
from services.router.providers.anthropic import AnthropicProvider, messages_request
from tests.provider_anthropic.helpers import KEY, PNG, TOOLS, chat, sent, target, user
from tests.support.fake_anthropic import FakeAnthropic


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
