"""Constants and request builders shared by the Anthropic adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from interlock.catalog.v1 import catalog_pb2 as cpb
from interlock.router.v1 import router_pb2 as pb
from services.router.providers.base import Target
from tests.support.fake_anthropic import FakeAnthropic

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
