"""The Gemini adapter over real HTTP against a fake that speaks the generativelanguage v1beta wire format."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError, UpstreamError
from services.router import tokens
from services.router.providers.base import Target
from services.router.providers.gemini import (
    THOUGHT_SEPARATOR,
    GeminiProvider,
    build_contents,
    build_generate_request,
    clean_schema,
)
from tests.support.fake_gemini import TOOL_ARGS, FakeGemini
from tests.support.stack import free_port

KEY = "gemini-test-key"
KEY_ENV = "TEST_GEMINI_KEY"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
PARAMETERS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "q": {"type": "string", "maxLength": 5, "format": "email"},
        "opts": {
            "type": "object",
            "properties": {"deep": {"type": ["boolean", "null"]}},
            "additionalProperties": False,
        },
    },
    "required": ["q"],
    "additionalProperties": False,
    "strict": True,
}
CLEAN_PARAMETERS = {
    "type": "object",
    "properties": {
        "q": {"type": "string", "maxLength": 5},
        "opts": {"type": "object", "properties": {"deep": {"type": "boolean", "nullable": True}}},
    },
    "required": ["q"],
}
TOOLS = [
    pb.Tool(
        type="function",
        function=pb.FunctionDefinition(
            name="lookup", description="Look a word up.", parameters_json=json.dumps(PARAMETERS), strict=True
        ),
    ),
    pb.Tool(type="function", function=pb.FunctionDefinition(name="now", parameters_json='{"type":"object"}')),
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(required_api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeGemini) -> Iterator[None]:
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
async def provider() -> AsyncIterator[GeminiProvider]:
    async with httpx.AsyncClient() as client:
        yield GeminiProvider(client, {KEY_ENV: KEY})


def target(
    base_url: str, *, upstream: str = "gemini-up", headers: dict[str, str] | None = None, key_env: str = KEY_ENV
) -> Target:
    provider = cpb.Provider(
        id="gemini", kind=cpb.PROVIDER_KIND_GEMINI, base_url=base_url, api_key_env=key_env,
        headers=headers or {}, timeout_seconds=10, available=True,
    )  # fmt: skip
    model = cpb.Model(id="gemini-test", type=cpb.MODEL_TYPE_CHAT, provider="gemini")
    deployment = cpb.Deployment(provider="gemini", upstream_model=upstream)
    model.deployments.append(deployment)
    return Target(model=model, deployment=deployment, provider=provider)


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


def chat(*messages: pb.Message, **kwargs: Any) -> pb.ChatRequest:
    return pb.ChatRequest(model="gemini-test", messages=messages, **kwargs)


def sent(fake: FakeGemini) -> dict[str, Any]:
    body = fake.requests[-1]["json"]
    assert isinstance(body, dict)
    return body


async def collect(stream: AsyncIterator[pb.ChatChunk]) -> list[pb.ChatChunk]:
    return [chunk async for chunk in stream]


# ---------------------------------------------------------------- chat


async def test_text_with_system_instruction(provider: GeminiProvider, fake: FakeGemini) -> None:
    request = chat(
        pb.Message(role=pb.ROLE_SYSTEM, content="Be brief."),
        pb.Message(role=pb.ROLE_DEVELOPER, content="Answer in English."),
        user("hello big world"),
    )
    response = await provider.chat(request, target(fake.base_url, headers={"x-team": "core"}))
    assert response.choices[0].message.content == "Echo: hello big world"
    assert response.choices[0].message.role == pb.ROLE_ASSISTANT
    assert response.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert response.id.startswith("fake-resp-") and response.model == "gemini-up-001"
    call = fake.requests[-1]
    assert call["path"] == "/v1beta/models/gemini-up:generateContent"
    assert call["headers"]["x-goog-api-key"] == KEY and call["headers"]["x-team"] == "core"
    assert "authorization" not in call["headers"]
    assert call["json"] == {
        "contents": [{"role": "user", "parts": [{"text": "hello big world"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]},
    }


async def test_roles_and_merged_turns(provider: GeminiProvider, fake: FakeGemini) -> None:
    request = chat(
        user("first"),
        user("second"),
        pb.Message(role=pb.ROLE_ASSISTANT, content="an answer"),
        pb.Message(role=pb.ROLE_SYSTEM, content="late system"),
        pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(text="third "), pb.ContentPart(text="part")]),
    )
    response = await provider.chat(request, target(fake.base_url))
    assert response.choices[0].message.content == "Echo: third part"
    assert sent(fake)["contents"] == [
        {"role": "user", "parts": [{"text": "first"}, {"text": "second"}]},
        {"role": "model", "parts": [{"text": "an answer"}]},
        {"role": "user", "parts": [{"text": "third "}, {"text": "part"}]},
    ]
    assert sent(fake)["systemInstruction"] == {"parts": [{"text": "late system"}]}


async def test_generation_config_and_json_schema(provider: GeminiProvider, fake: FakeGemini) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": True, "schema": PARAMETERS},
    }
    sampling = pb.Sampling(
        temperature=0.5, top_p=0.9, max_completion_tokens=40, max_tokens=99, stop=["END"], n=2, seed=7,
        presence_penalty=0.25, frequency_penalty=-0.5, logprobs=True, user="someone",
    )  # fmt: skip
    request = chat(user("one two three four five"), sampling=sampling, response_format_json=json.dumps(response_format))
    response = await provider.chat(request, target(fake.base_url))
    assert sent(fake)["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.9,
        "maxOutputTokens": 40,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.25,
        "frequencyPenalty": -0.5,
        "responseMimeType": "application/json",
        "responseSchema": CLEAN_PARAMETERS,
    }
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content == "Echo: one two three four five" for c in response.choices)
    assert response.usage.completion_tokens == 2 * 6


async def test_json_object_and_length_finish(provider: GeminiProvider, fake: FakeGemini) -> None:
    request = chat(
        user("one two three four five"),
        sampling=pb.Sampling(max_tokens=3),
        response_format_json='{"type":"json_object"}',
    )
    response = await provider.chat(request, target(fake.base_url))
    assert sent(fake)["generationConfig"] == {"maxOutputTokens": 3, "responseMimeType": "application/json"}
    assert response.choices[0].message.content == "Echo: one two"
    assert response.choices[0].finish_reason == pb.FINISH_REASON_LENGTH


async def test_tool_call_round_trip(provider: GeminiProvider, fake: FakeGemini) -> None:
    question = user("what does gemini mean?")
    first = await provider.chat(chat(question, tools=TOOLS, tool_choice_json='"required"'), target(fake.base_url))
    body = sent(fake)
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "lookup", "description": "Look a word up.", "parameters": CLEAN_PARAMETERS},
                {"name": "now"},  # no properties: declared without parameters
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    choice = first.choices[0]
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert not choice.message.HasField("content")
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == TOOL_ARGS
    # The model's thought signature rides along in the id and goes back where it came from.
    assert call.id.startswith("call_") and THOUGHT_SEPARATOR in call.id
    signature = call.id.split(THOUGHT_SEPARATOR, 1)[1]
    assert base64.b64decode(signature).startswith(b"fake-signature:")

    follow = chat(
        question,
        first.choices[0].message,
        pb.Message(role=pb.ROLE_TOOL, tool_call_id=call.id, content='{"meaning": "twins"}'),
        tools=TOOLS,
        tool_choice_json='"auto"',
    )
    answer = await provider.chat(follow, target(fake.base_url))
    assert sent(fake)["contents"] == [
        {"role": "user", "parts": [{"text": "what does gemini mean?"}]},
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "lookup", "args": TOOL_ARGS}, "thoughtSignature": signature}],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "lookup", "response": {"content": {"meaning": "twins"}}}}],
        },
    ]
    assert sent(fake)["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    assert answer.choices[0].message.content == 'Tool said: {"content":{"meaning":"twins"}}'
    assert answer.choices[0].finish_reason == pb.FINISH_REASON_STOP


async def test_parallel_tool_results_and_plain_text_results(provider: GeminiProvider, fake: FakeGemini) -> None:
    calls = [
        pb.ToolCall(id="call_a", type="function", function=pb.FunctionCall(name="lookup", arguments='{"q":"a"}')),
        pb.ToolCall(id="call_b", type="function", function=pb.FunctionCall(name="now", arguments="")),
    ]
    request = chat(
        user("look both up"),
        pb.Message(role=pb.ROLE_ASSISTANT, content="Looking.", tool_calls=calls),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id="call_b", content="noon"),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id="call_a", content="[1, 2]"),
        tools=TOOLS,
        tool_choice_json='{"type": "function", "function": {"name": "now"}}',
    )
    response = await provider.chat(request, target(fake.base_url))
    body = sent(fake)
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Looking."},
                {"functionCall": {"name": "lookup", "args": {"q": "a"}}},
                {"functionCall": {"name": "now", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "now", "response": {"content": "noon"}}},
                {"functionResponse": {"name": "lookup", "response": {"content": "[1, 2]"}}},
            ],
        },
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}}
    assert response.choices[0].message.tool_calls[0].function.name == "now"


async def test_tool_choice_none_and_unknown_tool_call_id(provider: GeminiProvider, fake: FakeGemini) -> None:
    await provider.chat(chat(user("hi"), tools=TOOLS, tool_choice_json='"none"'), target(fake.base_url))
    assert sent(fake)["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    orphan = chat(user("hi"), pb.Message(role=pb.ROLE_TOOL, tool_call_id="call_nobody", content="x"))
    with pytest.raises(InvalidRequestError) as info:
        await provider.chat(orphan, target(fake.base_url))
    assert info.value.param == "messages[1].tool_call_id"


async def test_image_parts(provider: GeminiProvider, fake: FakeGemini) -> None:
    message = pb.Message(
        role=pb.ROLE_USER,
        parts=[
            pb.ContentPart(text="what is in these?"),
            pb.ContentPart(image_url=pb.ImageUrl(url=f"data:image/png;base64,{PNG}", detail="low")),
            pb.ContentPart(image_url=pb.ImageUrl(url="https://example.com/cat.webp?size=2")),
            pb.ContentPart(image_url=pb.ImageUrl(url="https://example.com/photo")),
        ],
    )
    response = await provider.chat(chat(message), target(fake.base_url))
    assert response.choices[0].message.content == "Echo: what is in these?"
    assert sent(fake)["contents"][0]["parts"] == [
        {"text": "what is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}},
    ]


async def test_usage_mapping(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.thoughts_tokens, fake.cached_tokens = 11, 2
    response = await provider.chat(
        chat(pb.Message(role=pb.ROLE_SYSTEM, content="be kind"), user("hello big world")), target(fake.base_url)
    )
    # promptTokenCount 5 (2 system + 3 user words), candidatesTokenCount 4 ("Echo: hello big world").
    assert response.usage == pb.Usage(
        prompt_tokens=5, completion_tokens=4 + 11, total_tokens=5 + 4 + 11, cached_tokens=2, reasoning_tokens=11
    )


async def test_safety_finish_is_content_filter(provider: GeminiProvider, fake: FakeGemini) -> None:
    response = await provider.chat(chat(user("please unsafe-trigger now")), target(fake.base_url))
    assert response.choices[0].finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert response.choices[0].message.content == ""
    blocked = await provider.chat(chat(user("blocked-prompt-trigger")), target(fake.base_url))
    assert len(blocked.choices) == 1
    assert blocked.choices[0].finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert blocked.choices[0].message.content == ""
    chunks = await collect(provider.chat_stream(chat(user("unsafe-trigger")), target(fake.base_url)))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [pb.FINISH_REASON_CONTENT_FILTER]
    chunks = await collect(provider.chat_stream(chat(user("blocked-prompt-trigger")), target(fake.base_url)))
    assert chunks[0].choices[0].delta.role == pb.ROLE_ASSISTANT
    assert chunks[1].choices[0].finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert not chunks[-1].choices and chunks[-1].HasField("usage")


# ---------------------------------------------------------------- streaming


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


# ---------------------------------------------------------------- errors


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


# ---------------------------------------------------------------- legacy completions


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


# ---------------------------------------------------------------- embeddings


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


# ---------------------------------------------------------------- translation details


def test_clean_schema() -> None:
    schema = {
        "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer", "format": "int32"}}}},
        "type": "object",
        "properties": {
            "item": {"$ref": "#/$defs/Item", "description": "one item"},
            "maybe": {"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}], "title": "Maybe"},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "fixed": {"const": "yes"},
            "count": {"type": "integer", "enum": [1, 2]},
            "when": {"type": "string", "format": "date-time", "examples": ["2020-01-01T00:00:00Z"]},
        },
    }
    assert clean_schema(schema) == {
        "type": "object",
        "properties": {
            "item": {
                "type": "object",
                "properties": {"n": {"type": "integer", "format": "int32"}},
                "description": "one item",
            },
            "maybe": {"type": "string", "title": "Maybe", "nullable": True},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "fixed": {"enum": ["yes"]},
            "count": {"type": "integer"},
            "when": {"type": "string", "format": "date-time"},
        },
    }
    with pytest.raises(InvalidRequestError):
        clean_schema({"$ref": "#/$defs/Missing"})


def test_request_building_without_http() -> None:
    audio = json.dumps({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}})
    pdf = json.dumps({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a"}})
    message = pb.Message(
        role=pb.ROLE_USER,
        parts=[
            pb.ContentPart(other_json=audio),
            pb.ContentPart(other_json=pdf),
            pb.ContentPart(image_url=pb.ImageUrl(url="data:image/svg+xml,%3Csvg%2F%3E")),
        ],
    )
    contents, system = build_contents([message])
    assert system == []
    assert contents[0]["parts"] == [
        {"inlineData": {"mimeType": "audio/mp3", "data": "AAAA"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "image/svg+xml", "data": base64.b64encode(b"<svg/>").decode()}},
    ]
    with pytest.raises(InvalidRequestError):
        build_contents([pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(other_json='{"type": "video"}')])])
    bad_args = pb.ToolCall(id="c", function=pb.FunctionCall(name="f", arguments="[1]"))
    with pytest.raises(InvalidRequestError) as info:
        build_contents([pb.Message(role=pb.ROLE_ASSISTANT, tool_calls=[bad_args])])
    assert info.value.param == "messages[0].tool_calls[0].function.arguments"
    # Nothing but an empty assistant turn: no turn at all rather than one without parts.
    assert build_generate_request(chat(user("hi"), pb.Message(role=pb.ROLE_ASSISTANT, content="")))["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}]}
    ]
