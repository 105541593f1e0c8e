"""The Gemini adapter translating chat requests and answers, over real HTTP against the fake v1beta API."""

from __future__ import annotations

import base64
import json

import pytest

from interlock.router.v1 import router_pb2 as pb
from services.common.errors import InvalidRequestError
from services.router.providers.gemini import (
    THOUGHT_SEPARATOR,
    GeminiProvider,
    build_contents,
    build_generate_request,
    clean_schema,
)
from tests.provider_gemini.helpers import (
    CLEAN_PARAMETERS,
    KEY,
    PARAMETERS,
    PNG,
    TOOLS,
    chat,
    collect,
    sent,
    target,
    user,
)
from tests.support.fake_gemini import TOOL_ARGS, FakeGemini


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
