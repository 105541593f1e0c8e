"""The built-in demo provider: usage matches what streams, limits, stop, n, tools, embeddings, echo."""

from __future__ import annotations

import json
import math

import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.common import tokens
from services.common.errors import InvalidRequestError
from services.router.providers.base import Target
from services.router.providers.demo import DemoProvider

PROVIDER = cpb.Provider(id="demo", kind=cpb.PROVIDER_KIND_DEMO, available=True)


def target(model_id: str = "demo-chat", *, dims: int = 0, max_output: int = 2048) -> Target:
    model = cpb.Model(id=model_id, type=cpb.MODEL_TYPE_CHAT, max_output_tokens=max_output, dims=dims, provider="demo")
    deployment = cpb.Deployment(provider="demo", upstream_model=f"{model_id}-up")
    model.deployments.append(deployment)
    return Target(model=model, deployment=deployment, provider=PROVIDER)


def chat(text: str = "Tell me, what is 2+2?", **sampling: object) -> pb.ChatRequest:
    return pb.ChatRequest(
        model="demo-chat",
        messages=[pb.Message(role=pb.ROLE_SYSTEM, content="Be nice."), pb.Message(role=pb.ROLE_USER, content=text)],
        sampling=pb.Sampling(**sampling),  # type: ignore[arg-type]
    )


@pytest.fixture
def demo() -> DemoProvider:
    return DemoProvider(token_delay_seconds=0)


async def collect(demo: DemoProvider, request: pb.ChatRequest) -> list[pb.ChatChunk]:
    return [chunk async for chunk in demo.chat_stream(request, target())]


async def test_stream_usage_matches_streamed_pieces(demo: DemoProvider) -> None:
    chunks = await collect(demo, chat())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(pieces)
    assert 'You said: "Tell me, what is 2+2?"' in text
    assert chunks[0].choices[0].delta.role == pb.ROLE_ASSISTANT
    assert chunks[-2].choices[0].finish_reason == pb.FINISH_REASON_STOP
    last = chunks[-1]
    assert not last.choices and last.HasField("usage")
    assert last.usage.completion_tokens == len(pieces) == tokens.count_text(text)
    assert last.usage.prompt_tokens == tokens.count_messages(chat().messages)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.model == "demo-chat-up" for c in chunks)


async def test_non_stream_matches_stream(demo: DemoProvider) -> None:
    response = await demo.chat(chat(), target())
    chunks = await collect(demo, chat())
    streamed = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert response.choices[0].message.content == streamed
    assert response.usage.completion_tokens == tokens.count_text(streamed) == chunks[-1].usage.completion_tokens
    assert response.choices[0].finish_reason == pb.FINISH_REASON_STOP


async def test_max_tokens_truncates_with_length(demo: DemoProvider) -> None:
    response = await demo.chat(chat(max_tokens=5), target())
    assert response.choices[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert response.usage.completion_tokens == 5
    assert tokens.count_text(response.choices[0].message.content) == 5
    chunks = await collect(demo, chat(max_completion_tokens=4))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4
    assert chunks[-2].choices[0].finish_reason == pb.FINISH_REASON_LENGTH


async def test_model_max_output_is_the_default_limit(demo: DemoProvider) -> None:
    response = await demo.chat(chat(), target(max_output=3))
    assert response.usage.completion_tokens == 3
    assert response.choices[0].finish_reason == pb.FINISH_REASON_LENGTH


async def test_stop_sequence_truncates(demo: DemoProvider) -> None:
    response = await demo.chat(chat("hi", stop=["Interlock", "nothing-matches"]), target())
    content = response.choices[0].message.content
    assert content == 'Hello! You said: "hi". I am the '
    assert response.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.completion_tokens == tokens.count_text(content)


async def test_n_gives_n_choices(demo: DemoProvider) -> None:
    response = await demo.chat(chat(n=3), target())
    assert [c.index for c in response.choices] == [0, 1, 2]
    contents = {c.message.content for c in response.choices}
    assert len(contents) == 1
    assert response.usage.completion_tokens == 3 * tokens.count_text(contents.pop())
    chunks = await collect(demo, chat(n=3))
    assert [c.index for c in chunks[0].choices] == [0, 1, 2]


async def test_required_tool_choice_forces_a_call(demo: DemoProvider) -> None:
    request = chat("weather in Paris")
    request.tools.append(pb.Tool(type="function", function=pb.FunctionDefinition(name="get_weather")))
    request.tools.append(pb.Tool(type="function", function=pb.FunctionDefinition(name="get_time")))
    request.tool_choice_json = '"required"'
    response = await demo.chat(request, target())
    choice = response.choices[0]
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert not choice.message.HasField("content")
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_") and call.type == "function"
    assert json.loads(call.function.arguments) == {"input": "weather in Paris"}

    request.tool_choice_json = '{"type": "function", "function": {"name": "get_time"}}'
    chunks = await collect(demo, request)
    calls = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls]
    assert [tc.function.name for tc in calls] == ["get_time"]
    assert chunks[-2].choices[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_auto_tool_choice_answers_in_text(demo: DemoProvider) -> None:
    request = chat()
    request.tools.append(pb.Tool(type="function", function=pb.FunctionDefinition(name="get_weather")))
    request.tool_choice_json = '"auto"'
    response = await demo.chat(request, target())
    assert not response.choices[0].message.tool_calls
    assert response.choices[0].finish_reason == pb.FINISH_REASON_STOP


async def test_embeddings(demo: DemoProvider) -> None:
    embed_target = target("demo-embed", dims=256)
    request = pb.EmbedRequest(model="demo-embed", inputs=["alpha", "beta", "alpha"], dimensions=64)
    response = await demo.embed(request, embed_target)
    vectors = [list(e.values) for e in response.embeddings]
    assert [e.index for e in response.embeddings] == [0, 1, 2]
    assert all(len(v) == 64 for v in vectors)
    for v in vectors:
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    again = await demo.embed(request, embed_target)
    assert [list(e.values) for e in again.embeddings] == vectors
    assert response.usage.prompt_tokens == 3 and response.usage.total_tokens == 3
    native = await demo.embed(pb.EmbedRequest(model="demo-embed", inputs=["x"]), embed_target)
    assert len(native.embeddings[0].values) == 256


async def test_embeddings_above_native_dims_rejected(demo: DemoProvider) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await demo.embed(
            pb.EmbedRequest(model="demo-embed", inputs=["x"], dimensions=257), target("demo-embed", dims=256)
        )
    assert info.value.param == "dimensions" and info.value.http_status == 400


async def test_legacy_complete_with_echo(demo: DemoProvider) -> None:
    request = pb.CompleteRequest(model="demo-instruct", prompts=["Once upon a time"], echo=True)
    response = await demo.complete(request, target("demo-instruct"))
    [choice] = response.choices
    assert choice.text.startswith("Once upon a time and so the demo model")
    assert choice.finish_reason == pb.FINISH_REASON_LENGTH  # legacy default max_tokens is 16
    generated = choice.text[len("Once upon a time") :]
    assert tokens.count_text(generated) == 16 == response.usage.completion_tokens
    assert response.usage.prompt_tokens == tokens.count_text("Once upon a time")


async def test_legacy_complete_without_echo(demo: DemoProvider) -> None:
    request = pb.CompleteRequest(model="demo-instruct", prompts=["A", "B"], sampling=pb.Sampling(max_tokens=3))
    response = await demo.complete(request, target("demo-instruct"))
    assert [c.text for c in response.choices] == [" and so the"] * 2
    assert response.usage.completion_tokens == 6
